"""Public-mode pieces without a server: the worker queue (real worker processes), export pruning, the
dashboard's one CSV per session, the settings the app refuses to start with, and the app's messages for
bad numbers (the same rule as the CLI's)."""
import os
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import pytest

from db.runs import QUEUED, create_study, launch_or_queue, queue, start_queued, terminate, withdraw
from db.store import Store
from gptailor.common.limits import SettingsError
from gptailor.search.settings import SearchSettings
from gptailor.search.space import Budget

from conftest import make_tiny_family_with_suite

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    d = tmp_path_factory.mktemp("qfam")
    spec = make_tiny_family_with_suite(d, n_layers=4, n_test=6)
    return str(spec)


def test_at_most_n_workers_the_rest_queue_and_start_in_order(fam, tmp_path):
    st = Store(f"sqlite:///{tmp_path / 'q.db'}")
    ids = [create_study(st, fam, "last_n", Budget(remove_layers=1)) for _ in range(3)]
    how = [launch_or_queue(st, sid, max_workers=1, log_dir=tmp_path) for sid in ids]
    assert how == ["started", QUEUED, QUEUED] and queue(st) == ids[1:]
    assert start_queued(st, 1, tmp_path) == []  # the slot is taken
    withdraw(st, ids[2])  # a queued study leaves the line at once
    assert st.study(ids[2])["status"] == "cancelled" and queue(st) == [ids[1]]
    terminate(st.study(ids[0])["worker_pid"])  # the slot frees when its worker ends, however it ends
    deadline = time.time() + 120
    while not (started := start_queued(st, 1, tmp_path)):
        assert time.time() < deadline, "the queued study never started"
        time.sleep(0.5)
    assert started == [ids[1]] and queue(st) == []
    assert st.study(ids[1])["status"] in ("created", "running", "finished")
    terminate(st.study(ids[1])["worker_pid"])


def test_a_stored_seed_no_worker_can_use_is_refused_before_launch(fam, tmp_path):
    from db.runs import StudyError

    st = Store(f"sqlite:///{tmp_path / 'q.db'}")
    s = SearchSettings()
    s.seed = 2**32  # as an older release could have stored it (check() refuses it now)
    sid = st.create_study(family_name="tiny", family_source=fam, family_spec={}, family_info={}, method="last_n",
                          budget={"remove_layers": 1}, settings=s.to_dict(), n_trials=0)
    with pytest.raises(StudyError, match="seed must be a whole number from 0 to 4,294,967,295"):
        launch_or_queue(st, sid)
    assert st.study(sid)["status"] == "created" and st.study(sid)["worker_pid"] is None


@pytest.mark.parametrize("field,value,words", [
    ("trials", 2.5, "trials must be a whole number from 1 to 100,000, got 2.5"),
    ("trials", 0, "trials must be a whole number"),
    ("seed", -1, "seed must be a whole number from 0 to 4,294,967,295"),
    ("seed", 2**32, "seed must be a whole number"),
    ("min_fid", 0, "min fidelity must be a whole number"),
    ("max_fid", 3, "max fidelity (3) is below min fidelity (8)"),
    ("walltime", -1, "wall time must be a number of seconds above 0"),
])
def test_the_app_checks_numbers_with_the_clis_rule(field, value, words, monkeypatch):
    from ui.search_tab import search_settings

    form = {"method": "smac", "trials": 10, "walltime": None, "seed": 0, "min_fid": 8, "max_fid": None}
    form[field] = value
    with pytest.raises(SettingsError) as e:
        search_settings(**form)
    assert words in str(e.value)


def test_exports_keep_the_newest_few_within_the_byte_cap(tmp_path, monkeypatch):
    from gptailor.export.hf import ExportError
    from ui.editor_tab import prune_exports

    monkeypatch.setenv("GPTAILOR_MAX_EXPORTS", "2")
    monkeypatch.setenv("GPTAILOR_MAX_EXPORT_MB", "0.003")
    zips = []
    for k in range(4):
        (tmp_path / f"demo-{k}").mkdir()
        z = tmp_path / f"demo-{k}.zip"
        z.write_bytes(b"x" * 1000)
        os.utime(z, (k, k))
        zips.append(z)
    prune_exports(tmp_path, keep=zips[3])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-2", "demo-2.zip", "demo-3", "demo-3.zip"]
    big = tmp_path / "demo-9.zip"
    big.write_bytes(b"x" * 5000)
    with pytest.raises(ExportError, match="over this app's cap of 0 MB"):
        prune_exports(tmp_path, keep=big)
    assert not big.exists()


def test_dashboard_csv_is_one_file_per_session():
    from ui.dashboard_tab import to_csv

    req = gr.Request(session_hash="abc123")
    first = to_csv([[1, 0, "complete"]], req)
    second = to_csv([[1, 1, "complete"]], req)
    assert first == second and Path(first).read_text().count("\n") == 2
    assert to_csv([], gr.Request(session_hash="other")) != first
    with pytest.raises(Exception, match="not allowed"):
        to_csv([], gr.Request(session_hash="../../etc/x"))


@pytest.mark.parametrize("env,words", [
    ({"GPTAILOR_AUTH": "userpass"}, "GPTAILOR_AUTH must be user:password"),
    ({"GPTAILOR_AUTH": "a:b,:c"}, "GPTAILOR_AUTH must be user:password"),
    ({"GPTAILOR_MAX_WORKERS": "two"}, "GPTAILOR_MAX_WORKERS must be a whole number >= 0, got 'two'"),
    ({"GPTAILOR_MAX_UPLOAD_MB": "-1"}, "GPTAILOR_MAX_UPLOAD_MB must be a number >= 0"),
])
def test_malformed_settings_refuse_to_start_with_one_line(env, words, monkeypatch):
    from db.settings import check_all
    from gptailor.common.limits import SettingsError

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError, match=words.replace("(", r"\(")):
        check_all()


