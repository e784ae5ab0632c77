"""Database faults reach the user as one StoreError line naming the database and what to do."""
import os
import sqlite3
import subprocess
import time
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import scored_trial
from db.store import Store, StoreError

ROOT = Path(__file__).resolve().parents[1]
MOUNTS: list[Path] = []  # unmounted after each test
def trial(n: int, pad: int = 0):
    """Trial ``n``; ``pad`` characters in its stored configuration make its row that much bigger."""
    return scored_trial(n, "base base base base", {"family": 0.5 + n / 100}, 4, scores={"t": 0.5},
                        task_retentions={"family": {"t": 0.5}}, config={"pad": "x" * pad})


def study_with_trials(url: str, n: int, pad: int = 0) -> Store:
    store = Store(url)
    sid = store.create_study(family_name="tiny", family_source="demo", family_spec={}, family_info={},
                             method="random", budget={"remove_layers": 1}, settings={}, n_trials=n)
    for k in range(n):
        store.record_trial(sid, trial(k, pad))
    return store


@pytest.fixture(autouse=True)
def _unmount():
    yield
    while MOUNTS:
        subprocess.run(["umount", "-l", str(MOUNTS.pop())], capture_output=True)


@contextmanager
def tmpfs(where: Path, size: str):
    """A small RAM file system (needs root); the test is skipped where it cannot be mounted."""
    where.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


# ------------------------------------------------------------------ each fault: (make it, use it)
def not_a_database(tmp: Path) -> str:
    (tmp / "g.db").write_bytes(b"this is not a database at all" * 100)
    return f"sqlite:///{tmp / 'g.db'}"


def corrupt_page(tmp: Path) -> str:
    db = tmp / "g.db"
    study_with_trials(f"sqlite:///{db}", 60, pad=3000).engine.dispose()  # closed: WAL folded into the file
    size = db.stat().st_size
    assert size > 100_000
    with open(db, "r+b") as f:  # a page of the trials table, in the middle of the file, overwritten
        f.seek((size // 2) // 4096 * 4096)
        f.write(b"\xff" * 4096)
    return f"sqlite:///{db}"


def read_only_file(tmp: Path) -> str:
    study_with_trials(f"sqlite:///{tmp / 'g.db'}", 2).engine.dispose()
    if os.geteuid() != 0:
        os.chmod(tmp / "g.db", 0o444)
        return f"sqlite:///{tmp / 'g.db'}"
    ro = tmp / "ro"
    ro.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(ro)], capture_output=True)
    if res.returncode:
        pytest.skip("root ignores file permissions and no read-only mount is possible here")
    MOUNTS.append(ro)
    subprocess.run(["cp", str(tmp / "g.db"), str(ro)], check=True)
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    return f"sqlite:///{ro / 'g.db'}"


def write_a_study(url: str) -> None:
    store = Store(url)
    store.create_study(family_name="tiny", family_source="demo", family_spec={}, family_info={},
                       method="random", budget={}, settings={}, n_trials=1)


def read_trials(url: str) -> None:
    store = Store(url)
    for s in store.studies():
        store.trials(s["id"])


CASES = [
    ("not a database", not_a_database, Store, r"g\.db is not a SQLite database.*move it aside"),
    ("corrupt data page", corrupt_page, read_trials, r"g\.db is damaged \(database disk image is malformed\).*\.recover"),
    ("read-only file", read_only_file, write_a_study, r"g\.db is read-only.*writable"),
    ("URL nonsense", lambda tmp: "nonsense", Store, r"'nonsense' is not a database URL.*sqlite:////"),
    ("URL sqlite//x", lambda tmp: "sqlite//x", Store, r"'sqlite//x' is not a database URL"),
    ("unknown dialect", lambda tmp: "oracle9://u:pw@h/x", Store, r"unknown kind of database 'oracle9'"),
    ("postgresql without driver or server", lambda tmp: "postgresql://ann:secret@127.0.0.1:1/studies", Store,
     r"postgresql://ann:\*\*\*@127\.0\.0\.1:1/studies.*(driver 'psycopg2?' is not installed; pip install "
     r"psycopg|cannot connect)"),
    ("mysql without driver", lambda tmp: "mysql://ann:secret@127.0.0.1:1/studies", Store,
     r"mysql://ann:\*\*\*@127\.0\.0\.1:1/studies: its driver 'MySQLdb' is not installed"),
    ("port not a number", lambda tmp: "postgresql://ann:secret@127.0.0.1:notaport/db", Store,
     r"'postgresql://ann:\*\*\*@127\.0\.0\.1:notaport/db' is not a database URL \(its port is not a number\)"),
]


