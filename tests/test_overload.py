"""Under overload the real app answers every request: it runs, it waits with its place in the queue, or it
is refused at once with "busy, try again" and the server logs the refusal. Never a silent client timeout.

A real server (``tests/gated_app.py``: the app, its Evaluate requests held at a gate the test opens) with a
queue of 2 and one model slot; gradio_client jobs, one client each."""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.utils import QueueError, Status

from db.settings import model_concurrency, queue_max
from gptailor.common.limits import SettingsError
from test_app import free_port
from ui.overload import busy_message

ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 600  # only against a hang: every wait below ends on an event


def wait_for(condition, what: str):
    """Poll ``condition`` until it holds (an event); fail only if the app hangs."""
    guard = time.time() + HANG_GUARD_S
    while not (value := condition()):
        if time.time() > guard:
            pytest.fail(f"hung waiting for {what}")
        time.sleep(0.05)
    return value


@pytest.fixture
def gated_server(tmp_path):
    gate, data, port = tmp_path / "gate", tmp_path / "data", free_port()
    gate.mkdir()
    env = {**os.environ, "PORT": str(port), "GPTAILOR_DATA_DIR": str(data), "GATE_DIR": str(gate),
           "GPTAILOR_QUEUE_MAX": "2", "GPTAILOR_MODEL_CONCURRENCY": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1"}
    for k in ("GPTAILOR_DB_URL", "GPTAILOR_AUTH", "GPTAILOR_PUBLIC"):
        env.pop(k, None)
    log = tmp_path / "app.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "tests/gated_app.py"], cwd=ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"app did not start: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url + "gradio_api/info", timeout=5)
            return True
        except OSError:
            return False

    wait_for(up, "the app to listen")
    yield url, gate, log
    (gate / "open").touch()
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def entered(gate: Path) -> int:
    return len(list(gate.glob("entered-*")))


def join_raw(url: str) -> tuple[int, dict]:
    """What a raw HTTP caller (no gradio_client) gets from the queue: status and JSON body."""
    api = json.loads(urllib.request.urlopen(url + "config").read())
    fn_index = next(d["id"] for d in api["dependencies"] if d.get("api_name") == "evaluate")
    body = json.dumps({"data": ["demo", "base " * 8, 4, None], "fn_index": fn_index,
                       "session_hash": "overload-raw"}).encode()
    req = urllib.request.Request(url + "gradio_api/queue/join", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_queue_settings_have_defaults_and_refuse_nonsense(monkeypatch):
    monkeypatch.delenv("GPTAILOR_QUEUE_MAX", raising=False)
    monkeypatch.delenv("GPTAILOR_MODEL_CONCURRENCY", raising=False)
    monkeypatch.setenv("GPTAILOR_PUBLIC", "0")
    assert (queue_max(), model_concurrency()) == (64, 2)
    monkeypatch.setenv("GPTAILOR_PUBLIC", "1")
    assert queue_max() == 16
    monkeypatch.setenv("GPTAILOR_QUEUE_MAX", "0")
    assert queue_max() == 0  # no bound
    for name, bad in (("GPTAILOR_QUEUE_MAX", "-1"), ("GPTAILOR_QUEUE_MAX", "many"), ("GPTAILOR_MODEL_CONCURRENCY", "0")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(SettingsError, match=name):
            (queue_max if "QUEUE" in name else model_concurrency)()
        monkeypatch.delenv(name)


def test_busy_message_says_how_many_wait_and_what_to_do():
    assert busy_message(5, 4) == "The app is busy (5 requests waiting, the queue holds 4): try again in a moment."
    assert busy_message(1, 1) == "The app is busy (1 request waiting, the queue holds 1): try again in a moment."
    assert "busy" in busy_message(None, None) and "try again" in busy_message(None, None)


def test_overload_runs_queues_with_a_place_or_refuses_clearly(gated_server):
    url, gate, log = gated_server
    plan = " ".join(["base"] * 8)
    clients = [Client(url, verbose=False) for _ in range(6)]
    jobs = [clients[0].submit("demo", plan, 4, api_name="/evaluate")]
    wait_for(lambda: entered(gate) == 1, "the first request to hold the one model slot")
    queued = [c.submit("demo", plan, 4, api_name="/evaluate") for c in clients[1:3]]
    # each queued job is told its place through the event stream, as Gradio reports it
    ranks = [wait_for(lambda j=j: j.status().code == Status.IN_QUEUE and j.status().rank is not None and j.status(),
                      "a queue position") for j in queued]
    # 0-based places; the size is what the queue held when Gradio last told that job (1 for the first)
    assert sorted(s.rank for s in ranks) == [0, 1] and all(s.rank < s.queue_size <= 2 for s in ranks), ranks

    # more than the queue holds: refused at once with Gradio's busy message, and logged, one line each
    over = [c.submit("demo", plan, 4, api_name="/evaluate") for c in clients[3:]]
    for job in over:
        with pytest.raises(QueueError, match="Queue is full! Please try again"):
            job.result()
    status, body = join_raw(url)
    assert status == 503
    assert body["detail"] == busy_message(2, 2)  # what a raw HTTP caller reads
    # the log line is printed (flushed) before the 503 is sent, so all four are there now
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("busy: refused")]
    assert len(lines) == 4, log.read_text()[-3000:]
    assert all(ln.startswith("busy: refused /evaluate from client ") and ln.endswith(busy_message(2, 2))
               for ln in lines), lines
    assert entered(gate) == 1  # nothing refused reached the model

    (gate / "open").touch()
    for job in [*jobs, *queued]:  # every admitted request completes
        summary, _table = job.result()
        assert "Retention" in summary
    assert entered(gate) == 3
    assert "Retention" in clients[3].predict("demo", plan, 4, api_name="/evaluate")[0]  # room again: it runs
    assert len([ln for ln in log.read_text().splitlines() if ln.startswith("busy: refused")]) == 4
