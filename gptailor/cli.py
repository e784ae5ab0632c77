"""``python -m gptailor`` (installed: ``gptailor``): the engine from a terminal (info, eval, report, export, chat).

A program built on the engine adds its own commands by calling ``main(extra=...)`` (the app's study
commands: ``python -m db``). The engine looks for none: it names no other package, and entry points would
not help, since the app runs from the checkout and is never installed.

Every command exits non-zero with a one-line reason on bad input, so scripts can rely on it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Protocol, Sequence

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _read_plan(arg: str, family_name: str):
    """A plan given inline, as a file, or as @file; PlanError (one line) for unreadable files."""
    from gptailor.plan import Plan, PlanError

    path = Path(arg[1:]) if arg.startswith("@") else Path(arg)
    if arg.startswith("@") or _is_file(path):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise PlanError(f"plan file {path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
        except IsADirectoryError:
            raise PlanError(f"plan file {path} is a folder; give a file holding the plan") from None
        except FileNotFoundError:
            raise PlanError(f"plan file {path} does not exist") from None
        except OSError as e:
            raise PlanError(f"plan file {path}: cannot read it ({e.strerror})") from None
    else:
        text = arg
    return Plan.parse(text, family_name)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # plan text too long or odd to be a file name
        return False


def _finite(obj):
    """``obj`` with NaN and infinities as None, so ``--json`` output is valid JSON for any parser."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _load(args):
    from gptailor.family.family import Family

    return Family.from_spec(args.family, device=args.device)


def _suite(args, family):
    from gptailor.eval.tasks import TaskError
    from gptailor.eval.suite import load_suite

    path = args.suite or family.spec.suite_path()
    if not path:
        raise TaskError(f"family {family.name!r} names no task suite; pass --suite path/to/suite.yaml")
    return load_suite(path)


def cmd_info(args) -> int:
    from gptailor.family.inspect import inspect_family  # configs and safetensors headers only: no member is loaded

    import torch

    from gptailor.eval.prefix import prefix_budget

    info = inspect_family(args.family, device=args.device)
    budget, source = prefix_budget(torch.device(info["device"]))
    info.update(prefix_cache_mb=round(budget / 2 ** 20), prefix_cache_budget=source)
    if args.json:
        print(json.dumps(_finite(info), indent=2, allow_nan=False))
        return 0
    print(f"family {info['family']}: {info['model_type']}, {info['layers']} layers, hidden {info['hidden_size']}, "
          f"{info['params'] / 1e6:.2f}M params ({info['params_per_layer'] / 1e6:.3f}M per layer), "
          f"{info['dtype']} on {info['device']}")
    print(f"cache budget {info['cache_mb']} MB ({info['cache_budget']}; set GPTAILOR_CACHE_MB to change)")
    print(f"prefix-state cache budget {info['prefix_cache_mb']} MB ({info['prefix_cache_budget']}; "
          f"set GPTAILOR_PREFIX_CACHE_MB to change, 0 turns it off)")
    for m, src in info["members"].items():
        print(f"  {m:<12} {info['checkpoint_dtypes'][m]:<9} {src}")
    return 0


def _lm_eval_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give lm-eval task names separated by commas, e.g. arc_easy,hellaswag")
    return names


def _lm_eval_report(args, fam, plan, members: bool = True):
    """lm-eval's own metrics for the plan (and the members), when --lm-eval names tasks."""
    from gptailor.eval.lm_eval import lm_eval_report

    return lm_eval_report(fam, plan, args.lm_eval, args.limit, args.lm_eval_include, members=members,
                          batch_size=args.batch_size)


def cmd_eval(args) -> int:
    from gptailor.eval.evaluator import Evaluator

    fam = _load(args)
    plan = _read_plan(args.plan, fam.name)
    if args.lm_eval:
        rep = _lm_eval_report(args, fam, plan.validate(fam.member_names, fam.n_layers, fam.name))
        print(json.dumps(_finite(rep.to_dict()), indent=2, allow_nan=False) if args.json else rep.table())
        return 0
    ev = Evaluator(fam, _suite(args, fam), batch_size=args.batch_size, split=args.split,
                   definition=args.retention)
    res = ev.evaluate(plan.validate(fam.member_names, fam.n_layers, fam.name), args.fidelity,
                      speed=not args.no_speed)
    print(json.dumps(_finite(res.to_dict()), indent=2, allow_nan=False) if args.json else res.table())
    return 0


