"""Pre-trial work is done once per (family, suite content, split) and reused; studies say what they do."""
import json
import shutil

import pytest

from db.runs import create_study, precompute, run_study
from db.status import phase_line, phase_text
from db.store import Store
from gptailor import Evaluator, load_suite
from gptailor.family.family import Family
from gptailor.search.precompute import Precompute, family_fingerprint, suite_fingerprint
from gptailor.common.progress import Phase, Progress
from gptailor.search.settings import SearchSettings
from gptailor.search.space import Budget

from conftest import make_tiny_family_with_suite


@pytest.fixture(scope="module")
def fam_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("prefam")
    make_tiny_family_with_suite(d, n_layers=6, n_test=12)
    return d


def engine(fam_dir):
    return Evaluator(Family.from_spec(fam_dir / "family.yaml"), load_suite(fam_dir / "tasks/suite.yaml"))


def test_references_are_computed_once_and_equal_a_fresh_computation(tmp_path, fam_dir):
    cache = Precompute(tmp_path / "cache")
    seen: list[Phase] = []
    first = cache.references(engine(fam_dir), "search", Progress(on_phase=seen.append))
    # cold: one phase per member scored, then done; nothing says "cached"
    assert [(p.done, p.total, p.cached) for p in seen] == [(0, 3, False), (1, 3, False), (2, 3, False),
                                                             (3, 3, False)]
    files = list((tmp_path / "cache").glob("refs-tiny-*.json"))
    assert len(files) == 1
    seen.clear()
    ev2 = engine(fam_dir)  # a new process would have a fresh evaluator: nothing in memory
    second = cache.references(ev2, "search", Progress(on_phase=seen.append))
    assert [(p.phase, p.cached) for p in seen] == [("references", True)]
    assert second.scores == first.scores
    # the cached scores are what scoring every member gives (independent computation, no cache)
    fresh = engine(fam_dir).references("search")
    assert fresh.scores == second.scores and ev2.references("search") is second  # the evaluator adopted them


def test_a_changed_suite_or_family_file_is_a_new_key(tmp_path, fam_dir):
    copy = tmp_path / "fam"
    shutil.copytree(fam_dir, copy)
    ev = engine(copy)
    key_suite, key_family = suite_fingerprint(ev.suite), family_fingerprint(ev.family)
    cache = Precompute(tmp_path / "cache")
    cache.references(ev, "search")
    # change one example of one task: the suite's content hash changes, the references are scored again
    task = copy / "tasks" / ev.suite.tasks[0].path.split("/")[-1]
    lines = task.read_text().splitlines()
    ex = json.loads(lines[0])
    ex[next(k for k in ("target", "text", "context") if k in ex)] += " changed"
    task.write_text("\n".join([json.dumps(ex), *lines[1:]]) + "\n")
    ev2 = engine(copy)
    assert suite_fingerprint(ev2.suite) != key_suite and family_fingerprint(ev2.family) == key_family
    seen: list[Phase] = []
    cache.references(ev2, "search", Progress(on_phase=seen.append))
    assert not any(p.cached for p in seen) and len(list((tmp_path / "cache").glob("refs-*.json"))) == 2
    # a rewritten weight file (same size, new mtime) is a new family key
    weights = next((copy / "math").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())
    assert family_fingerprint(engine(copy).family) != key_family


def test_a_second_study_reuses_references_and_heuristics_and_says_so(tmp_path, fam_dir):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    spec = str(fam_dir / "family.yaml")
    settings = dict(n_trials=3, min_fidelity=2, max_fidelity=6, seed=0)
    phases: dict[int, list[dict]] = {}

    def watch(sid):  # every progress the worker stores, as a reader polling the database would see it
        orig = store.set_progress

        def spy(study_id, progress, owner):
            phases.setdefault(study_id, []).append(dict(progress))
            return orig(study_id, progress, owner)
        store.set_progress = spy

    ev = engine(fam_dir)
    a = create_study(store, spec, "smac", Budget(remove_layers=2), SearchSettings(method="smac", **settings), evaluator=ev)
    watch(a)
    assert run_study(store, a, evaluator=ev) == "finished"
    cache_files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert any(n.startswith("refs-") for n in cache_files) and any(n.startswith("heuristic-") for n in cache_files)
    ev2 = engine(fam_dir)  # the next worker: a fresh evaluator
    b = create_study(store, spec, "smac", Budget(remove_layers=2), SearchSettings(method="smac", **settings), evaluator=ev2)
    assert run_study(store, b, evaluator=ev2) == "finished"
    first = [p["phase"] for p in phases[a]]
    second = [(p["phase"], p.get("cached")) for p in phases[b]]
    assert first.count("references") == 4 and "heuristics" in first  # 3 members scored, then done
    assert ("references", True) in second and ("references", False) not in second
    assert ("heuristics", True) in second and ("heuristics", False) not in second
    assert store.study(b)["refs"]["scores"] == store.study(a)["refs"]["scores"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == cache_files  # nothing new computed
    trial = next(p for p in phases[b] if p["phase"] == "trial")
    assert trial["total"] == 3 and trial["max_fidelity"] == 6 and trial["fidelity"] in (2, 3, 6)
    assert phase_text(trial).startswith(f"trial {trial['trial'] + 1} of 3 at fidelity {trial['fidelity']}/6")
    assert precompute(store).folder == tmp_path / "cache"


def test_phase_line_says_what_a_study_is_doing_and_warns_of_a_late_heartbeat():
    from datetime import timedelta

    from db.models import utcnow

    now = utcnow()
    s = {"status": "running", "error": None, "worker_pid": 123, "heartbeat_at": now - timedelta(seconds=2),
         "progress": {"phase": "references", "done": 1, "total": 4, "detail": "scoring math"}}
    assert phase_line(s, now) == "scoring references: 1 of 4 members (scoring math)"
    s["progress"] = {"phase": "trial", "trial": 4, "total": 40, "fidelity": 11, "max_fidelity": 100, "eta_s": 95}
    assert phase_line(s, now) == "trial 5 of 40 at fidelity 11/100 examples per task · ETA 1 m 35 s"
    s["heartbeat_at"] = now - timedelta(seconds=31)
    assert "⚠ no heartbeat for 31 s: the worker may be stuck" in phase_line(s, now)
    assert phase_line({**s, "status": "finished"}, now) == "finished"
    assert phase_line({**s, "status": "queued"}, now).startswith("queued")
