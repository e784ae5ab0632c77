"""The prefix-state cache on against off, on recorded trial sequences (issue #20).

A sequence is the ordered (plan, fidelity) pairs a real study scored, recorded once by ``record`` into
``bench/sequences/<name>.json`` (committed, a few kB): a SMAC study (SMAC's proposals change a few positions of
an incumbent: the case the cache is for) and a random search (independent plans: the worst case). ``run``
replays each sequence twice, each in a fresh process with one thread, side by side so that both see the same
machine load (cache off and on), and prints per sequence: trials per
hour both ways and their ratio, the hit rate and the layers skipped, hits by depth, peak RSS both ways against
the budget, and whether every score is identical. ``bytes`` prints the bytes of one cached position for a
family's shape (e.g. the 1B-shape synthetic family) on a suite, without loading its weights.

    python -m bench.prefix_cache record --family demo --method smac --trials 200 --remove 2 --name demo-smac
    python -m bench.prefix_cache record --family data/builtin/smol --method evolution --trials 40 --remove 4 \
        --name smol-evolution
    python -m bench.prefix_cache run [--sequences demo-smac,demo-random,smol-smac] [--limit N]
    python -m bench.prefix_cache ceiling [--sequences smol-smac]   (what any prefix cache could skip)
    python -m bench.prefix_cache bytes --family /work/synth-1b
    python -m bench.prefix_cache stack --family data/builtin/smol [--tokens 2048] [--plans 2,4,8]
    python -m bench.prefix_cache stack --shape llama-3.2-1b --device cuda --dtype bfloat16
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).parent / "sequences"


def record(args) -> int:
    from gptailor import Evaluator, Family, load_suite
    from gptailor.search.optimizer import Search
    from gptailor.search.settings import SearchSettings
    from gptailor.search.space import Budget

    fam = Family.from_spec(args.family)
    ev = Evaluator(fam, load_suite(fam.spec.suite_path()), split="search")
    trials = []
    out = HERE / f"{args.name}.json"
    HERE.mkdir(exist_ok=True)
    t0 = time.perf_counter()

    def save(done: bool) -> None:  # after every trial: a study cut short still leaves its sequence
        out.write_text(json.dumps({"family": args.family, "method": args.method, "remove": args.remove,
                                   "seed": args.seed, "recorded_s": round(time.perf_counter() - t0, 1),
                                   "complete": done, "trials": trials}, indent=1) + "\n")

    def on_trial(t) -> None:
        if t.status == "complete" and not t.cached:
            trials.append({"plan": t.plan.to_text(), "fidelity": t.fidelity})
            print(f"  {len(trials)}: fidelity {t.fidelity} {t.plan.to_text()}", flush=True)
            save(False)

    settings = SearchSettings(method=args.method, n_trials=args.trials, seed=args.seed,
                              max_fidelity=args.max_fidelity)
    Search(ev, Budget(remove_layers=args.remove), settings, on_trial=on_trial).run()
    save(True)
    print(f"{len(trials)} scored trials -> {out}")
    return 0


def replay(args) -> int:
    """One mode of one sequence, in this process: every trial's details, the time, the peak RSS."""
    import torch

    from gptailor import Evaluator, Family, Plan, load_suite
    from gptailor.eval.prefix import prefix_cache_for

    seq = json.loads(Path(args.sequence).read_text())
    if args.limit:
        seq["trials"] = seq["trials"][: args.limit]
    fam = Family.from_spec(seq["family"])
    on = args.mode == "on"
    cache = prefix_cache_for(fam) if on else None
    ev = Evaluator(fam, load_suite(fam.spec.suite_path()), split="search", prefix_cache=cache or False)
    if not args.unaligned:  # as the study's Search did: batches cut at its rungs (the fidelities it ran)
        ev.align_batches(sorted({t["fidelity"] for t in seq["trials"] if t["fidelity"]}))
    torch.set_num_threads(1)  # the two modes run side by side, one core each
    t0, c0 = time.perf_counter(), time.process_time()
    ev.references()
    refs_s, refs_cpu = time.perf_counter() - t0, time.process_time() - c0
    details = []
    t1, c1 = time.perf_counter(), time.process_time()
    for t in seq["trials"]:
        r = ev.evaluate(Plan.from_text(t["plan"], fam.name), t["fidelity"])
        details.append(r.details)
    trials_s, trials_cpu = time.perf_counter() - t1, time.process_time() - c1
    stats = cache.snapshot() if cache is not None else None
    out = {"mode": args.mode, "trials": len(details), "references_s": refs_s, "trials_s": trials_s,
           "references_cpu_s": refs_cpu, "trials_cpu_s": trials_cpu,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "budget_mb": cache.max_bytes / 2 ** 20 if cache else 0, "budget_source": cache.source if cache else "",
           "stats": stats.to_dict() if stats else None,
           "hits_by_depth": dict(sorted(stats.hits_by_depth.items())) if stats else None,
           "n_kept_max": max(Plan.from_text(t["plan"]).n_kept for t in seq["trials"]),
           "details": details}
    Path(args.out).write_text(json.dumps(out))
    return 0


