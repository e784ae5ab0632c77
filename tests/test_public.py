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

from db.runs import create_study
from db.status import QUEUED
from db.workers import launch_or_queue, queue, start_queued, terminate, withdraw
from db.store import Store
from gptailor.common.limits import SettingsError
from gptailor.search.settings import SearchSettings
from gptailor.search.space import Budget

from conftest import HANG_GUARD_MS, make_tiny_family_with_suite

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
    deadline = time.time() + HANG_GUARD_MS / 1000  # against a hang only: the loop ends on the event
    while not (started := start_queued(st, 1, tmp_path)):
        assert time.time() < deadline, "the queued study never started"
        time.sleep(0.5)
    assert started == [ids[1]] and queue(st) == []
    assert st.study(ids[1])["status"] in ("created", "running", "finished")
    terminate(st.study(ids[1])["worker_pid"])


def test_a_stored_seed_no_worker_can_use_is_refused_before_launch(fam, tmp_path):
    from db.runs import StudyError

    st = Store(f"sqlite:///{tmp_path / 'q.db'}")
    s = SearchSettings(method="smac")
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
    ({"GPTAILOR_PROXY_HOPS": "one"}, "GPTAILOR_PROXY_HOPS must be a whole number >= 0, got 'one'"),
    ({"GPTAILOR_MAX_STUDIES_PER_HOUR": "-3"}, "GPTAILOR_MAX_STUDIES_PER_HOUR must be a whole number >= 0"),
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


def test_in_public_mode_only_the_token_that_started_a_study_or_an_operator_manages_it(monkeypatch, tmp_path):
    from ui.guard import check_owner, new_token, owner_hash, valid_token

    monkeypatch.setenv("GPTAILOR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GPTAILOR_PUBLIC", "1")
    mine, theirs = new_token(), new_token()
    study = {"id": 7, "owner_hash": owner_hash(mine)}
    nonce, sig = mine.split(".")
    forged = [f"{nonce}.{sig[:-1]}{'A' if sig[-1] != 'A' else 'B'}", f"{nonce}x.{sig}", owner_hash(mine), nonce, "", None]
    assert valid_token(mine) and valid_token(theirs) and not any(valid_token(t) for t in forged)
    assert len(nonce) >= 32 and mine != theirs  # 192 random bits each
    check_owner(study, mine, gr.Request(session_hash="any"), "cancel")  # the token, whatever the session
    check_owner(study, None, gr.Request(session_hash="b", username="operator"), "rename")
    for token in (theirs, *forged):
        with pytest.raises(gr.Error, match="study 7 was started by another visitor"):
            check_owner(study, token, gr.Request(session_hash="a"), "cancel")
    with pytest.raises(gr.Error):  # a study from the CLI or an older release has no visitor
        check_owner({"id": 8, "owner_hash": None}, mine, gr.Request(), "resume")
    monkeypatch.setenv("GPTAILOR_DATA_DIR", str(tmp_path / "other"))  # another app's key signed nothing here
    assert not valid_token(mine)
    monkeypatch.setenv("GPTAILOR_PUBLIC", "0")
    check_owner(study, None, gr.Request(session_hash="b"), "cancel")  # a private app trusts its user


