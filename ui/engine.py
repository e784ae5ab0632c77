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


try:  # Hugging Face ZeroGPU: long GPU work must run inside @spaces.GPU; a no-op everywhere else
    import spaces  # type: ignore[import-not-found]

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - the usual case
    def gpu(fn=None, **_kw):
        return fn if fn is not None else (lambda f: f)


def data_dir() -> Path:
    """Where the app keeps its files (database, exports, family specs): ``GPTAILOR_DATA_DIR``."""
    d = Path(os.environ.get("GPTAILOR_DATA_DIR", "data")).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    return d


def public_mode() -> bool:
    """GPTAILOR_PUBLIC=1: a public Space. Only listed families, no local paths or hub ids, capped trials."""
    return os.environ.get("GPTAILOR_PUBLIC", "").lower() in ("1", "true", "yes")


def max_trials() -> int:
    return int(os.environ.get("GPTAILOR_MAX_TRIALS", "200" if public_mode() else "100000"))


def family_choices() -> list[str]:
    """The built-in demo plus every spec under ``<data dir>/families``."""
    folder = data_dir() / "families"
    specs = sorted(str(p) for p in folder.glob("*.y*ml")) + sorted(str(p) for p in folder.glob("*.json")) \
        if folder.exists() else []
    return ["demo", *specs]


DEFAULT_SUITE = "family default"


def suites_dir() -> Path:
    """Uploaded task suites live here, one folder each (``<name>/suite.yaml`` + JSONL files)."""
    return data_dir() / "suites"


def suite_choices() -> list[tuple[str, str]]:
    """(label, value) pairs: the family's own suite, then every uploaded one."""
    uploaded = sorted(suites_dir().glob("*/suite.yaml")) if suites_dir().exists() else []
    return [("the family's own suite", DEFAULT_SUITE), *((f"{p.parent.name} (uploaded)", str(p)) for p in uploaded)]


def max_upload_bytes() -> int:
    return int(float(os.environ.get("GPTAILOR_MAX_UPLOAD_MB", "5" if public_mode() else "500")) * 1e6)


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
        if public_mode() and family not in family_choices():
            raise FamilyError(f"{family!r} is not one of this app's families ({', '.join(family_choices())}); "
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


ENGINE = Engine()


_STORE = None


def store():
    """The app's study database (``GPTAILOR_DB_URL`` or ``<data dir>/gptailor.db``), opened once."""
    global _STORE
    if _STORE is None:
        from db.store import Store

        os.environ.setdefault("GPTAILOR_DATA_DIR", str(data_dir()))
        _STORE = Store()
    return _STORE