@pytest.mark.parametrize("name,make,use,message", CASES, ids=[c[0] for c in CASES])
def test_fault_is_one_clear_line(tmp_path, name, make, use, message):
    url = make(tmp_path)
    with pytest.raises(StoreError, match=message) as err:
        use(url)
    text = str(err.value)
    assert "\n" not in text and "secret" not in text
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained traceback
    if name != "not a database":
        assert "move it aside" not in text  # that hint only when the file is not a database at all


def test_connection_refused_is_one_line(tmp_path):
    pytest.importorskip("pymysql")
    with pytest.raises(StoreError, match=r"cannot connect to the database mysql\+pymysql://ann:\*\*\*@127\.0\.0\.1:1/"
                                         r"studies: .*check that the server is running") as err:
        Store("mysql+pymysql://ann:secret@127.0.0.1:1/studies")
    assert "\n" not in str(err.value) and "secret" not in str(err.value)


def test_full_disk_mid_study_keeps_stored_trials(tmp_path):
    with tmpfs(tmp_path / "small", "600k") as small:
        url = f"sqlite:///{small / 'g.db'}"
        store = study_with_trials(url, 3)
        kept = store.trials(1)
        filler = small / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # take every free byte
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        with pytest.raises(StoreError, match=r"the disk holding .*g\.db is full.*trials stored so far are intact"):
            store.record_trial(1, trial(3, pad=300_000))
        with pytest.raises(StoreError, match="is full"):
            Store(f"sqlite:///{small / 'fresh.db'}")
        filler.unlink()
        store.engine.dispose()
        again = Store(url)
        assert again.trials(1) == kept
        with sqlite3.connect(small / "g.db") as con:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        again.record_trial(1, trial(3))  # and it works again once there is room
        assert len(again.trials(1)) == 4
        again.engine.dispose()


