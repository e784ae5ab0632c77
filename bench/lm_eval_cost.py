"""Per-example cost of an lm-eval task: the project's batched scorer vs lm-eval's own loop, same docs.

On the demo family, with lm-eval task YAMLs over local copies of the demo's task data (``demo_facts``:
multiple choice, 8 choices; ``demo_math``: generate_until), for a few stitched plans, measured in one run:
- lm-eval:  ``simple_evaluate`` on ``HFLM(pretrained=model)`` (what ``--lm-eval`` runs), same batch size;
- ours:     ``Evaluator.task_metrics`` on the same docs converted once (``tasks_from_lm_eval``), warm (the
            tokenized batches cached, as in a search) and cold (first call: tokenization included).
Scores must be equal; the target (issue #11) is ours >= 3x faster per example. Medians of ``--repeats``
after a warm-up.

    python -m bench.lm_eval_cost [--n 200] [--repeats 3] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from gptailor import Evaluator, Family, Plan  # noqa: E402
from gptailor.builtin.demo import write_lm_eval_tasks  # noqa: E402
from gptailor.eval.lm_eval import run_lm_eval, tasks_from_lm_eval  # noqa: E402
from gptailor.stitch import Stitcher  # noqa: E402
from gptailor.eval.suite import Suite  # noqa: E402
from bench.timing import timed  # noqa: E402

PLANS = {"math-heavy": "0:math 1:math 2:math 3:math 4:drop 5:math 6:math 7:math",
         "facts-heavy": "0:facts 1:facts 2:facts 3:strings 4:facts 5:facts 6:facts 7:drop"}
METRIC = {"demo_facts": "acc_norm", "demo_math": "exact_match"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200, help="docs per task")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    fam = Family.from_spec("demo")
    stitcher = Stitcher(fam)
    with tempfile.TemporaryDirectory() as tmp:
        inc = write_lm_eval_tasks(Path(tmp), args.n)
        t0 = time.perf_counter()
        tasks = tasks_from_lm_eval(list(METRIC), inc)
        convert_s = time.perf_counter() - t0
        print(f"converted {', '.join(f'{t.name} ({len(t)} docs)' for t in tasks)} once in {convert_s * 1e3:.0f} ms")
        print("| plan | task | docs | lm-eval per doc | ours warm per doc | ours cold per doc | lm-eval / ours warm "
              "| lm-eval / ours cold | score lm-eval | score ours |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for label, text in PLANS.items():
            model = stitcher.build(Plan.from_text(text, fam.name))
            for task in tasks:
                ev = Evaluator(fam, Suite("bench", [task]), batch_size=args.batch_size, split="all")
                t = time.perf_counter()
                ev.task_metrics(model, task)  # cold: tokenizes and pads once
                cold = time.perf_counter() - t
                warm, ours = timed(lambda: ev.task_metrics(model, task), args.repeats)
                theirs_s, run = timed(lambda: run_lm_eval(model, fam.tokenizer, [task.name], include_path=inc,
                                                                batch_size=args.batch_size), args.repeats)
                m, n = METRIC[task.name], len(task)
                theirs = run.metrics[task.name][m]
                print(f"| {label} | {task.name} ({m}) | {n} | {1e3 * theirs_s / n:.2f} ms | {1e3 * warm / n:.2f} ms | "
                      f"{1e3 * cold / n:.2f} ms | {theirs_s / warm:.1f}x | {theirs_s / cold:.1f}x | {theirs:.4f} | "
                      f"{ours[m]:.4f}{'' if abs(theirs - ours[m]) < 1e-6 else ' (DIFFERS)'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
