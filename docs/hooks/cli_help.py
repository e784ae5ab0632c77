"""mkdocs hook: a page line ``<!-- help: python -m gptailor eval -->`` becomes that command's live
``--help`` text, so the CLI reference cannot drift from the parsers.

The commands run in this process (``runpy``, as ``python -m`` would), so torch is imported once for all
of them instead of once per command."""
from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import sys
from functools import lru_cache
from pathlib import Path

MARKER = re.compile(r"^<!-- help: python -m ([\w.]+)((?: [\w-]+)*) -->$", re.M)
ROOT = Path(__file__).resolve().parents[2]


@lru_cache(maxsize=None)
def help_text(module: str, args: tuple[str, ...]) -> str:
    """What ``python -m <module> <args> --help`` prints, at a fixed width of 100 columns."""
    saved = sys.argv, os.environ.get("COLUMNS")
    sys.argv, os.environ["COLUMNS"] = [f"python -m {module}", *args, "--help"], "100"
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise RuntimeError(f"python -m {module} {' '.join(args)} --help exited {stop.code}") from None
    finally:
        sys.argv = saved[0]
        if saved[1] is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved[1]
    text = out.getvalue().rstrip()
    if not text.startswith("usage:"):
        raise RuntimeError(f"python -m {module} {' '.join(args)} --help printed no usage")
    return text


def on_config(config):
    """The commands import the project from the repository root, as they do when run there."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    return config


def undocumented(markdown: str) -> list[str]:
    """Subcommands a program's own help lists but the page has no help marker for."""
    shown = {(m, tuple(a.split())) for m, a in MARKER.findall(markdown)}
    missing = []
    for module, args in shown:
        if args:
            continue
        choices = re.search(r"\{([\w,-]+)\}", help_text(module, ()))
        missing += [f"python -m {module} {c}" for c in (choices.group(1).split(",") if choices else [])
                    if (module, (c,)) not in shown]
    return sorted(missing)


def on_page_markdown(markdown: str, page, config, files) -> str:
    missing = undocumented(markdown)
    if missing:
        raise RuntimeError(f"{page.file.src_path}: no help marker for {', '.join(missing)}")
    return MARKER.sub(lambda m: f"```text\n{help_text(m.group(1), tuple(m.group(2).split()))}\n```", markdown)