def test_the_app_exits_2_on_a_malformed_login(tmp_path):
    env = {**os.environ, "GPTAILOR_AUTH": "userpass", "GPTAILOR_DATA_DIR": str(tmp_path), "PORT": "1"}
    r = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: GPTAILOR_AUTH must be user:password (several separated by commas), with a user name and a "
        "password in each; login is not turned off silently"]
    assert "userpass" not in r.stderr


def test_in_public_mode_only_the_owner_or_an_operator_manages_a_study(monkeypatch):
    from ui.guard import check_owner

    study = {"id": 7, "settings": {"owner": "visitor-a"}}
    monkeypatch.setenv("GPTAILOR_PUBLIC", "1")
    check_owner(study, gr.Request(session_hash="visitor-a"), "cancel")
    check_owner(study, gr.Request(session_hash="visitor-b", username="operator"), "cancel")
    for other in (gr.Request(session_hash="visitor-b"), None):
        with pytest.raises(gr.Error, match="study 7 was started by another visitor"):
            check_owner(study, other, "cancel")
    with pytest.raises(gr.Error):
        check_owner({"id": 8, "settings": {}}, gr.Request(session_hash="visitor-a"), "resume")  # CLI-started
    monkeypatch.setenv("GPTAILOR_PUBLIC", "0")
    check_owner(study, gr.Request(session_hash="visitor-b"), "cancel")  # a private app trusts its user


CAPS_SCRIPT = """
import sys
import gradio as gr
from ui.guard import allowance
from ui.engine import store

def attempt(what, session, user=None):
    try:
        with allowance(what, gr.Request(session_hash=session, username=user)):
            if what == "studies":
                store().create_study(family_name="demo", family_source="demo", family_spec={}, family_info={},
                                     method="random", budget={}, settings={"owner": session}, n_trials=1)
        return "ok"
    except gr.Error:
        return "refused"

for step in sys.argv[1:]:
    print(attempt(*step.split(":")))
"""


def test_session_caps_are_stored_so_a_restart_resets_nothing(tmp_path):
    """Two app processes in turn on one data dir (a restart): the second still refuses what the first
    allowed up to the cap; studies are counted in the database, exports and uploads in a counts file."""
    import json
    import sqlite3

    env = {**os.environ, "GPTAILOR_DATA_DIR": str(tmp_path), "GPTAILOR_PUBLIC": "1", "HF_HUB_OFFLINE": "1",
           "GPTAILOR_SESSION_MAX_STUDIES": "2", "GPTAILOR_SESSION_MAX_EXPORTS": "2"}
    env.pop("GPTAILOR_DB_URL", None)

    def app(*steps):
        r = subprocess.run([sys.executable, "-c", CAPS_SCRIPT, *steps], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout.split()

    assert app("studies:a", "studies:a", "studies:a", "exports:a", "exports:a", "exports:a") == \
        ["ok", "ok", "refused", "ok", "ok", "refused"]
    with sqlite3.connect(tmp_path / "gptailor.db") as c:  # the two studies, stored with their owner
        assert c.execute("SELECT count(*) FROM studies WHERE settings LIKE '%\"owner\": \"a\"%'").fetchone() == (2,)
    assert json.loads((tmp_path / "session_counts.json").read_text()) == {"exports": {"a": 2}}
    # after the restart: session a is still at its caps; others (and an operator in session a) are not
    assert app("studies:a", "exports:a", "uploads:a", "studies:b", "exports:b", "exports:a:op", "studies:a:op") == \
        ["refused", "refused", "ok", "ok", "ok", "ok", "ok"]
    assert json.loads((tmp_path / "session_counts.json").read_text()) == {"exports": {"a": 2, "b": 1},
                                                                         "uploads": {"a": 1}}


RACE_SCRIPT = """
import sys, time
import gradio as gr
from ui.guard import allowance
from ui.engine import store

what, session, go = sys.argv[1], sys.argv[2], float(sys.argv[3])
store()  # the database exists before the race starts
time.sleep(max(0.0, go - time.time()))
try:
    with allowance(what, gr.Request(session_hash=session)):
        time.sleep(1.0)  # the work inside the allowance (a study stored, an export written) takes a while
        if what == "studies":
            store().create_study(family_name="demo", family_source="demo", family_spec={}, family_info={},
                                 method="random", budget={}, settings={"owner": session}, n_trials=1)
    print("ok")
except gr.Error:
    print("refused")
"""


@pytest.mark.parametrize("what", ["studies", "exports"])
def test_two_app_processes_cannot_both_take_a_sessions_last_slot(tmp_path, what):
    """Two app processes serving one data dir, one session with one slot left: the check and the count
    are atomic across processes, so exactly one of two simultaneous attempts gets it."""

    env = {**os.environ, "GPTAILOR_DATA_DIR": str(tmp_path), "GPTAILOR_PUBLIC": "1", "HF_HUB_OFFLINE": "1",
           "GPTAILOR_SESSION_MAX_STUDIES": "1", "GPTAILOR_SESSION_MAX_EXPORTS": "1"}
    env.pop("GPTAILOR_DB_URL", None)
    go = time.time() + 12  # both processes are imported and waiting by then, and start together
    procs = [subprocess.Popen([sys.executable, "-c", RACE_SCRIPT, what, "s", str(go)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    assert sorted(o.strip() for o, _ in outs) == ["ok", "refused"]
