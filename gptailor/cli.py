"""``python -m gptailor``: the engine from a terminal (info, eval, export, chat).

Every command exits non-zero with a one-line reason on bad input, so scripts can rely on it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _read_plan(arg: str, family_name: str):
    from .plan import Plan

    text = Path(arg[1:]).read_text() if arg.startswith("@") else arg
    if not arg.startswith("@") and Path(arg).is_file():
        text = Path(arg).read_text()
    return Plan.parse(text, family_name)


def _load(args):
    from .family import Family

    return Family.from_spec(args.family, device=args.device)


def _suite(args, family):
    from .tasks import TaskError, load_suite

    path = args.suite or family.spec.suite_path()
    if not path:
        raise TaskError(f"family {family.name!r} names no task suite; pass --suite path/to/suite.yaml")
    return load_suite(path)


def cmd_info(args) -> int:
    from .family import inspect_family  # configs and safetensors headers only: no member is loaded

    info = inspect_family(args.family, device=args.device)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"family {info['family']}: {info['model_type']}, {info['layers']} layers, hidden {info['hidden_size']}, "
          f"{info['params'] / 1e6:.2f}M params ({info['params_per_layer'] / 1e6:.3f}M per layer), "
          f"{info['dtype']} on {info['device']}")
    print(f"cache budget {info['cache_mb']} MB ({info['cache_budget']}; set GPTAILOR_CACHE_MB to change)")
    for m, src in info["members"].items():
        print(f"  {m:<12} {info['checkpoint_dtypes'][m]:<9} {src}")
    return 0


def cmd_eval(args) -> int:
    from .evaluate import Evaluator

    fam = _load(args)
    plan = _read_plan(args.plan, fam.name)
    ev = Evaluator(fam, _suite(args, fam), batch_size=args.batch_size, split=args.split,
                   definition=None if args.retention == "auto" else args.retention)
    res = ev.evaluate(plan.validate(fam.member_names, fam.n_layers, fam.name), args.fidelity)
    print(json.dumps(res.to_dict(), indent=2) if args.json else res.table())
    return 0


def cmd_export(args) -> int:
    from .evaluate import Evaluator
    from .export import export

    fam = _load(args)
    plan = _read_plan(args.plan, fam.name).validate(fam.member_names, fam.n_layers, fam.name)
    result = None
    if not args.no_eval and (args.suite or fam.spec.suite_path()):
        result = Evaluator(fam, _suite(args, fam)).evaluate(plan, args.fidelity)
    out = export(fam, plan, args.out, result=result, overwrite=args.overwrite, dtype=args.dtype)
    print(f"wrote {out}" + (f" (retention {100 * result.retention:.1f}%)" if result else ""))
    return 0


def cmd_chat(args) -> int:
    from .chat import reply
    from .stitch import Stitcher

    from .plan import Plan

    fam = _load(args)
    plan = _read_plan(args.plan, fam.name) if args.plan else Plan.identity(fam.n_layers, family=fam.name)
    model = Stitcher(fam).build(plan)
    print(reply(model, fam.tokenizer, args.prompt, args.max_new_tokens, args.temperature))
    return 0


def _plugins() -> list:
    """Command sets contributed by the project's other packages (the study database adds search,
    baseline, resume, cancel, studies, compare). Optional: the engine's commands work without them."""
    import importlib

    mods = []
    for name in ("db.cli",):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    return mods


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gptailor", description="Tailor smaller LLMs from a model family.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, plan: bool = True, plan_required: bool = True):
        sp.add_argument("--family", "-f", default="demo", help="'demo', a family spec file, or a folder with family.yaml")
        sp.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the spec's, auto)")
        if plan:
            sp.add_argument("--plan", "-p", required=plan_required,
                            help="plan text ('0:base 1:drop ...'), JSON, a file, or @file")

    sp = sub.add_parser("info", help="family summary: members, layers, params")
    common(sp, plan=False)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("eval", help="score a plan on a task suite")
    common(sp)
    sp.add_argument("--suite", help="suite.yaml, or a folder of JSONL task files (default: the family's)")
    sp.add_argument("--fidelity", type=int, default=None, help="examples per task (default: all of the split)")
    sp.add_argument("--split", choices=("test", "search", "all"), default="test",
                    help="which examples: the held-out test split (default), the search split, or all")
    sp.add_argument("--retention", choices=("auto", "family", "base"), default="auto",
                    help="retention definition (auto: family where a finetune holds a skill the base lacks)")
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("export", help="write a plan's model as a Hugging Face folder")
    common(sp)
    sp.add_argument("--out", "-o", required=True)
    sp.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
    sp.add_argument("--suite")
    sp.add_argument("--fidelity", type=int, default=None)
    sp.add_argument("--no-eval", action="store_true", help="skip scoring for the model card")
    sp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                    help="dtype of the written weights (default: the base checkpoint's)")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("chat", help="one prompt -> generated text from a plan's model")
    common(sp, plan_required=False)
    sp.add_argument("prompt")
    sp.add_argument("--max-new-tokens", type=int, default=32)
    sp.add_argument("--temperature", type=float, default=0.0)
    sp.set_defaults(func=cmd_chat)
    for plugin in _plugins():
        plugin.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .export import ExportError
    from .family import FamilyError
    from .plan import PlanError
    from .tasks import TaskError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not sys.stderr.isatty():  # progress bars are for people; keep logs and pipes clean
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    errors: tuple = (PlanError, FamilyError, TaskError, ExportError, FileNotFoundError)
    for plugin in _plugins():
        errors += plugin.errors()
    try:
        if hasattr(args, "study_func"):
            return args.study_func(args, argv)
        return args.func(args)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
