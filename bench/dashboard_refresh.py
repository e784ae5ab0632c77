"""What the dashboard's 3-second timer costs: a full read and draw vs a tick on an unchanged database.

    python -m bench.dashboard_refresh [--studies 4] [--trials 200] [--ticks 20]

A throwaway SQLite database (the app's own store, in a temporary folder) gets S finished studies of N
trials on the demo family; then ``ui.dashboard_tab.refresh`` (what a change triggers) and ``tick`` with
the state it returned (nothing changed) are timed, and SQL statements are counted with an event
listener on the store's engine. Figures last.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

MEMBERS = ["base", "math", "strings", "facts"]


def fill(st, studies: int, trials: int) -> None:
    """S finished studies of N trials each with random plans and both retention definitions."""
    from gptailor import Plan
    from gptailor.eval.results import EvalResult
    from gptailor.search.trials import TrialRecord

    rng = random.Random(0)
    info = {"n_layers": 8, "members": {m: m for m in MEMBERS}}
    for k in range(studies):
        sid = st.create_study(family_name="demo", family_source="demo", family_spec={"name": "demo"},
                              family_info=info, method="random", budget={"remove_layers": 2},
                              settings={"suite": None}, n_trials=trials, name=f"bench-{k}")
        for n in range(trials):
            ops = [rng.choice(MEMBERS) for _ in range(8)]
            for i in rng.sample(range(8), 2):
                ops[i] = "drop"
            plan = Plan.from_text(" ".join(ops), "demo")
            r = rng.random()
            fidelity = rng.choice([8, 24, 72])
            result = EvalResult(plan.to_text(), fidelity, {"math": r}, {}, {}, kept_layers=6, n_layers=8,
                                params=6_000_000, stitch_s=0.0, score_s=0.0, definition="family",
                                retentions={"family": r, "base": 1.5 * r})
            st.record_trial(sid, TrialRecord(n, plan, fidelity, result, wall_s=float(n)))
        st.transition(sid, ("created",), "finished")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=4)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--ticks", type=int, default=20)
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="gptailor-dash-")
    os.environ["GPTAILOR_DATA_DIR"] = folder
    os.environ["GPTAILOR_DB_URL"] = f"sqlite:///{folder}/gptailor.db"
    from sqlalchemy import event

    from ui import dashboard_tab, engine

    st = engine.store()
    fill(st, args.studies, args.trials)
    statements: list[str] = []
    event.listen(st.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    dashboard_tab.refresh([], None, None, None)  # warm: imports, fANOVA's cache
    statements.clear()
    t0 = time.perf_counter()
    state = dashboard_tab.refresh([], None, "1:0", None)[0]
    full_s, full_q = time.perf_counter() - t0, len(statements)
    ticks = []
    for _ in range(args.ticks):
        statements.clear()
        t0 = time.perf_counter()
        dashboard_tab.tick([], None, "1:0", state)
        ticks.append(time.perf_counter() - t0)
    print(f"{args.studies} studies x {args.trials} trials: full read and draw {1e3 * full_s:.0f} ms, "
          f"{full_q} SQL statements; unchanged tick median {1e3 * statistics.median(ticks):.1f} ms, "
          f"{len(statements)} statement ({full_s / statistics.median(ticks):.0f}x less time)")


if __name__ == "__main__":
    main()