def cmd_export(args) -> int:
    from gptailor.eval.evaluator import Evaluator
    from gptailor.export.hf import export, prepare_folder

    fam = _load(args)
    plan = _read_plan(args.plan, fam.name).validate(fam.member_names, fam.n_layers, fam.name)
    prepare_folder(args.out, args.overwrite)  # a folder it cannot write is said before the evaluation
    result = None
    if not args.no_eval and (args.suite or fam.spec.suite_path()):
        result = Evaluator(fam, _suite(args, fam)).evaluate(plan, args.fidelity, speed=True)
    rep = _lm_eval_report(args, fam, plan) if args.lm_eval else None
    out = export(fam, plan, args.out, result=result, overwrite=args.overwrite, dtype=args.dtype, lm_eval=rep)
    print(f"wrote {out}" + (f" (retention {100 * result.retention:.1f}%)" if result else ""))
    return 0


def cmd_report(args) -> int:
    """The members' table (``gptailor.eval.members``): progress on stderr as it goes, the table on stdout."""
    from gptailor.eval.evaluator import Evaluator
    from gptailor.eval.members import markdown, member_rows

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    fam = _load(args)
    ev = Evaluator(fam, _suite(args, fam), batch_size=args.batch_size, split=args.split)
    say(f"family {fam.name}: {len(fam.member_names)} members, suite {ev.suite.name!r} "
        f"({len(ev.suite.tasks)} tasks, {args.split} split)")
    rows = member_rows(ev, args.split, naive=not args.no_naive, say=say)
    if args.json:
        print(json.dumps(_finite([{"model": r.label, "scores": r.scores, "retention": r.retentions} for r in rows]),
                         indent=2, allow_nan=False))
    else:
        print(markdown(ev, rows))
    return 0


def cmd_chat(args) -> int:
    from gptailor.chat import reply
    from gptailor.stitch import Stitcher

    from gptailor.plan import Plan

    fam = _load(args)
    plan = _read_plan(args.plan, fam.name) if args.plan else Plan.identity(fam.n_layers, family=fam.name)
    model = Stitcher(fam).build(plan)
    print(reply(model, fam.tokenizer, args.prompt, args.max_new_tokens, args.temperature))
    return 0


class Commands(Protocol):
    """More commands for this command line, from a program built on the engine (the app's study commands):
    it adds its subparsers (each sets ``func(args)``; ``args.argv`` is the command line as given) and names
    the errors that end a command with one line and exit 2."""

    def register(self, sub: argparse._SubParsersAction) -> None: ...

    def errors(self) -> tuple[type[Exception], ...]: ...


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (no usage block) and exit 2, like every other
    refusal of this CLI. Subcommand parsers inherit it."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def _temperature(text: str) -> float:
    try:
        t = float(text)
    except ValueError:
        t = math.nan
    if not (math.isfinite(t) and 0 <= t <= 100):
        raise argparse.ArgumentTypeError(f"temperature must be a number from 0 to 100, got {text!r}")
    return t


def lm_eval_args(sp, what: str = "print lm-eval's own metrics of the plan beside the base's and each member's"):
    from gptailor.common.limits import arg

    sp.add_argument("--lm-eval", type=_lm_eval_names, default=None, metavar="TASKS",
                    help=f"lm-evaluation-harness task names, comma-separated (arc_easy,hellaswag): {what}")
    sp.add_argument("--limit", type=arg("limit"), default=None, help="--lm-eval: docs per task (lm-eval's --limit)")
    sp.add_argument("--lm-eval-include", default=None, metavar="DIR",
                    help="--lm-eval: a folder of lm-eval task YAMLs (e.g. over local JSON files)")


