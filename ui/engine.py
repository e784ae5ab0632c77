"""The engine objects the UI shares between requests: one loaded family and evaluator per family.

Loading a family is the slow part (weights from disk), so it happens once per family per process;
a lock keeps two first requests from loading the same family twice.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from gptailor import Evaluator, Family, FamilySpec, Plan, Stitcher, load_suite


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


@dataclass
class Session:
    family: Family
    evaluator: Evaluator | None

    @property
    def stitcher(self) -> Stitcher:
        return self.evaluator.stitcher if self.evaluator else Stitcher(self.family)

    def identity_text(self) -> str:
        return Plan.identity(self.family.n_layers, family=self.family.name).to_text()


class Engine:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, family: str) -> Session:
        from gptailor import FamilyError

        if public_mode() and family not in family_choices():
            raise FamilyError(f"{family!r} is not one of this app's families ({', '.join(family_choices())}); "
                              f"public mode does not load arbitrary paths or hub ids")
        with self._lock:
            if family not in self._sessions:
                fam = Family.from_spec(FamilySpec.load(family))
                suite_path = fam.spec.suite_path()
                ev = Evaluator(fam, load_suite(suite_path)) if suite_path else None
                self._sessions[family] = Session(fam, ev)
            return self._sessions[family]


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