def test_cli_prints_one_line_and_exits_2(tmp_path):
    env = {**os.environ, "GPTAILOR_DB_URL": "sqlite//x", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "db", "studies"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    assert "'sqlite//x' is not a database URL" in res.stderr


def cli(*argv: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The real ``python -m db`` command line, in a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "db", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def one_line(res: subprocess.CompletedProcess) -> str:
    """The refusal's one line (exit 2, no traceback)."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, \
        res.stderr
    return res.stderr.strip()


def file_state(db: Path) -> tuple:
    """What a write would change: the file's bytes and the frames in its write-ahead log."""
    wal = Path(f"{db}-wal")
    return db.read_bytes(), wal.stat().st_size if wal.exists() else 0


def test_a_damaged_database_takes_no_new_study(tmp_path):
    """A file failing SQLite's integrity check is refused by every writer (search/baseline/sweep --background,
    resume, the store's own create_study and launch) with the "damaged" line, and not one byte is written:
    the study rows it holds are readable where the damage is not, and a new one would land in it."""
    from db.workers import launch

    url = corrupt_page(tmp_path)
    db = tmp_path / "g.db"
    con = sqlite3.connect(db)
    try:  # the damage is real: SQLite's own check fails (or cannot even read the page)
        assert con.execute("PRAGMA quick_check").fetchone()[0] != "ok"
    except sqlite3.DatabaseError as e:
        assert "malformed" in str(e)
    finally:
        con.close()
    before = file_state(db)
    damaged = r"the database .*g\.db is damaged \(.*\); stop its workers, then recover .*\.recover"
    for argv in (["search", "--background", "-f", "demo", "-r", "1", "--trials", "3"],
                 ["baseline", "--background", "-f", "demo", "-m", "last_n", "-r", "1"],
                 ["sweep", "--background", "-f", "demo", "--method", "last_n", "--remove", "1"],
                 ["resume", "--background", "1"]):
        line = one_line(cli(*argv, "--db", url))
        assert __import__("re").search(damaged, line), line
        assert file_state(db) == before, argv
    store = Store(url)
    with pytest.raises(StoreError, match=damaged):
        write_a_study(url)
    with pytest.raises(StoreError, match=damaged):
        launch(store, 1)
    store.engine.dispose()
    assert file_state(db) == before


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc here")
@pytest.mark.parametrize("url,words", [
    ("postgresql://u@127.0.0.1:notaport/db", "'postgresql://u@127.0.0.1:notaport/db' is not a database URL (its port "
                                              "is not a number)"),
    # a folder that takes no new file: said at once (it waited 120 s for the lock and blamed "another process")
    ("sqlite:////proc/gptailor.db", "cannot create files beside the database /proc/gptailor.db (No such file or "
                                    "directory: /proc/gptailor.db.lock); its folder /proc is not writable"),
    # a worker cannot see an in-memory database: refused before anything runs
    ("sqlite://", "sqlite:// is an in-memory database: a background worker cannot see it"),
])
def test_a_bad_db_url_is_one_line_and_creates_nothing(tmp_path, url, words):
    """GPTAILOR_DB_URL problems from the real command line: one line, exit 2, nothing created in the working
    directory (the in-memory URL used to leave a folder `sqlite:/logs` there)."""
    line = one_line(cli("search", "--background", "-f", "demo", "-r", "1", "--trials", "2",
                        env={"GPTAILOR_DB_URL": url, "GPTAILOR_DATA_DIR": str(tmp_path / "data")}, cwd=tmp_path))
    assert words in line and "another process" not in line, line
    assert list(tmp_path.iterdir()) == []


def test_worker_logs_sit_beside_the_database_or_in_the_data_dir(tmp_path, monkeypatch):
    """Where `--background` writes worker logs: logs/ beside a SQLite file, else <data dir>/logs (never a folder
    named after the URL), and a worker is never launched on an in-memory database."""
    from db.cli import _log_dir
    from db.runs import StudyError
    from db.workers import launch

    monkeypatch.setenv("GPTAILOR_DATA_DIR", str(tmp_path / "data"))
    assert _log_dir(Store(f"sqlite:///{tmp_path / 'x' / 'g.db'}")) == str(tmp_path / "x" / "logs")
    memory = Store("sqlite://")
    assert memory.in_memory and _log_dir(memory) == str(tmp_path / "data" / "logs")
    with pytest.raises(StudyError, match="in-memory database: a worker process cannot see it"):
        launch(memory, 1)


def test_a_worker_killed_by_a_full_disk_is_explained(tmp_path):
    """The database and the worker's log on one small disk, filled while the worker runs: the worker dies,
    and why reaches a reader: the study's error says the disk is full (written by the worker, or by the reader
    that found it dead), or the reader itself says so (one line, exit 2) when the disk takes no write at all.
    Nothing stored is lost, and once there is room the study resumes to the trials asked for."""
    from conftest import make_tiny_family_with_suite
    from db.runs import create_study
    from db.workers import launch, wait
    from gptailor.search.settings import SearchSettings
    from gptailor.search.space import Budget

    spec = make_tiny_family_with_suite(tmp_path / "fam", n_layers=6, n_test=12)
    with tmpfs(tmp_path / "small", "2m") as small:
        url = f"sqlite:///{small / 'g.db'}"
        store = Store(url)
        sid = create_study(store, str(spec), "random", Budget(remove_layers=2),
                           SearchSettings(method="random", n_trials=20, min_fidelity=2, max_fidelity=8, seed=0))
        proc = launch(store, sid, log_dir=small / "logs")
        while not store.trials(sid):  # until its first trial is stored
            assert proc.poll() is None, (small / "logs" / f"study-{sid}.log").read_text()
            time.sleep(0.05)
        filler = small / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # take every free byte
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        try:
            assert proc.wait(timeout=600) != 0  # the worker died of it (an event: its exit)
        finally:
            if proc.poll() is None:
                proc.kill()
        kept = [t for t in store.trials(sid)]
        res = cli("studies", "--db", url)
        error = store.study(sid)["error"] or ""
        said = res.stderr if res.returncode else error
        assert "is full" in said, (res.returncode, res.stderr, store.study(sid))
        if res.returncode:  # the reader could not write either: one line naming the disk
            assert one_line(res).startswith(f"error: the disk holding {small / 'g.db'} is full")
        else:
            assert store.study(sid)["status"] in ("failed", "interrupted")
        filler.unlink()
        assert cli("studies", "--db", url).returncode == 0
        assert store.study(sid)["status"] in ("failed", "interrupted")
        assert [t for t in store.trials(sid) if t.status != "cut"] == [t for t in kept if t.status != "cut"]
        with sqlite3.connect(small / "g.db") as con:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        launch(store, sid, log_dir=small / "logs")
        done = wait(store, sid, timeout=600)
        assert done["status"] == "finished" and done["trials_done"] == 20
        store.engine.dispose()
