"""The real app in a real server process, driven through gradio_client."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "PORT": str(port), "GPTAILOR_DATA_DIR": str(tmp_path_factory.mktemp("data")),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path_factory.mktemp("log") / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"app did not start: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.5)
    c = Client(url, verbose=False)
    yield c
    proc.terminate()
    proc.wait(timeout=30)


def test_evaluate_a_plan_through_the_app(client):
    base_plan = client.predict("demo", api_name="/identity_plan")
    assert base_plan.startswith("0:base 1:base")
    n = len(base_plan.split())
    plan = " ".join(["base"] * (n - 3) + ["drop", "drop", "base"])
    summary, table = client.predict("demo", plan, 8, api_name="/evaluate")
    assert "Retention" in summary and f"keeps {n - 2} of {n} layers" in summary
    rows = table["data"] if isinstance(table, dict) else table
    assert [r[0] for r in rows] == ["math", "strings", "facts", "chat_ppl"]
    assert all(isinstance(r[2], (int, float)) for r in rows)


def test_bad_plan_is_a_clear_error(client):
    with pytest.raises(Exception, match="unknown member 'ghost'"):
        client.predict("demo", "0:base 1:ghost", 4, api_name="/evaluate")


def test_chat_returns_text(client):
    base_plan = client.predict("demo", api_name="/identity_plan")
    answer, base_answer = client.predict("demo", base_plan.replace("1:base", "1:math"), "12+30", 8, 0,
                                         api_name="/chat")
    assert isinstance(answer, str) and answer and isinstance(base_answer, str) and base_answer
