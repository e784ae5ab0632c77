"""The engine objects the UI shares between requests: one loaded family and evaluator per family.

Loading a family is the slow part (weights from disk), so it happens once per family per process;
a lock keeps two first requests from loading the same family twice.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from gptailor import Evaluator, Family, FamilyError, FamilySpec, Plan, Stitcher, TaskError, load_suite
from gptailor.common.paths import PathError, inside
from gptailor.builtin.smol import VARIANTS, smol_family_path

from db.settings import (data_dir, max_full_examples,
                         public_mode)


try:  # Hugging Face ZeroGPU: long GPU work must run inside @spaces.GPU; a no-op everywhere else
    import spaces  # type: ignore[import-not-found]

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - the usual case
    def gpu(fn=None, **_kw):
        return fn if fn is not None else (lambda f: f)


def redact(message: str) -> str:
    """In public mode, server folders in a message become '<data>' / '<app>' / '<tmp>' (visitors see it)."""
    if not public_mode():
        return message
    import tempfile

    roots = {str(data_dir().resolve()): "<data>", str(data_dir()): "<data>",
             str(Path(__file__).resolve().parents[1]): "<app>", tempfile.gettempdir(): "<tmp>",
             str(Path.home()): "<home>"}
    for root in sorted(roots, key=len, reverse=True):
        if len(root) > 1:
            message = message.replace(root, roots[root])
    return message


def _stored(paths) -> list[str]:
    """The paths that really lie inside the data folder (a link pointing out of it is not offered)."""
    out = []
    for p in sorted(paths):
        try:
            inside(data_dir(), p)
        except PathError:
            continue
        out.append(str(p))
    return out


def builtin_spec(name: str = "smol") -> Path | None:
    """A real built-in family's spec (``smol``, ``smol-all``) once ``python -m gptailor.builtin build-<name>``
    has written it here (``<data dir>/builtin/<name>``)."""
    return smol_family_path(data_dir() / "builtin" / name)


def smol_spec() -> Path | None:
    """The ``smol`` family's spec once built here."""
    return builtin_spec("smol")


def builtin_specs() -> dict[str, Path]:
    """Name -> spec of every real built-in family built in this data dir, in the order they are offered."""
    return {n: p for n in VARIANTS if (p := builtin_spec(n)) is not None}


def family_values() -> list[str]:
    """The built-in demo, the real built-in families once built, and every spec under ``<data dir>/families``
    (paths: what the picker's value is)."""
    folder = data_dir() / "families"
    specs = _stored(folder.glob("*.y*ml")) + _stored(folder.glob("*.json")) if folder.exists() else []
    builtin = [v for spec in builtin_specs().values() for v in _stored([spec])]
    return ["demo", *builtin, *specs]


def family_choices() -> list[tuple[str, str]]:
    """(label, value) pairs for the picker: a stored spec shows its name, not the server's path."""
    builtin = {str(spec): name for name, spec in builtin_specs().items()}

    def label(v: str) -> str:
        if v == "demo" or v in builtin:
            return f"{builtin.get(v, 'demo')} (built in)"
        return f"{Path(v).stem} (uploaded)"
    return [(label(v), v) for v in family_values()]


DEFAULT_SUITE = "family default"


def suites_dir() -> Path:
    """Uploaded task suites live here, one folder each (``<name>/suite.yaml`` + JSONL files)."""
    return data_dir() / "suites"


def suite_choices() -> list[tuple[str, str]]:
    """(label, value) pairs: the family's own suite, then every uploaded one."""
    uploaded = _stored(suites_dir().glob("*/suite.yaml")) if suites_dir().exists() else []
    return [("the family's own suite", DEFAULT_SUITE), *((f"{Path(p).parent.name} (uploaded)", p) for p in uploaded)]


def check_fidelity(ev: Evaluator, n: int | None, split: str | None = None, what: str = "this evaluation") -> None:
    """Refuse "all examples" on a suite too large to score interactively; the message says what to type."""
    cap = max_full_examples()
    if n is not None or not cap:
        return
    largest = max(t.split_size(split or ev.split) for t in ev.suite)
    if largest > cap:
        raise TaskError(f"the suite has up to {largest} examples per task; scoring them all would keep this page "
                        f"busy for long, so {what} needs a number of examples per task (at most {cap} here), "
                        f"e.g. 200")


@dataclass
class Session:
    """One loaded family with the evaluator of one task suite (None when the family names no suite)."""
    family: Family
    evaluator: Evaluator | None
    stitcher: Stitcher

    def scorer(self) -> Evaluator:
        """The evaluator, or a TaskError saying how to give the family a suite (every tab that scores)."""
        if self.evaluator is None:
            raise TaskError(f"family {self.family.name!r} names no task suite: upload task files above, "
                            f"or add 'suite: path/to/suite.yaml' to its spec")
        return self.evaluator

    def identity_text(self) -> str:
        return Plan.identity(self.family.n_layers, family=self.family.name).to_text()


class Engine:
    """Families are loaded once per process; each (family, suite) pair gets one evaluator sharing the stitcher."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[Family, Stitcher]] = {}
        self._evaluators: dict[tuple[str, str], Evaluator] = {}
        self._lock = threading.Lock()

    def get(self, family: str, suite: str | None = None) -> Session:
        if public_mode() and family not in family_values():
            raise FamilyError(f"{family!r} is not one of this app's families "
                              f"({', '.join(label for label, _ in family_choices())}); "
                              f"public mode does not load arbitrary paths or hub ids")
        if suite in (None, "", DEFAULT_SUITE):
            suite = None
        elif public_mode() and suite not in [v for _, v in suite_choices()]:
            raise TaskError(f"{suite!r} is not one of this app's task suites; upload task files instead")
        with self._lock:
            if family not in self._families:
                fam = Family.from_spec(FamilySpec.load(family))
                self._families[family] = (fam, Stitcher(fam))
            fam, stitcher = self._families[family]
            path = suite or fam.spec.suite_path()
            if path is None:
                return Session(fam, None, stitcher)
            key = (family, str(Path(path).expanduser().resolve()))
            if key not in self._evaluators:
                self._evaluators[key] = Evaluator(fam, load_suite(key[1]), stitcher=stitcher)
            return Session(fam, self._evaluators[key], stitcher)


    def forget(self, family: str) -> None:
        """Drop a family (and its evaluators) whose spec was removed."""
        with self._lock:
            self._families.pop(family, None)
            for key in [k for k in self._evaluators if k[0] == family]:
                del self._evaluators[key]

    def forget_suite(self, suite: str) -> None:
        """Drop the evaluators of a removed suite."""
        path = str(Path(suite).expanduser().resolve())
        with self._lock:
            for key in [k for k in self._evaluators if k[1] == path]:
                del self._evaluators[key]


ENGINE = Engine()


def warm_references(ev: Evaluator, split: str | None = None) -> None:
    """Give the evaluator its references from the studies' precompute cache (computed there and stored
    if missing), so the first evaluation after a restart does not score every member again."""
    from db.runs import precompute

    precompute(store()).references(ev, split or ev.split)


_STORE = None


def store():
    """The app's study database (``GPTAILOR_DB_URL`` or ``<data dir>/gptailor.db``), opened once."""
    global _STORE
    if _STORE is None:
        from db.store import Store

        os.environ.setdefault("GPTAILOR_DATA_DIR", str(data_dir()))
        _STORE = Store()
    return _STORE