@pytest.mark.parametrize("hops,peer,forwarded,expected", [
    (0, "203.0.113.5", "198.51.100.1", "203.0.113.5"),  # no proxy declared: the peer, the header is ignored
    (1, "10.0.0.2", "1.1.1.1, 198.51.100.7", "198.51.100.7"),  # the entry our proxy appended, not the forged one
    (2, "10.0.0.2", "1.1.1.1, 198.51.100.7, 10.0.0.9", "198.51.100.7"),
    (2, "10.0.0.2", "198.51.100.7", "10.0.0.2"),  # a header shorter than the hops: the documented fallback
    (1, "10.0.0.2", None, "10.0.0.2"),
    (1, "10.0.0.2", "2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),  # one subscriber's free addresses: one client
    (0, "::ffff:203.0.113.5", None, "203.0.113.5"),
])
def test_the_client_address_is_what_the_nearest_proxy_saw(hops, peer, forwarded, expected, monkeypatch):
    from ui.guard import client_address

    monkeypatch.setenv("GPTAILOR_PROXY_HOPS", str(hops))
    headers = {"x-forwarded-for": forwarded} if forwarded else {}
    assert client_address(gr.Request(client={"host": peer}, headers=headers)) == expected


CAPS_SCRIPT = """
import sys
import gradio as gr
from ui.guard import allowance, client_key
from ui.engine import store

def attempt(what, address, user=None):
    request = gr.Request(client={"host": address}, username=user, session_hash="fresh-each-time")
    try:
        with allowance(what, request):
            if what == "studies":
                store().create_study(family_name="demo", family_source="demo", family_spec={}, family_info={},
                                     method="random", budget={}, settings={}, n_trials=1,
                                     client_key=client_key(request))
        return "ok"
    except gr.Error:
        return "refused"

for step in sys.argv[1:]:
    print(attempt(*step.split("|")))
"""


def test_client_caps_are_stored_so_a_restart_resets_nothing(tmp_path):
    """Two app processes in turn on one data dir (a restart): the second still refuses what the first
    allowed up to the cap; studies are counted in the database, exports and uploads in a counts file, both
    by a keyed hash of the client's address (never the address itself); the hourly cap is global."""
    import json
    import sqlite3

    env = {**os.environ, "GPTAILOR_DATA_DIR": str(tmp_path), "GPTAILOR_PUBLIC": "1", "HF_HUB_OFFLINE": "1",
           "GPTAILOR_CLIENT_MAX_STUDIES": "2", "GPTAILOR_SESSION_MAX_EXPORTS": "2",
           "GPTAILOR_MAX_STUDIES_PER_HOUR": "4", "GPTAILOR_PROXY_HOPS": "0"}
    env.pop("GPTAILOR_DB_URL", None)

    def app(*steps):
        r = subprocess.run([sys.executable, "-c", CAPS_SCRIPT, *steps], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout.split()

    a, b = "studies|203.0.113.5", "studies|198.51.100.7"
    assert app(a, a, a, "exports|203.0.113.5", "exports|203.0.113.5", "exports|203.0.113.5") == \
        ["ok", "ok", "refused", "ok", "ok", "refused"]
    with sqlite3.connect(tmp_path / "gptailor.db") as c:  # the two studies, stored with one client key
        keys = c.execute("SELECT client_key FROM studies").fetchall()
    assert len(keys) == 2 and len(set(keys)) == 1 and "203.0.113" not in str(keys)
    counts = json.loads((tmp_path / "client_counts.json").read_text())
    assert [len(v) for v in counts["exports"].values()] == [2] and "203.0.113" not in json.dumps(counts)
    # after the restart: the client is still at its caps; another is not, until the hourly cap (4) is reached
    assert app(a, "exports|203.0.113.5", "uploads|203.0.113.5", b, b, "studies|192.0.2.1", "studies|192.0.2.1|op",
               "exports|203.0.113.5|op") == ["refused", "refused", "ok", "ok", "ok", "refused", "ok", "ok"]


RACE_SCRIPT = """
import sys, time
import gradio as gr
from ui.guard import allowance, client_key
from ui.engine import store

what, address, go = sys.argv[1], sys.argv[2], float(sys.argv[3])
store()  # the database exists before the race starts
time.sleep(max(0.0, go - time.time()))
request = gr.Request(client={"host": address})
try:
    with allowance(what, request):
        time.sleep(1.0)  # the work inside the allowance (a study stored, an export written) takes a while
        if what == "studies":
            store().create_study(family_name="demo", family_source="demo", family_spec={}, family_info={},
                                 method="random", budget={}, settings={}, n_trials=1, client_key=client_key(request))
    print("ok")
except gr.Error:
    print("refused")
"""


@pytest.mark.parametrize("what,addresses,env", [
    ("studies", ("203.0.113.5", "203.0.113.5"), {"GPTAILOR_CLIENT_MAX_STUDIES": "1"}),  # one client's last slot
    ("exports", ("203.0.113.5", "203.0.113.5"), {"GPTAILOR_CLIENT_MAX_EXPORTS": "1"}),
    ("studies", ("203.0.113.5", "198.51.100.7"), {"GPTAILOR_MAX_STUDIES_PER_HOUR": "1"}),  # the app's last slot
])
def test_two_app_processes_cannot_both_take_the_last_slot(tmp_path, what, addresses, env):
    """Two app processes serving one data dir, one slot left (a client's, or the whole app's this hour): the
    check and the count are atomic across processes, so exactly one of two simultaneous attempts gets it."""

    env = {**os.environ, "GPTAILOR_DATA_DIR": str(tmp_path), "GPTAILOR_PUBLIC": "1", "HF_HUB_OFFLINE": "1",
           "GPTAILOR_PROXY_HOPS": "0", **env}
    env.pop("GPTAILOR_DB_URL", None)
    go = time.time() + 12  # both processes are imported and waiting by then, and start together
    procs = [subprocess.Popen([sys.executable, "-c", RACE_SCRIPT, what, address, str(go)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for address in addresses]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    assert sorted(o.strip() for o, _ in outs) == ["ok", "refused"]
