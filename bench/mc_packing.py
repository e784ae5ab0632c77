"""What packing a multiple-choice doc's choices after its one context saves per trial, on the demo suite.

The same stitched plan scored by two evaluators that differ only in ``pack_choices`` (True: the context run
once, choices packed behind a 4D mask; False: one row per choice, the context repeated), interleaved so
that load from other processes hits both alike; medians of ``--repeats``. Scores must be equal.

    OMP_NUM_THREADS=1 python -m bench.mc_packing [--fidelity 16] [--repeats 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from gptailor import Evaluator, Family, Plan  # noqa: E402
from gptailor.eval.suite import load_suite  # noqa: E402

PLAN = "0:math 1:strings 2:facts 3:math 4:strings 5:drop 6:drop 7:strings"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="demo")
    p.add_argument("--fidelity", type=int, default=16, help="examples per task; 0 for the whole split")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    fam = Family.from_spec(args.family)
    suite = load_suite(fam.spec.suite_path())
    fid = args.fidelity or None
    evs = {pack: Evaluator(fam, suite, pack_choices=pack) for pack in (True, False)}
    model = evs[True].stitcher.build(Plan.from_text(PLAN, fam.name))
    details = {pack: ev.model_details(model, fid) for pack, ev in evs.items()}  # warm-up: batches built
    times: dict[bool, dict[str, list[float]]] = {pack: {t.name: [] for t in suite} for pack in evs}
    for _ in range(args.repeats):
        for pack, ev in evs.items():
            for t in suite:
                t0 = time.perf_counter()
                ev.task_metrics(model, t, fid)
                times[pack][t.name].append(time.perf_counter() - t0)
    med = {pack: {n: statistics.median(v) for n, v in d.items()} for pack, d in times.items()}
    print(f"plan {PLAN}; fidelity {fid or 'full'}; {args.repeats} interleaved repeats, medians")
    print("| task | kind | packed | one row per choice | ratio | scores equal |")
    print("|---|---|---|---|---|---|")
    for t in suite:
        a, b = med[True][t.name], med[False][t.name]
        same = details[True][t.name] == details[False][t.name]
        print(f"| {t.name} | {t.kind} | {a * 1e3:.1f} ms | {b * 1e3:.1f} ms | {b / a:.2f}x | {same} |")
    a, b = sum(med[True].values()), sum(med[False].values())
    print(f"| suite | | {a * 1e3:.1f} ms | {b * 1e3:.1f} ms | {b / a:.2f}x | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
