"""bench/search_quality.py end to end on a tiny real family (a suite passed with --suite, the loglik objective,
evolution with and without seeds and in the pick-only space, two seeds): its anytime curves recomputed independently from the studies'
SQLite files, its reference progress on stderr, and its refusals of bad flags."""
import json
import math
import os
import re
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tiny_family

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["evolution", "evolution-noseed", "evolution-pick", "random"]
SEEDS = [0, 1]
TRIALS = 6
POINTS = [1, 2, 3, 5, 6]  # 10, 25, 50, 75 and 100% of 6 trials, rounded up


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    from gptailor.builtin import demo

    d = tmp_path_factory.mktemp("bench_sq")
    make_tiny_family(d, n_layers=6)  # its family.yaml names no suite: --suite must supply it
    demo.write_tasks(d, n_test=16)
    for name, keep in (("facts", 40), ("chat_ppl", 24)):  # fewer examples: references and reports in seconds
        f = d / "tasks" / f"{name}.jsonl"
        f.write_text("".join(f.read_text().splitlines(keepends=True)[:keep]))
    wd, out = d / "wd", d / "curves.json"
    cmd = [sys.executable, "-m", "bench.search_quality", "--family", str(d / "family.yaml"),
           "--suite", str(d / "tasks/suite.yaml"), "--trials", str(TRIALS), "--seeds", ",".join(map(str, SEEDS)),
           "--methods", ",".join(METHODS), "--baselines", "none", "--objective", "loglik", "--remove", "2",
           "--min-fidelity", "2", "--max-fidelity", "6", "--workdir", str(wd), "--json", str(out)]
    env = {**os.environ, "PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    return p, wd / "remove2", json.loads(out.read_text()), d


def stored(db: Path) -> tuple[dict, list[tuple]]:
    """The study's settings and its trials (number, fidelity, status, retentions, definition, wall_s), read with
    plain sqlite3: nothing of the project's own reading code."""
    con = sqlite3.connect(db)
    try:
        (settings,) = con.execute("SELECT settings FROM studies").fetchone()
        rows = con.execute("SELECT number, fidelity, status, retentions, definition, wall_s, source FROM trials "
                           "WHERE status != 'cut' ORDER BY number").fetchall()
    finally:
        con.close()
    return json.loads(settings), rows


def loglik(row: tuple) -> float | None:
    _, _, status, retentions, definition, _, _ = row
    if status != "complete" or retentions is None:
        return None
    return json.loads(retentions)["proxies"]["loglik"]["retentions"][definition]


def expected_best(rows: list[tuple], k: int) -> tuple[int, int, float]:
    """Best of the first k trials: the highest fidelity, then the highest loglik retention, then the earliest."""
    done = [(r[1], loglik(r), r[0]) for r in rows[:k] if loglik(r) is not None]
    fid, score, number = max(done, key=lambda x: (math.inf if x[0] is None else x[0], x[1], -x[2]))
    return number, fid, score


def table_row(stdout: str, header: str, method: str) -> list[tuple[float, str]]:
    """The (median score, fidelity) cells of ``method``'s line in the anytime table that starts at ``header``."""
    block = stdout[stdout.index(header):]
    line = next(x for x in block.splitlines()[1:] if x.split() and x.split()[0] == method)
    return [(float(m), f) for m, f in re.findall(r"(\d+\.\d)(?: \[[^\]]*\])? @([\w.-]+)", line)]


def test_settings_reach_every_study(bench_run):
    _, bdir, _, _ = bench_run
    for method in METHODS:
        for seed in SEEDS:
            settings, rows = stored(bdir / f"{method}-seed{seed}.db")
            assert settings["method"] == method.split("-")[0]
            assert (settings["objective"], settings["max_fidelity"], settings["min_fidelity"]) == ("loglik", 6, 2)
            assert settings["initial_plans"] is (method != "evolution-noseed")
            assert settings["suite"].endswith("tasks/suite.yaml")
            assert len(rows) == TRIALS
            assert all(r[1] is not None and r[1] <= 6 for r in rows)
            assert settings["space"] == ("pick" if method == "evolution-pick" else "layerwise")
            if method == "evolution-pick":  # the paper's ablation: no merge in any plan it scored
                con = sqlite3.connect(bdir / f"{method}-seed{seed}.db")
                plans = [p for (p,) in con.execute("SELECT plan FROM trials")]
                con.close()
                assert len(plans) == TRIALS and not any("merge" in p for p in plans)
            if method == "evolution-noseed":  # no heuristic plan in its start
                assert not any(r[6] in ("shortgpt", "angular", "laco", "last_n") or "+" in r[6] for r in rows)


def test_anytime_table_matches_the_stored_trials(bench_run):
    p, bdir, _, _ = bench_run
    head = f"{'method':<18}" + "".join(f"{f'{k} trials':>26}" for k in POINTS)
    assert head in p.stdout
    for method in METHODS:
        per_seed = [stored(bdir / f"{method}-seed{s}.db")[1] for s in SEEDS]
        want = []
        for k in POINTS:
            bests = [expected_best(rows, k) for rows in per_seed]
            score = statistics.median([100 * b[2] for b in bests])
            lo, hi = min(b[1] for b in bests), max(b[1] for b in bests)
            want.append((round(score, 1), f"{lo}" if lo == hi else f"{lo}-{hi}"))
        got = table_row(p.stdout, head, method)
        assert [(s, f) for s, f in got] == [(pytest.approx(s, abs=0.051), f) for s, f in want], (method, got, want)


def test_json_curves_match_the_stored_trials(bench_run):
    _, bdir, data, _ = bench_run
    runs = data["budgets"]["2"]
    assert sorted((r["method"], r["seed"]) for r in runs) == sorted((m, s) for m in METHODS for s in SEEDS)
    for r in runs:
        _, rows = stored(bdir / f"{r['method']}-seed{r['seed']}.db")
        assert [t["number"] for t in r["trials"]] == [x[0] for x in rows]
        for k, point in enumerate(r["curve"], 1):
            number, fid, score = expected_best(rows, k)
            assert (point["trials"], point["number"], point["fidelity"]) == (k, number, fid)
            assert point["score"] == pytest.approx(score)
        final = expected_best(rows, len(rows))[0]
        assert r["reached_s"] == pytest.approx(next(x[5] for x in rows if x[0] == final))
        # by wall time: the same best once every trial is in, and never a trial that had not completed yet
        assert r["wall_curve"][-1]["number"] == final
        walls = {x[0]: x[5] for x in rows}
        assert all(walls[pt["number"]] <= pt["wall_s"] for pt in r["wall_curve"] if pt["number"] is not None)


def test_final_best_row_and_test_retention(bench_run):
    p, _, data, _ = bench_run
    for method in METHODS:
        runs = [r for r in data["budgets"]["2"] if r["method"] == method]
        tests = sorted(100 * r["test_retention"] for r in runs)
        line = next(x for x in p.stdout.splitlines() if x.strip().startswith(f"{method} ") and "reached at" in x)
        assert f"test retention {statistics.median(tests):.1f}% [{tests[0]:.1f}, {tests[-1]:.1f}]" in line


def test_reference_progress_on_stderr(bench_run):
    p, _, _, d = bench_run
    import yaml

    spec = yaml.safe_load((d / "family.yaml").read_text())
    members = ["base", *spec["candidates"]]
    for split in ("search split", "test split"):
        lines = [x for x in p.stderr.splitlines() if x.startswith(f"references ({split}): member")]
        got = [re.match(r".*member (\d+) of (\d+) \((\w+)\)$", x).groups() for x in lines]
        assert [(int(k), int(n)) for k, n, _ in got] == [(k, len(members)) for k in range(1, len(members) + 1)]
        assert sorted(m for _, _, m in got) == sorted(members)


def test_a_rerun_reads_finished_studies_back_and_adds_the_best_seed_row(bench_run):
    """The same --workdir again with a baseline added: the finished evolution study is read back (no second
    study, the same test retention), and the best seeded plan is a row, with the acceptance line against it."""
    p, bdir, _, d = bench_run
    first = re.search(r"evolution seed 0: test (\d+\.\d)%", p.stdout).group(1)
    cmd = [sys.executable, "-m", "bench.search_quality", "--family", str(d / "family.yaml"),
           "--suite", str(d / "tasks/suite.yaml"), "--trials", str(TRIALS), "--seeds", "0", "--methods", "evolution",
           "--baselines", "best_seed", "--objective", "loglik", "--remove", "2", "--min-fidelity", "2",
           "--max-fidelity", "6", "--workdir", str(bdir.parent)]
    env = {**os.environ, "PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    q = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert q.returncode == 0, q.stderr[-3000:]
    line = next(x for x in q.stdout.splitlines() if "evolution seed 0: test" in x)
    assert f"test {first}%" in line and "read back" in line, line
    con = sqlite3.connect(bdir / "evolution-seed0.db")
    assert con.execute("SELECT count(*) FROM studies").fetchone() == (1,)
    con.close()
    _, rows = stored(bdir / "best_seed-seed0.db")
    seeds = [r for r in rows if r[2] == "complete"]
    assert len(seeds) >= 10 and all("+" in r[6] for r in seeds)  # removal+setting, e.g. shortgpt+math
    assert re.search(r"^best_seed\s+1\s+\d+\.\d%", q.stdout, re.M), q.stdout
    assert "evolution against the best baseline row (best_seed," in q.stdout


def test_paired_noise_rescores_every_reported_plan_and_pairs_the_draws(bench_run, capsys):
    """bench.paired_noise on the same --workdir (after the rerun above added best_seed): every study's plan
    re-scored per example equals its stored test report, and each difference is the stored reports' (read
    with plain sqlite3) mean over seeds minus the baseline's."""
    from bench.paired_noise import main

    _, bdir, _, d = bench_run
    assert main(["--workdir", str(bdir.parent), "--family", str(d / "family.yaml"), "--suite",
                 str(d / "tasks/suite.yaml"), "--remove", "2", "--draws", "50"]) == 0
    out = capsys.readouterr().out
    rescored = [x for x in out.splitlines() if " seed " in x and x.strip().endswith(")")]
    assert len(rescored) == len(METHODS) * len(SEEDS) + 1 and all("(equal)" in x for x in rescored), out

    def stored_test(db: Path) -> float:
        con = sqlite3.connect(db)
        (report,) = con.execute("SELECT report FROM studies").fetchone()
        con.close()
        return json.loads(report)["retention"]
    seed_mean = statistics.fmean(stored_test(bdir / f"evolution-seed{s}.db") for s in SEEDS)
    want = 100 * (seed_mean - stored_test(bdir / "best_seed-seed0.db"))
    line = next(x for x in out.splitlines() if x.strip().startswith("evolution - best_seed:"))
    assert f"{want:+.1f} pts" in line and "paired noise" in line and "unpaired" in line, (line, want)


def test_report_rule_reports_the_objectives_best_beside_the_rules(bench_run, capsys):
    """bench.report_rule on the same --workdir: one line per search (never a baseline), the rule's trial is the
    stored report's (same retention), the objective's is the top-fidelity trial with the best loglik retention
    (the earliest on a tie), recomputed here from the SQLite file with plain sqlite3, and the summary is the
    mean of the printed differences."""
    from bench.report_rule import main

    _, bdir, _, _ = bench_run
    assert main([str(bdir.parent)]) == 0
    out = capsys.readouterr().out
    lines = re.findall(r"(remove2/([\w-]+)-seed(\d)\.db) .*?: rule #(\d+) (\d+\.\d)  objective #(\d+) (\d+\.\d)  ([+-]\d+\.\d)",
                       out)
    searches = sorted(p.name for p in bdir.glob("*-seed*.db") if not p.name.startswith("best_seed"))
    assert sorted(x[0].split("/")[1] for x in lines) == searches, out
    diffs = []
    for path, method, seed, rule, rule_test, obj, obj_test, diff in lines:
        con = sqlite3.connect(bdir / path.split("/")[1])
        (report,) = con.execute("SELECT report FROM studies").fetchone()
        con.close()
        report = json.loads(report)
        assert int(rule) == report["trial"] and rule_test == f"{100 * report['retention']:.1f}"
        _, rows = stored(bdir / path.split("/")[1])
        done = [r for r in rows if loglik(r) is not None]
        top = max(math.inf if r[1] is None else r[1] for r in done)
        at_top = [r for r in done if (math.inf if r[1] is None else r[1]) == top]
        best = max(at_top, key=lambda r: (loglik(r), -r[0]))
        assert int(obj) == best[0], (path, obj, best[0])
        if int(obj) == int(rule):
            assert obj_test == rule_test and float(diff) == 0
        diffs.append(float(obj_test) - float(rule_test))
    m = re.search(r": objective - rule ([+-]\d+\.\d) pts", out)
    assert m and abs(float(m.group(1)) - statistics.fmean(diffs)) <= 0.11, (m, diffs)  # each printed to 0.1


@pytest.mark.parametrize("argv, says", [
    (["--methods", "smac,evolution-fast"], "unknown method 'evolution-fast'"),
    (["--methods", "genetic"], "unknown method 'genetic'"),
    (["--objective", "mse"], "invalid choice: 'mse'"),
    (["--min-fidelity", "10", "--max-fidelity", "4"], "--max-fidelity (4) is below --min-fidelity (10)"),
    (["--suite", "/nonexistent/suite.yaml"], "--suite: no file /nonexistent/suite.yaml"),
    (["--json", "/nonexistent/dir/curves.json"], "--json: no folder /nonexistent/dir"),
    (["--seeds", "0,x"], "seed must be a whole number"),
    (["--trials", "0"], "trials must be a whole number from 1"),
])
def test_bad_flags_exit_2_with_the_cause(argv, says, capsys):
    from bench.search_quality import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert says in capsys.readouterr().err
