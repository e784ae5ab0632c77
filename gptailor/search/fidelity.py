"""Fidelities (examples per task a trial is scored on): the one home of Hyperband's rung rule, shared by
SMAC and random search (whose Hyperband computes it inside SMAC) and the evolution (which screens offspring
on the same rungs), and of the mapping from SMAC's float budgets to examples per task.

``hyperband_budgets`` is SMAC's own computation (``SuccessiveHalving._get_max_iterations`` and
``_compute_configs_and_budgets_for_stages`` for the first, widest bracket), written out with numpy as SMAC
does, so the floating-point edge cases agree too: ``log(1000) / log(10)`` is just under 3, and SMAC's rungs
for 1..1000 at eta 10 are 10, 100, 1000 (no rung at 1). ``tests/test_evolution.py`` checks it against
SMAC's intensifier.
"""
from __future__ import annotations

import numpy as np

from gptailor.search.settings import SearchSettings


def hyperband_budgets(min_fidelity: int, max_fidelity: int, eta: int) -> list[float]:
    """SMAC's successive-halving budgets from ``min`` to ``max``, lowest first: ``max * eta**-k`` for
    ``k = s_max .. 0``, ``s_max = floor(log(max / min) / log(eta))``; only ``max`` when there is no range."""
    if min_fidelity >= max_fidelity or eta < 2:
        return [float(max_fidelity)]
    s_max = int(np.floor(np.log(max_fidelity / min_fidelity) / np.log(eta)))
    return (max_fidelity * np.power(eta, -np.linspace(s_max, 0, s_max + 1))).tolist()


def fidelity_of(budget: float | None, max_fidelity: int) -> int:
    """Examples per task for SMAC's (float) budget: the one mapping, used by the objective and on resume."""
    return max_fidelity if budget is None else max(1, int(round(budget)))


def rungs(min_fidelity: int, max_fidelity: int, eta: int) -> list[int]:
    """The examples per task of Hyperband's rungs, lowest first: its budgets as trials run them."""
    return [fidelity_of(b, max_fidelity) for b in hyperband_budgets(min_fidelity, max_fidelity, eta)]


def fidelity_range(min_fidelity: int, max_fidelity: int, eta: int) -> tuple[int, str]:
    """The lowest rung Hyperband will really use, and a note when it differs from the one asked for.

    Hyperband's rungs are ``max, max/eta, max/eta^2, ...`` down to ``min`` (``rungs``): with ``min`` above
    ``max/eta`` there is a single rung and every trial runs at the top (measured on a real family: the
    search split was only twice the minimum fidelity and Hyperband never varied it). So a minimum above
    ``max/eta`` (but below ``max``: equal means one fidelity on purpose) is lowered to ``max // eta``,
    which gives two rungs; a split too small for a low rung of at least 2 examples per task runs every
    trial at the top fidelity, and says so."""
    if min_fidelity >= max_fidelity or len(rungs(min_fidelity, max_fidelity, eta)) > 1:  # one fidelity by choice, or rungs
        return min(min_fidelity, max_fidelity), ""
    lower = max_fidelity // eta
    if lower >= 2:
        return lower, (f"min fidelity {min_fidelity} is more than 1/{eta} of the {max_fidelity} examples per "
                       f"task at the top, so Hyperband would have a single rung: using {lower}..{max_fidelity}")
    return max_fidelity, (f"{max_fidelity} examples per task at the top is too few for Hyperband's lower rungs "
                          f"(at least {2 * eta} needed with eta {eta}): every trial runs at {max_fidelity}")


def search_fidelities(settings: SearchSettings, split_size: int) -> tuple[int, int, str]:
    """(lowest, top, note): the examples per task a search's trials run at on a search split of
    ``split_size`` examples per task; the Search tab shows the note before a study starts."""
    top = min(settings.max_fidelity or split_size, split_size)
    low = min(settings.min_fidelity, top)
    if settings.facade != "multi_fidelity":
        return low, top, ""
    low, note = fidelity_range(low, top, settings.eta)
    return low, top, note
