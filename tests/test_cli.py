import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gptailor.builtin import demo

from conftest import make_tiny_family

ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 1800  # only against a command that hangs; a loaded machine may take minutes for one


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    path = make_tiny_family(d)
    demo.write_tasks(d, n_test=12)
    data = yaml.safe_load(path.read_text())
    data["suite"] = "tasks/suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


STUDY_COMMANDS = ("search", "baseline", "resume", "cancel", "studies", "sweep", "front", "compare")


def run(*args, env: dict[str, str] | None = None):
    """``python -m gptailor ARGS`` (the engine's command line), or ``python -m db ARGS`` for a study command
    (the app's command line: the engine's commands plus the study commands); ``env``: extra variables."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    module = "db" if args[0] in STUDY_COMMANDS else "gptailor"
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=HANG_GUARD_S)


def cli_main(argv: list[str]):
    """The in-process ``main`` of the command line that has ``argv[0]``."""
    if argv[0] in STUDY_COMMANDS:
        from db.cli import main
    else:
        from gptailor.cli import main
    return main


def test_info_and_eval(spec):
    r = run("info", "-f", str(spec), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["layers"] == 4 and set(info["members"]) == {"base", "math", "code"}
    r = run("info", "-f", str(spec), env={"GPTAILOR_PREFIX_CACHE_MB": "12"})
    assert "prefix-state cache budget 12 MB ($GPTAILOR_PREFIX_CACHE_MB;" in r.stdout, r.stdout + r.stderr
    r = run("eval", "-f", str(spec), "-p", "0:base 1:math 2:drop 3:merge(math=.5,code=.5)", "--fidelity", "5", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["kept_layers"] == 3 and res["fidelity"] == 5 and set(res["scores"]) == {"math", "strings", "facts", "chat_ppl"}
    r = run("eval", "-f", str(spec), "-p", "base drop base base")
    assert r.returncode == 0 and "retention" in r.stdout and "chat_ppl" in r.stdout


def test_export_and_chat(spec, tmp_path):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"family": "tiny", "layers": ["base", "drop", "math", "code"]}))
    r = run("export", "-f", str(spec), "-p", f"@{plan_file}", "-o", str(tmp_path / "out"), "--fidelity", "4")
    assert r.returncode == 0, r.stderr
    assert "retention" in r.stdout and (tmp_path / "out" / "config.json").exists()
    r = run("export", "-f", str(spec), "-p", str(plan_file), "-o", str(tmp_path / "out"), "--no-eval")
    assert r.returncode == 2 and "not empty" in r.stderr
    r = run("chat", "-f", str(spec), "-p", "base base drop base", "12+3", "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("args,msg", [
    (["eval", "-p", "0:base 1:base"], "error: plan has 2 positions"),
    (["eval", "-p", "0:base 1:ghost"], "error: position 1: unknown member 'ghost'"),  # the name before the count
    (["eval", "-p", "base ghost base base"], "error: position 1: unknown member 'ghost'"),
    (["info", "-f", "no-such-family"], "error: no family 'no-such-family'"),
])
def test_bad_input_exits_non_zero_with_one_line(spec, args, msg):
    if "-f" not in args:
        args = [*args, "-f", str(spec)]
    r = run(*args)
    assert r.returncode == 2
    assert r.stderr.strip().startswith(msg), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- every bad input: one line, exit 2
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "latin1.txt").write_bytes("base drop base base # caf\xe9".encode("latin-1"))
    (d / "spec.yaml").write_bytes(b"name: caf\xe9\nbase: x\n")
    (d / "task.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    (d / "suite.yaml").write_bytes(b"name: s\ntasks: [{kind: perplexity, path: task.jsonl}] # \xff\n")
    (d / "ok.jsonl").write_text('{"text": "fine"}\n')
    (d / "suite-bad-task.yaml").write_text("name: s\ntasks: [{kind: perplexity, path: task.jsonl}]\n")
    (d / "folder").mkdir()
    return d


SEARCH = ["search", "--background"]
CASES = [  # (argv, words the one line must contain); {spec}, {bad} and {db} are filled in
    (SEARCH + ["--trials", "0"], "trials must be a whole number from 1"),
    (SEARCH + ["--trials", "-5"], "trials must be a whole number from 1"),
    (SEARCH + ["--trials", str(10**20)], "trials must be a whole number from 1 to 100,000"),
    (SEARCH + ["--trials", "10**20"], "trials must be a whole number"),
    (SEARCH + ["--trials", str(10**9)], "trials must be a whole number from 1 to 100,000"),
    (SEARCH + ["--trials", "2.5"], "trials must be a whole number"),
    (SEARCH + ["--min-fidelity", "0"], "min fidelity must be a whole number from 1"),
    (SEARCH + ["--min-fidelity", "-2"], "min fidelity must be a whole number from 1"),
    (SEARCH + ["--min-fidelity", "8", "--max-fidelity", "4"], "max fidelity (4) is below min fidelity (8)"),
    (SEARCH + ["--seed", "-1"], "seed must be a whole number from 0 to 4,294,967,295"),
    (SEARCH + ["--seed", str(2**32)], "seed must be a whole number from 0 to 4,294,967,295"),
    (SEARCH + ["--walltime", "-1"], "wall time must be a number of seconds above 0"),
    (SEARCH + ["--walltime", "nan"], "wall time must be a number of seconds above 0"),
    (SEARCH + ["--workers", "0"], "workers must be a whole number from 1"),
    (["baseline", "--background", "-m", "last_n", "--seed", str(2**40)], "seed must be a whole number"),
    (SEARCH + ["--remove-layers", "-1"], "layers to remove must be a whole number from 0"),
    (SEARCH + ["--device", "cpu"], "unrecognized arguments: --device"),
    (["eval", "-f", "{spec}", "-p", "base base base base", "--batch-size", "0"], "batch size must be a whole number from 1"),
    (["eval", "-f", "{spec}", "-p", "base base base base", "--batch-size", "-1"], "batch size must be a whole number from 1"),
    (["eval", "-f", "{spec}", "-p", "base base base base", "--fidelity", "0"], "fidelity must be a whole number from 1"),
    (["eval", "-f", "{spec}", "-p", "base base base merge[ties,density=abc](math=1)"], "'abc' is not a number"),
    (["eval", "-f", "{spec}", "-p", '{"layers": ["base", "base", "base", {"op": "merge", "weights": {"math": 1}, '
      '"density": "abc"}]}'], "'density' must be a number"),
    (["eval", "-f", "{spec}", "-p", "base base base merge(math=1e300,code=1)"], "merge weights must be at most"),
    (["eval", "-f", "{spec}", "-p", "@{bad}/folder"], "is a folder"),
    (["eval", "-f", "{spec}", "-p", "@{bad}/missing.txt"], "does not exist"),
    (["eval", "-f", "{spec}", "-p", "@{bad}/latin1.txt"], "not UTF-8"),
    (["eval", "-f", "{bad}/spec.yaml", "-p", "base"], "not UTF-8"),
    (["eval", "-f", "{spec}", "-p", "base base base base", "--suite", "{bad}/suite.yaml"], "not UTF-8"),
    (["eval", "-f", "{spec}", "-p", "base base base base", "--suite", "{bad}/suite-bad-task.yaml"], "not UTF-8"),
    (["eval", "-f", "{spec}", "-p", "base base base base", "--suite", "{bad}/folder/x"], "no suite file"),
    (["info", "-f", "{spec}", "--device", "banana"], "device 'banana' is not"),
    (["info", "-f", "{bad}/banana.yaml"], "device 'banana' is not"),
    (["chat", "-f", "{spec}", "hi", "--temperature", "inf"], "temperature must be a number from 0 to 100"),
    (["chat", "-f", "{spec}", "hi", "--max-new-tokens", "0"], "max new tokens must be a whole number"),
    (["resume", "999"], "no study 999"),
    (["cancel", "1", "--wait", "nan"], "wait must be a number of seconds above 0"),
    (["cancel", "1", "--wait", "inf"], "wait must be a number of seconds above 0"),
    (["cancel", "1", "--wait", "-3"], "wait must be a number of seconds above 0"),
    (["export", "-f", "{spec}", "-p", "base base base base", "-o", "/proc/x"],
     "cannot write the export folder /proc/x (No such file or directory; /proc takes no new folder or file there); "
     "choose a folder you can write (-o)"),
    (["export", "-f", "{spec}", "-p", "base base base base", "-o", "{bad}/ok.jsonl/x"],
     "cannot write the export folder {bad}/ok.jsonl/x (Not a directory; {bad}/ok.jsonl takes no new folder"),
]


@pytest.mark.parametrize("argv,words", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_every_bad_input_is_one_line_and_exit_2(spec, bad_files, tmp_path, monkeypatch, capsys, argv, words):
    main = cli_main(argv)
    (bad_files / "banana.yaml").write_text(f"name: b\nbase: {spec.parent / 'base'}\ndevice: banana\n")
    db = f"sqlite:///{tmp_path / 'studies.db'}"
    argv = [a.replace("{spec}", str(spec)).replace("{bad}", str(bad_files)) for a in argv]
    if argv[0] in ("search", "baseline", "resume"):
        argv += ["--db", db] + (["-f", str(spec)] if argv[0] != "resume" else [])
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("a refused search must not re-run itself"))
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refuses before main's body runs
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err, err
    assert words.replace("{bad}", str(bad_files)) in err, err
    if argv[0] == "export":  # refused before the plan was scored: nothing written anywhere
        assert not (bad_files / "ok.jsonl").is_dir() and not Path("/proc/x").exists()
    if argv[0] in ("search", "baseline"):  # nothing was stored for a refused study
        from db.store import Store

        assert Store(db).studies() == []


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(spec, capsys):
    from gptailor.cli import main

    assert main(["info", "-f", str(spec), "--device", "cuda"]) == 2
    assert "this machine has no CUDA devices; use cpu or auto" in capsys.readouterr().err


def test_bad_seed_from_the_real_cli_leaves_stored_studies_alone(spec, tmp_path):
    db = f"sqlite:///{tmp_path / 's.db'}"
    from db.runs import create_study
    from db.store import Store
    from gptailor.search.settings import SearchSettings
    from gptailor.search.space import Budget

    sid = create_study(Store(db), str(spec), "last_n", Budget(remove_layers=1), SearchSettings(method="smac"))
    r = run("search", "-f", str(spec), "--db", db, "--seed", "-1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "seed must be a whole number" in r.stderr
    assert [s["id"] for s in Store(db).studies()] == [sid]


def test_the_engine_alone_has_no_study_commands_and_the_app_has_all(spec, capsys):
    """``python -m gptailor`` is the engine's command line (it knows nothing of the study database);
    ``python -m db`` offers the engine's commands and the study commands."""
    from db.cli import main as app_main
    from gptailor.cli import main as engine_main

    assert engine_main(["studies", "--json"]) == 2
    assert capsys.readouterr().err == ("error: python -m gptailor: 'studies' is a study command: it needs the study "
                                       "database, which the app holds; from the app's checkout run: "
                                       "python -m db studies --json\n")
    with pytest.raises(SystemExit) as e:
        engine_main(["nonsense"])
    assert e.value.code == 2 and "invalid choice: 'nonsense'" in capsys.readouterr().err
    assert app_main(["info", "-f", str(spec), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"] == 4


def test_eval_json_has_no_bare_nan(spec):
    from gptailor.cli import _finite

    out = json.dumps(_finite({"a": float("nan"), "b": [float("inf"), 1.0], "c": {"d": -float("inf")}}),
                     allow_nan=False)
    assert json.loads(out) == {"a": None, "b": [None, 1.0], "c": {"d": None}}


def test_studies_shows_what_each_running_study_is_doing(spec, tmp_path, monkeypatch):
    from db.liveness import Owner
    from db.runs import create_study
    from db.store import Store
    from gptailor.search.settings import SearchSettings
    from gptailor.search.space import Budget

    db = f"sqlite:///{tmp_path / 'now.db'}"
    store = Store(db)
    sid = create_study(store, str(spec), "smac", Budget(remove_layers=1), SearchSettings(method="smac", n_trials=9))
    me = Owner.me()  # this test process stands in for a live worker
    # it beats only once (at the claim), as a worker beating every 20 minutes would: however long `studies`
    # takes to start on a loaded machine, it must neither judge it dead (grace) nor warn that its beat is
    # late (after 3 heartbeats, at least 10 s), which would change the phase line checked below
    monkeypatch.setenv("GPTAILOR_HEARTBEAT_S", "1200")
    monkeypatch.setenv("GPTAILOR_GRACE_S", "3600")
    assert store.claim(sid, me)
    store.set_progress(sid, {"phase": "references", "done": 2, "total": 3, "detail": "scoring code"}, me)
    r = run("studies", "--db", db)
    assert r.returncode == 0, r.stderr
    assert "now: scoring references: 2 of 3 members (scoring code)" in r.stdout
    rows = json.loads(run("studies", "--db", db, "--json").stdout)
    assert rows[0]["phase_line"] == "scoring references: 2 of 3 members (scoring code)"


def test_sweep_runs_one_study_per_budget_and_front_answers_how_small(spec, tmp_path):
    db = f"sqlite:///{tmp_path / 'sweep.db'}"
    r = run("sweep", "-f", str(spec), "--db", db, "--method", "last_n", "--remove", "1,2", "--keep", "0.01")
    assert r.returncode == 0, r.stderr
    studies = json.loads(run("studies", "--db", db, "--json").stdout)
    assert sorted(s["budget"]["remove_layers"] for s in studies) == [1, 2]
    test = {s["budget"]["remove_layers"]: s["test_retention"] for s in studies}
    ids = {s["budget"]["remove_layers"]: s["id"] for s in studies}
    # the answer is the smallest study reaching the threshold, by the studies' own test-split figures
    for keep, want in ((min(test.values()), 2), (max(test.values()), 2 if test[2] >= test[1] else 1)):
        out = run("front", "-f", str(spec), "--db", db, "--keep", str(keep)).stdout
        assert f"study {ids[want]} (" in out.splitlines()[-1], out
    out = run("front", "-f", str(spec), "--db", db, "--keep", "9").stdout
    assert "no study keeps 900%" in out
    bad = run("sweep", "-f", str(spec), "--db", db, "--remove", "0,2")
    assert bad.returncode == 2 and "distinct layer counts >= 1" in bad.stderr


def test_studies_lists_both_retentions_on_both_splits(spec, tmp_path):
    """`studies` shows family and base retention for the search-split best and the test-split report; the
    test cells equal the best plan re-scored here on the test split, the search cells the stored best trial.
    On the demo family, whose finetunes hold skills the base lacks, so the two definitions differ."""
    from db.store import Store
    from gptailor import Evaluator, Family, load_suite

    db = f"sqlite:///{tmp_path / 'both.db'}"
    r = run("sweep", "-f", "demo", "--db", db, "--method", "shortgpt", "--remove", "1")
    assert r.returncode == 0, r.stderr
    study = Store(db).studies()[0]
    fam = Family.from_spec("demo")
    ev = Evaluator(fam, load_suite(fam.spec.suite_path()))
    trial = next(t for t in Store(db).trials(study["id"]) if t.number == study["best_trial"])
    test = ev.evaluate(trial.plan, None, split="test")
    assert test.retentions["base"] != test.retentions["family"]  # the two columns can be told apart
    search = {d: trial.result.retentions[d] for d in ("family", "base")}
    out = run("studies", "--db", db).stdout
    row = next(line for line in out.splitlines() if line.split()[:1] == [str(study["id"])])
    cells = [f"{100 * v:.1f}%" for v in (search["family"], search["base"], test.retentions["family"],
                                         test.retentions["base"])]
    assert row.split()[5:9] == cells, (row, cells)
    assert "search split" in out and "test split" in out and row.split()[9] == study["refs"]["definition"]


def test_background_searches_obey_the_worker_cap(spec, tmp_path, monkeypatch, capsys):
    """GPTAILOR_MAX_WORKERS=1: a second --background search is refused (one line, exit 2, nothing stored),
    --queue puts it in line with its place shown, and `studies` starts it once the slot frees."""
    from db.cli import main
    from db.workers import reconcile, terminate
    from db.store import ACTIVE, Store

    def cli(*argv):
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    db = f"sqlite:///{tmp_path / 'cap.db'}"
    monkeypatch.setenv("GPTAILOR_MAX_WORKERS", "1")
    base = ["search", "--background", "-f", str(spec), "--db", db, "-r", "1", "--trials", "500"]
    code, out, err = cli(*base)
    assert code == 0 and "started in the background" in out, err
    first = Store(db).studies()[0]
    try:
        code, out, err = cli(*base, "--seed", "1")
        assert code == 2 and err.strip().splitlines() == [
            f"error: 1 of 1 worker slots are taken (GPTAILOR_MAX_WORKERS; running: studies {first['id']}); wait "
            f"for one to end, or add --queue to start this one when a slot frees"], err
        assert [s["id"] for s in Store(db).studies()] == [first["id"]]  # nothing stored for the refusal
        code, out, err = cli("baseline", "--background", "-m", "last_n", "-f", str(spec), "--db", db, "-r", "1",
                             "--queue")
        assert code == 0, err
        second = Store(db).studies()[1]
        assert out.startswith(f"study {second['id']} queued (#1 in line): 1 of 1 worker slots are taken"), out
        assert second["status"] == "queued" and second["worker_pid"] is None
        code, out, err = cli(*base, "--seed", "2")  # a study waits in line: the next one is refused too
        assert code == 2 and "1 wait in the queue" in err
        assert cli("studies", "--db", db)[0] == 0
        assert Store(db).study(second["id"])["status"] == "queued"  # the slot is still taken
    finally:
        terminate(first["worker_pid"])
    while Store(db).study(first["id"])["status"] in ACTIVE:  # until the first worker's end is recorded (by
        reconcile(Store(db))  # itself on SIGTERM, or by a reader if the signal came before its handler)
        time.sleep(0.2)
    while Store(db).study(second["id"])["status"] == "queued":
        assert cli("studies", "--db", db)[0] == 0  # a reader fills the free slot
        time.sleep(0.2)
    done = Store(db).study(second["id"])
    assert done["status"] in ("created", "running", "finished") and done["worker_pid"]
    terminate(done["worker_pid"])
