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
from gptailor.builtin.smol import BUILD_HINT, smol_family_path


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


class ConfigError(ValueError):
    """A malformed setting in the environment; the app refuses to start with this one line."""


def _env_number(name: str, public: float, private: float, integer: bool = True) -> float:
    """``name`` from the environment (default: ``public`` in public mode, else ``private``), >= 0."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return public if public_mode() else private
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = -1
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{name} must be a {'whole ' if integer else ''}number >= 0, got {raw!r}")
    return value


def max_trials() -> int:
    """Trials one study may ask for (GPTAILOR_MAX_TRIALS)."""
    return int(_env_number("GPTAILOR_MAX_TRIALS", 200, 100000))


def max_workers() -> int:
    """Study workers running at once in all (GPTAILOR_MAX_WORKERS, 0 = no cap); more wait in a queue.

    One rule for the app and the CLI's ``--background`` (``db.runs.worker_cap``)."""
    from db.liveness import SettingError
    from db.runs import worker_cap

    try:
        return worker_cap()
    except SettingError as e:
        raise ConfigError(str(e)) from None


def session_cap(what: str) -> int:
    """How many studies / exports / uploads one browser session may make (0 = no cap):
    GPTAILOR_SESSION_MAX_STUDIES (public default 5), _EXPORTS (3), _UPLOADS (5)."""
    public = {"studies": 5, "exports": 3, "uploads": 5}[what]
    return int(_env_number(f"GPTAILOR_SESSION_MAX_{what.upper()}", public, 0))


def max_export_zips() -> int:
    """Export zips kept under <data dir>/exports (GPTAILOR_MAX_EXPORTS); older ones are deleted."""
    return int(_env_number("GPTAILOR_MAX_EXPORTS", 3, 20))


def max_export_bytes() -> int:
    """Bytes all kept export zips may hold together (GPTAILOR_MAX_EXPORT_MB, 0 = no cap)."""
    return int(_env_number("GPTAILOR_MAX_EXPORT_MB", 2000, 0, integer=False) * 1e6)


def allow_remote_code() -> bool:
    """GPTAILOR_ALLOW_REMOTE_CODE=1: uploaded family specs may say trust_remote_code (runs their code)."""
    return os.environ.get("GPTAILOR_ALLOW_REMOTE_CODE", "").lower() in ("1", "true", "yes")


def auth_pairs() -> list[tuple[str, str]] | None:
    """GPTAILOR_AUTH as Gradio's auth list: ``user:password``, several separated by commas; None if unset."""
    raw = os.environ.get("GPTAILOR_AUTH", "").strip()
    if not raw:
        return None
    pairs = []
    for item in raw.split(","):
        user, colon, password = item.strip().partition(":")
        if not colon or not user.strip() or not password:
            raise ConfigError("GPTAILOR_AUTH must be user:password (several separated by commas), with a "
                              "user name and a password in each; login is not turned off silently")
        pairs.append((user.strip(), password))
    return pairs


def check_settings() -> None:
    """Read every setting once, so a malformed one stops the app at start (ConfigError), not later."""
    max_trials(), max_workers(), max_upload_bytes(), max_export_zips(), max_export_bytes(), auth_pairs()
    max_task_examples(), max_full_examples()
    for what in ("studies", "exports", "uploads"):
        session_cap(what)


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


def smol_spec() -> Path | None:
    """The real built-in family's spec once ``python -m gptailor.builtin build-smol`` has written it here."""
    return smol_family_path(data_dir() / "builtin" / "smol")


def family_values() -> list[str]:
    """The built-in demo, the built-in smol family once built, and every spec under ``<data dir>/families``
    (paths: what the picker's value is)."""
    folder = data_dir() / "families"
    specs = _stored(folder.glob("*.y*ml")) + _stored(folder.glob("*.json")) if folder.exists() else []
    smol = smol_spec()
    return ["demo", *([] if smol is None else _stored([smol])), *specs]


def family_choices() -> list[tuple[str, str]]:
    """(label, value) pairs for the picker: a stored spec shows its name, not the server's path."""
    smol = smol_spec()
    smol = str(smol) if smol is not None else None

    def label(v: str) -> str:
        return "demo (built in)" if v == "demo" else "smol (built in)" if v == smol else f"{Path(v).stem} (uploaded)"
    return [(label(v), v) for v in family_values()]


DEFAULT_SUITE = "family default"


def suites_dir() -> Path:
    """Uploaded task suites live here, one folder each (``<name>/suite.yaml`` + JSONL files)."""
    return data_dir() / "suites"


def suite_choices() -> list[tuple[str, str]]:
    """(label, value) pairs: the family's own suite, then every uploaded one."""
    uploaded = _stored(suites_dir().glob("*/suite.yaml")) if suites_dir().exists() else []
    return [("the family's own suite", DEFAULT_SUITE), *((f"{Path(p).parent.name} (uploaded)", p) for p in uploaded)]


def max_upload_bytes() -> int:
    """Bytes one upload may hold (GPTAILOR_MAX_UPLOAD_MB, 5 public, 50 otherwise): Gradio refuses bigger
    files before storing them. Larger suites are for the command line's own files, not a web upload."""
    return int(_env_number("GPTAILOR_MAX_UPLOAD_MB", 5, 50, integer=False) * 1e6)


def max_task_examples() -> int:
    """Examples one uploaded task may hold (GPTAILOR_MAX_TASK_EXAMPLES, 2000 public, 20000 otherwise, 0 = no
    cap): what is still scored interactively in reasonable time."""
    return int(_env_number("GPTAILOR_MAX_TASK_EXAMPLES", 2000, 20000))


def max_full_examples() -> int:
    """The most examples per task an evaluation may score with "all" (GPTAILOR_MAX_FULL_EXAMPLES, default
    1000, 0 = no cap); above it the page asks for a number (a fidelity) instead."""
    return int(_env_number("GPTAILOR_MAX_FULL_EXAMPLES", 1000, 1000))


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
