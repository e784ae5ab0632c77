"""Ranges of the numeric settings a person types (trials, seed, fidelities, batch size, ...), and the one
parser of numeric environment variables.

One place for each rule: the CLI's argparse ``type=`` functions and ``SearchSettings.check`` (which the
app goes through) both call these, so a bad value gets the same message wherever it is typed.
Integers must be whole numbers: 2.5 trials is refused, never silently truncated.
"""
from __future__ import annotations

import argparse
import math
import numbers
import os
from typing import Any, Callable

MAX_TRIALS = 100_000
MAX_SEED = 2**32 - 1  # PYTHONHASHSEED's range: SMAC repeats a seed only with it fixed
MAX_FIDELITY = 10**9
MAX_WORKERS = 256
MAX_BATCH_SIZE = 1 << 16
MAX_WALLTIME_S = 365 * 86400.0

# name -> (lowest, highest) for whole-number settings
INT_RANGES: dict[str, tuple[int, int]] = {
    "trials": (1, MAX_TRIALS), "seed": (0, MAX_SEED), "fidelity": (1, MAX_FIDELITY),
    "min fidelity": (1, MAX_FIDELITY), "max fidelity": (1, MAX_FIDELITY), "workers": (1, MAX_WORKERS),
    "batch size": (1, MAX_BATCH_SIZE), "max new tokens": (1, 4096), "eta": (2, 100),
    "initial configurations": (0, MAX_TRIALS), "layers to remove": (0, 1_000_000), "study id": (1, 2**63 - 1),
    "limit": (1, MAX_FIDELITY),
}


class SettingsError(ValueError):
    """A setting outside its range; the message names the setting, the range and the value given."""


def whole(name: str, value: object) -> int:
    """``value`` as an int if it is a whole number in ``INT_RANGES[name]``; SettingsError otherwise."""
    lo, hi = INT_RANGES[name]
    n: int | None = None
    if isinstance(value, bool):
        n = None
    elif isinstance(value, numbers.Integral):
        n = int(value)
    elif isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer():
        n = int(value)
    elif isinstance(value, str):
        try:
            n = int(value.strip())
        except ValueError:
            n = None
    if n is None or not lo <= n <= hi:
        raise SettingsError(f"{name} must be a whole number from {lo} to {hi:,}, got {_show(value)}")
    return n


def seconds(name: str, value: object, hi: float = MAX_WALLTIME_S) -> float:
    """A positive, finite number of seconds (at most ``hi``); SettingsError otherwise."""
    try:
        x = float(value) if not isinstance(value, bool) else math.nan  # type: ignore[arg-type]
    except (TypeError, ValueError):
        x = math.nan
    if not (math.isfinite(x) and 0 < x <= hi):
        raise SettingsError(f"{name} must be a number of seconds above 0 and at most {hi:,.0f}, got {_show(value)}")
    return x


def _show(value: object) -> str:
    s = repr(value)
    return s if len(s) <= 40 else s[:37] + "..."


def _argparse_type(check: Callable[[str, object], Any], name: str) -> Callable[[str], Any]:
    """An argparse ``type=`` running ``check`` on the setting ``name`` (argparse turns the error into exit 2)."""
    def parse(text: str) -> Any:
        try:
            return check(name, text)
        except SettingsError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = name.replace(" ", "_")
    return parse


def arg(name: str) -> Callable[[str], int]:
    """An argparse ``type=`` for the whole-number setting ``name``."""
    return _argparse_type(whole, name)


def arg_seconds(name: str) -> Callable[[str], float]:
    """An argparse ``type=`` for a positive number of seconds."""
    return _argparse_type(seconds, name)


def env_number(name: str, default: float, *, integer: bool = False, above_zero: bool = False,
               unit: str = "") -> float:
    """The environment variable ``name`` as a number, ``default`` when it is unset or empty.

    The one parser of every numeric ``GPTAILOR_*`` variable (the app's settings and the engine's cache
    size alike), so a bad value is refused with the same SettingsError wording wherever it is read:
    nothing is silently clamped, rounded or ignored."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value: float = int(raw) if integer else float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (value > 0 if above_zero else value >= 0)):
        what = ("a whole number" if integer else "a number") + (f" of {unit}" if unit else "")
        raise SettingsError(f"{name} must be {what} {'above 0' if above_zero else '>= 0'}, got {raw!r}; "
                            f"unset it for the default")
    return value


def env_flag(name: str) -> bool:
    """A yes/no environment variable: 1, true or yes (any case) is yes; anything else, or unset, is no."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")
