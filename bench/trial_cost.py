"""What one search trial costs, against a pure forward pass and against the naive route.

For a few plans on the demo family, measured in this one run:
- stitch:  building the model in memory (cold = merge cache empty, warm = cached);
- score:   scoring it on the suite at a fidelity (the evaluator's batched path);
- forward: a plain ``model(input_ids, attention_mask)`` over the very same padded batches;
- naive:   ``save_pretrained`` to disk, ``from_pretrained`` back, then score.
Targets (issue #2): (stitch + score) / forward - 1 <= 10 %; naive / (stitch + score) >= 20x.
Ratios are printed last.

    python -m bench.trial_cost [--family demo] [--fidelity 16] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from gptailor import Evaluator, Family, Plan, load_suite  # noqa: E402
from gptailor.stitch import Stitcher  # noqa: E402
from bench.timing import pure_forward, timed  # noqa: E402


def plans_for(fam: Family) -> dict[str, Plan]:
    n = fam.n_layers
    cands = fam.member_names[1:] or ["base"]
    q = max(1, n // 4)
    pick = [("drop" if i in range(n - q - 1, n - 1) else cands[i % len(cands)]) for i in range(n)]
    merge = [("drop" if i in range(n - q - 1, n - 1) else
              (f"merge({cands[0]}=.5,{cands[-1]}=.5)" if i % 2 else "base")) for i in range(n)]
    ties = [("drop" if i in range(n - q - 1, n - 1) else
             (f"merge[ties]({','.join(f'{c}=1' for c in cands)})" if i % 3 == 0 else cands[i % len(cands)]))
            for i in range(n)]
    return {"pick-only": Plan.from_text(" ".join(pick)), "linear merges": Plan.from_text(" ".join(merge)),
            "ties merges": Plan.from_text(" ".join(ties))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="demo")
    ap.add_argument("--fidelity", type=int, default=16, help="examples per task (a typical low-fidelity trial)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--naive-repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    fam = Family.from_spec(args.family)
    suite = load_suite(fam.spec.suite_path())
    ev = Evaluator(fam, suite)
    ev.references()  # references are computed once per study, not per trial
    print(f"family {fam.name}: {fam.n_layers} layers, {fam.param_count() / 1e6:.2f}M params, "
          f"{len(fam.member_names)} members, device {fam.device}, {torch.get_num_threads()} threads; "
          f"suite {suite.name}: {len(suite.tasks)} tasks at fidelity {args.fidelity}")
    rows = []
    for name, plan in plans_for(fam).items():
        st = Stitcher(fam)
        t = time.perf_counter()
        model = st.build(plan)
        cold = time.perf_counter() - t
        warm, model = timed(lambda: st.build(plan), args.repeats)
        score, _ = timed(lambda: ev.score_model(model, args.fidelity), args.repeats)
        batches = [b for task in suite for b in ev._prepare(task, args.fidelity)[0]]
        fwd, _ = timed(lambda: pure_forward(model, batches), args.repeats)

        def naive():
            with tempfile.TemporaryDirectory() as d:
                model.save_pretrained(d)
                fam.tokenizer.save_pretrained(d)
                from transformers import AutoModelForCausalLM

                m = AutoModelForCausalLM.from_pretrained(d, dtype=fam.dtype).eval()
                ev.score_model(m, args.fidelity)

        nv, _ = timed(naive, args.naive_repeats)
        rows.append((name, plan, cold, warm, score, fwd, nv))
        print(f"\n{name}: {plan.to_text()}")
        print(f"  stitch cold {cold * 1e3:8.1f} ms   warm {warm * 1e3:8.1f} ms")
        print(f"  score       {score * 1e3:8.1f} ms   pure forward {fwd * 1e3:8.1f} ms   naive route {nv * 1e3:8.1f} ms")
    print("\nratios (target: overhead <= 10%, naive/ours >= 20x)")
    print(f"{'plan':<16}{'(stitch+score)/fwd':>20}{'overhead':>10}{'naive/ours':>12}{'cold naive/ours':>17}")
    for name, _, cold, warm, score, fwd, nv in rows:
        ours = warm + score
        print(f"{name:<16}{ours / fwd:>20.3f}{100 * (ours / fwd - 1):>9.1f}%{nv / ours:>11.1f}x{nv / (cold + score):>16.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
