"""How long a study takes to reach its first trial, the way the app launches it.

Fresh data folder; the family and suite are loaded once in this process (as the app holds them), then
three studies are launched one after the other in background workers, each cancelled as soon as its
first trial is stored: a SMAC study (computes the references and the heuristics' plans and caches
them), a second SMAC study (reuses them), and a one-trial ShortGPT baseline. Prints, per study, the
seconds from launch to the first stored trial and the phases the worker reported on the way.

    python -m bench.first_trial [--family demo] [--remove 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


def first_trial(store, sid: int, timeout: float = 600) -> tuple[float, list[tuple[float, str]]]:
    """Launch the study's worker; seconds until its first complete trial, and the phases seen."""
    from db.status import phase_text
    from db.workers import cancel, launch

    t0 = time.perf_counter()
    launch(store, sid)
    seen: list[tuple[float, str]] = []
    while time.perf_counter() - t0 < timeout:
        s = store.study(sid)
        text = phase_text(s["progress"])
        if text and (not seen or seen[-1][1] != text):
            seen.append((time.perf_counter() - t0, text))
        if any(t.status == "complete" for t in store.trials(sid)) or s["status"] == "finished":
            took = time.perf_counter() - t0
            cancel(store, sid, wait=60)
            return took, seen
        if s["status"] in ("failed", "interrupted"):
            raise SystemExit(f"study {sid} {s['status']}: {s['error']}")
        time.sleep(0.1)
    raise SystemExit(f"study {sid}: no trial after {timeout} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="demo")
    ap.add_argument("--remove", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("GPTAILOR_DATA_DIR", tempfile.mkdtemp(prefix="gptailor-first-trial-"))
    from db.runs import create_study, load_engine
    from db.store import Store
    from gptailor.search.settings import SearchSettings
    from gptailor.search.space import Budget

    store = Store()
    ev = load_engine(args.family)  # the app holds the loaded family; so does this process
    runs = [("smac", "first SMAC study (cold cache)", 40), ("smac", "second SMAC study (warm cache)", 40),
            ("shortgpt", "ShortGPT baseline (1 trial)", 0)]
    for method, label, n in runs:
        settings = SearchSettings(n_trials=n or 1, seed=0)
        sid = create_study(store, args.family, method, Budget(remove_layers=args.remove), settings, evaluator=ev)
        took, seen = first_trial(store, sid)
        print(f"{label}: first trial after {took:.1f} s")
        for t, text in seen:
            print(f"   {t:6.1f} s  {text}")


if __name__ == "__main__":
    main()