def build_parser(extra: Sequence[Commands] = (), prog: str = "python -m gptailor") -> argparse.ArgumentParser:
    """The engine's commands (info, eval, report, export, chat), then those of each of ``extra``."""
    from gptailor.common.limits import arg
    from gptailor.eval.results import AUTO, CHOICES

    p = OneLineParser(prog=prog, description="Tailor smaller LLMs from a model family.")
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
    sp.add_argument("--fidelity", type=arg("fidelity"), default=None, help="examples per task (default: all of the split)")
    sp.add_argument("--split", choices=("test", "search", "all"), default="test",
                    help="which examples: the held-out test split (default), the search split, or all")
    sp.add_argument("--retention", choices=CHOICES, default=AUTO,
                    help="retention definition (auto: family where a finetune holds a skill the base lacks)")
    sp.add_argument("--batch-size", type=arg("batch size"), default=64)
    sp.add_argument("--no-speed", action="store_true",
                    help="skip timing prefill/decode tokens/s against the base (a few seconds on large models)")
    lm_eval_args(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("export", help="write a plan's model as a Hugging Face folder")
    common(sp)
    sp.add_argument("--out", "-o", required=True)
    sp.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
    sp.add_argument("--suite")
    sp.add_argument("--fidelity", type=arg("fidelity"), default=None)
    sp.add_argument("--no-eval", action="store_true", help="skip scoring for the model card")
    sp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                    help="dtype of the written weights (default: the base checkpoint's)")
    sp.add_argument("--batch-size", type=arg("batch size"), default=16, help=argparse.SUPPRESS)
    lm_eval_args(sp, "add lm-eval's metrics of the plan and every member to the model card")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("report", help="every member's scores and retention as a markdown table (progress on stderr)")
    common(sp, plan=False)
    sp.add_argument("--suite", help="suite.yaml, or a folder of JSONL task files (default: the family's)")
    sp.add_argument("--split", choices=("test", "search", "all"), default="test",
                    help="which examples: the held-out test split (default), the search split, or all")
    sp.add_argument("--no-naive", action="store_true",
                    help="leave out the row of the base with its last quarter of layers dropped")
    sp.add_argument("--batch-size", type=arg("batch size"), default=64)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("chat", help="one prompt -> generated text from a plan's model")
    common(sp, plan_required=False)
    sp.add_argument("prompt")
    sp.add_argument("--max-new-tokens", type=arg("max new tokens"), default=32)
    sp.add_argument("--temperature", type=_temperature, default=0.0)
    sp.set_defaults(func=cmd_chat)
    for commands in extra:
        commands.register(sub)
    return p


# Commands of the app's command line (``python -m db``), named only to point a user there: the engine
# imports nothing of the app.
STUDY_COMMANDS = ("search", "baseline", "resume", "cancel", "studies", "sweep", "front", "compare")


def main(argv: list[str] | None = None, extra: Sequence[Commands] = (), prog: str = "python -m gptailor") -> int:
    """Run one command; a program built on the engine passes its own ``extra`` commands (the engine knows
    none of them), so ``python -m gptailor`` is the engine's command line alone."""
    from gptailor.export.hf import ExportError
    from gptailor.family.spec import FamilyError
    from gptailor.common.limits import SettingsError
    from gptailor.common.paths import PathError
    from gptailor.plan import PlanError
    from gptailor.eval.tasks import TaskError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not extra and argv and argv[0] in STUDY_COMMANDS:
        print(f"error: {prog}: {argv[0]!r} is a study command: it needs the study database, which the app "
              f"holds; from the app's checkout run: python -m db {' '.join(argv)}", file=sys.stderr)
        return 2
    args = build_parser(extra, prog).parse_args(argv)
    args.argv = argv  # for a command that re-runs itself (the seeded search)
    if not sys.stderr.isatty():  # progress bars are for people; keep logs and pipes clean
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    errors: tuple = (PlanError, FamilyError, TaskError, ExportError, SettingsError, PathError, FileNotFoundError)
    for commands in extra:
        errors += commands.errors()
    try:
        return args.func(args)
    except errors as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:  # a file read deep inside a library: still one line, exit 2
        print(f"error: a file given is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8",
              file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