def sequence_names(text: str | None) -> list[str]:
    """``--sequences``: the names given (comma-separated), or every recorded sequence in bench/sequences."""
    return text.split(",") if text else sorted(p.stem for p in HERE.glob("*.json"))


def run(args) -> int:
    names = sequence_names(args.sequences)
    print(f"prefix cache on vs off, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; each mode in a fresh process, the two side by side, one thread each")
    rows = []
    for name in names:
        path = HERE / f"{name}.json"
        res, procs, outs = {}, {}, {}
        for mode in ("off", "on"):  # side by side, one thread each: the same machine load for both
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                outs[mode] = f.name
            cmd = [sys.executable, "-m", "bench.prefix_cache", "replay", str(path), "--mode", mode,
                   "--out", outs[mode], "--limit", str(args.limit or 0), *(["--unaligned"] if args.unaligned else [])]
            procs[mode] = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
        for mode, p in procs.items():
            if p.wait() != 0:
                raise SystemExit(f"replay {name} ({mode}) failed with exit status {p.returncode}")
            res[mode] = json.loads(Path(outs[mode]).read_text())
            os.unlink(outs[mode])
        off, on = res["off"], res["on"]
        same = off["details"] == on["details"]
        n = off["trials"]
        # CPU seconds (one thread each): the work each mode did, whatever the load while it ran; wall time
        # is shown too, but the two processes need not be in the same phase at the same moment
        tph = {m: 3600 * n / (res[m]["references_cpu_s"] + res[m]["trials_cpu_s"]) for m in res}
        tph_trials = {m: 3600 * n / res[m]["trials_cpu_s"] for m in res}
        wall = {m: res[m]["references_s"] + res[m]["trials_s"] for m in res}
        s = on["stats"]
        print(f"\n{name}: {n} trials, kept layers up to {on['n_kept_max']}")
        print(f"  trials/CPU-hour  off {tph['off']:.0f}  on {tph['on']:.0f}  ratio {tph['on'] / tph['off']:.2f}x"
              f"   (trials only, references excluded: ratio {tph_trials['on'] / tph_trials['off']:.2f}x)")
        print(f"  CPU s: references off {off['references_cpu_s']:.1f} on {on['references_cpu_s']:.1f}; trials off "
              f"{off['trials_cpu_s']:.1f} on {on['trials_cpu_s']:.1f}   (wall s: off {wall['off']:.0f} on {wall['on']:.0f})")
        print(f"  hit rate {s['hit_rate']:.1%} of {s['lookups']} batch forwards; layers skipped "
              f"{s['layers_skipped']} of {s['layers_skipped'] + s['layers_run']} "
              f"({s['layers_skipped'] / max(1, s['layers_skipped'] + s['layers_run']):.1%})")
        print(f"  hits by depth (kept layers skipped: forwards): {on['hits_by_depth']}")
        print(f"  peak RSS  off {off['peak_rss_mb']:.0f} MB  on {on['peak_rss_mb']:.0f} MB  "
              f"(+{on['peak_rss_mb'] - off['peak_rss_mb']:.0f} MB; budget {on['budget_mb']:.0f} MB, "
              f"{on['budget_source']})")
        print(f"  every score identical: {'yes' if same else 'NO'}")
        rows.append((name, n, tph["off"], tph["on"], tph["on"] / tph["off"], s["hit_rate"],
                     on["peak_rss_mb"] - off["peak_rss_mb"], on["budget_mb"], same))
    print("\n| sequence | trials | trials/CPU-h off | trials/CPU-h on | ratio | hit rate | extra peak RSS | budget | identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n, a, b, r, h, rss, bud, same in rows:
        print(f"| {name} | {n} | {a:.0f} | {b:.0f} | {r:.2f}x | {h:.0%} | {rss:+.0f} MB | {bud:.0f} MB | "
              f"{'yes' if same else 'NO'} |")
    return 0 if all(r[-1] for r in rows) else 1


def skippable(fam, trials: list[dict]) -> dict[str, Any]:
    """What any prefix cache could skip on ``trials`` (recorded ``{"plan", "fidelity"}``), with unbounded memory:
    for every trial and every block of examples it scores (the rungs cut a task's examples into blocks: 0-10,
    11-32, 33-99), the deepest kept-layer prefix (canonical ops, as ``prefix_keys`` hashes them) that an earlier
    trial ran on that block. Pure bookkeeping: no forward runs."""
    from gptailor import Plan
    from gptailor.eval.prefix import canonical_op

    edges = sorted({t["fidelity"] for t in trials if t["fidelity"]})
    blocks = list(zip([0, *edges[:-1]], edges))
    seen: dict[tuple[int, int], set[tuple[str, ...]]] = {b: set() for b in blocks}  # every prefix run on it
    skip = total = skip_w = total_w = whole = 0
    for t in trials:
        plan = Plan.from_text(t["plan"], fam.name)
        ops = tuple(canonical_op(fam, i, plan.ops[i]) for i in plan.kept_positions)
        for lo, hi in blocks:
            if t["fidelity"] is not None and hi > t["fidelity"]:
                break
            depth = next((k for k in range(len(ops), 0, -1) if ops[:k] in seen[(lo, hi)]), 0)  # the deepest
            whole += depth == len(ops)
            skip, total = skip + depth, total + len(ops)
            skip_w, total_w = skip_w + depth * (hi - lo), total_w + len(ops) * (hi - lo)
            seen[(lo, hi)].update(ops[:k] for k in range(1, len(ops) + 1))
    share = skip_w / max(1, total_w)
    return {"rungs": edges, "by_block": skip / max(1, total), "by_examples": share,
            "bound": 1 / max(1e-9, 1 - share), "whole_repeats": whole}


def ceiling(args) -> int:
    """``skippable`` for each sequence. The share of kept layers skippable, weighted by the examples of each block,
    bounds what skipping layers alone can buy: 1 / (1 - share) if layers were a trial's only cost (the head,
    stitching and references are not skipped this way, except a whole-plan repeat's head and layers)."""
    from gptailor import Family

    names = sequence_names(args.sequences)
    print("| sequence | trials | rungs | kept layers skippable (by block) | weighted by examples | bound if layers were "
          "all the cost | whole-plan repeats |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        seq = json.loads((HERE / f"{name}.json").read_text())
        r = skippable(Family.from_spec(seq["family"]), seq["trials"])
        print(f"| {name} | {len(seq['trials'])} | {', '.join(map(str, r['rungs']))} | {r['by_block']:.1%} | "
              f"{r['by_examples']:.1%} | {r['bound']:.2f}x | {r['whole_repeats']} |")
    return 0


def bytes_per_position(args) -> int:
    """Bytes of one cached position: every search-split batch's padded tokens times the hidden size times the
    dtype's bytes. ``--shape`` takes the hidden size, layers and dtype of a synthetic real shape
    (``gptailor.builtin.synth.SHAPES``) instead of the family's, so a 1B shape needs no weights on disk."""
    import torch

    from gptailor import Evaluator, Family, load_suite

    fam = Family.from_spec(args.family)  # configs and safetensors headers only: no layer is read here
    suite = load_suite(args.suite or fam.spec.suite_path())
    ev = Evaluator(fam, suite, split="search", prefix_cache=False)
    hidden, layers, bits, name = int(fam.config.hidden_size), fam.n_layers, torch.finfo(fam.dtype).bits, fam.name
    if args.shape:
        from gptailor.builtin.synth import shape_of

        sh = shape_of(args.shape)
        hidden, layers, bits, name = sh.hidden_size, sh.num_hidden_layers, 16, f"shape {args.shape} (bfloat16)"
    tokens = sum(b.input_ids.numel() for t in suite for b in ev._prepare(t, args.fidelity)[0])
    total = tokens * hidden * bits // 8
    print(f"{name} (hidden {hidden}, {layers} layers); suite {suite.name} ({fam.name}'s tokenizer), search split "
          f"at fidelity {args.fidelity or 'full'}: {tokens} padded tokens per pass -> {total / 2 ** 20:.1f} MB per "
          f"cached position, {total * layers / 2 ** 20:.0f} MB to keep every layer of one pass")
    return 0


def stacked(args) -> int:
    """Issue #20 item 4, measured: would scoring several plans' suffixes in one forward pay here? After a
    shared prefix, P plans run P different layers on the same kind of input. Stacked, their projections are
    one batched matmul (``torch.bmm`` over P weight sets) instead of P matmuls of the same total size. This
    times both on the family's real projection shapes, for a batch of ``--tokens`` rows (a fidelity-11 smol
    pass is about 2,000 padded tokens), on this machine's device and threads; a ratio near 1 says it buys nothing."""
    import torch

    from gptailor import Family

    if args.shape:  # a published shape (gptailor.builtin.synth.SHAPES): no weights on disk needed
        from gptailor.builtin.synth import shape_of

        sh = shape_of(args.shape)
        name, hidden, inter = f"shape {args.shape}", sh.hidden_size, sh.intermediate_size
        kv = sh.num_key_value_heads * (hidden // sh.num_attention_heads)
    else:
        fam = Family.from_spec(args.family)
        c = fam.config
        name, hidden, inter = fam.name, int(c.hidden_size), int(c.intermediate_size)
        kv = int(getattr(c, "num_key_value_heads", c.num_attention_heads)) * (hidden // int(c.num_attention_heads))
    dtype = getattr(torch, args.dtype)
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden), (hidden, inter), (hidden, inter),
              (inter, hidden)]  # q, k, v, o, gate, up, down: (in, out)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    print(f"{name}: hidden {hidden}, intermediate {inter}, kv {kv}; {args.tokens} tokens per plan; {args.dtype}; "
          f"{torch.get_num_threads()} threads on {dev}"
          f"{' (' + torch.cuda.get_device_name(dev) + ')' if dev.type == 'cuda' else ''}; {time.strftime('%Y-%m-%d')}")
    for p in args.plans:
        ws = [[(torch.randn(o, i, device=dev) * 0.02).to(dtype) for i, o in shapes] for _ in range(p)]
        stacked_w = [torch.stack([ws[k][j].t() for k in range(p)]) for j in range(len(shapes))]
        xs = {i: torch.randn(p, args.tokens, i, device=dev, dtype=dtype) for i in {i for i, _ in shapes}}

        def apart():
            for k in range(p):
                for j, (i, _) in enumerate(shapes):
                    torch.nn.functional.linear(xs[i][k], ws[k][j])

        def together():
            for j, (i, _) in enumerate(shapes):
                torch.bmm(xs[i], stacked_w[j])

        times = {}
        for mode, fn in (("apart", apart), ("stacked", together)):
            fn()  # warm
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[mode] = (time.perf_counter() - t0) / args.repeats
        print(f"  {p} plans: apart {times['apart'] * 1e3:.1f} ms, stacked {times['stacked'] * 1e3:.1f} ms "
              f"per layer's projections -> stacked is {times['apart'] / times['stacked']:.2f}x")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="run a real study and record its scored (plan, fidelity) sequence")
    r.add_argument("--family", default="demo")
    r.add_argument("--method", default="smac", choices=("smac", "random", "evolution"))
    r.add_argument("--trials", type=int, default=200)
    r.add_argument("--remove", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--max-fidelity", type=int, default=None)
    r.add_argument("--name", required=True)
    p = sub.add_parser("replay", help="(internal) one mode of one sequence in this process")
    p.add_argument("sequence")
    p.add_argument("--mode", choices=("off", "on"), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, default=0, help="only the first N trials (0: all)")
    p.add_argument("--unaligned", action="store_true", help="batches not cut at the rungs (before session 11)")
    u = sub.add_parser("run", help="replay sequences with the cache off and on, and compare")
    u.add_argument("--sequences", default=None, help="comma-separated names in bench/sequences (default: all)")
    u.add_argument("--limit", type=int, default=0, help="replay only the first N trials of each (0: all)")
    u.add_argument("--unaligned", action="store_true",
                   help="batches not cut at the sequence's rungs (how trials were batched before session 11)")
    c = sub.add_parser("ceiling", help="what any prefix cache could skip on the sequences (no forward runs)")
    c.add_argument("--sequences", default=None, help="comma-separated names in bench/sequences (default: all)")
    b = sub.add_parser("bytes", help="bytes of one cached position for a family's shape on a suite")
    b.add_argument("--family", required=True)
    b.add_argument("--suite", default=None, help="a suite file (default: the family's own)")
    b.add_argument("--fidelity", type=int, default=None)
    b.add_argument("--shape", default=None, help="a synthetic real shape, e.g. llama-3.2-1b (no weights needed)")
    k = sub.add_parser("stack", help="several plans' layers as one batched matmul against apart (item 4)")
    k.add_argument("--family", default="data/builtin/smol")
    k.add_argument("--tokens", type=int, default=2048)
    k.add_argument("--plans", type=lambda v: [int(x) for x in v.split(",")], default=[2, 4, 8])
    k.add_argument("--repeats", type=int, default=10)
    k.add_argument("--device", default="cpu")
    k.add_argument("--shape", default=None, help="a synthetic real shape, e.g. llama-3.2-1b (no weights needed)")
    k.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = ap.parse_args(argv)
    return {"record": record, "replay": replay, "run": run, "bytes": bytes_per_position,
            "stack": stacked, "ceiling": ceiling}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
