"""Calibration tasks: scored examples in JSONL, grouped into suites, with nested fidelity subsets.

Three kinds (one JSON object per line):
- ``exact_match``:     ``{"prompt": ..., "target": ...}``  -- teacher-forced, one forward pass scores it;
- ``multiple_choice``: ``{"context": ..., "choices": [...], "answer": <index>}``  -- log-likelihood; optionally
  ``"lengths"`` (characters each choice's log-likelihood is divided by for ``acc_norm``; default each choice's
  own length) and, for lm-eval's "partial evaluation" tasks (WinoGrande, WSC273), ``context`` as a list with
  one context per choice (the choices then hold the shared continuation);
- ``perplexity``:      ``{"text": ...}``.

A suite is a YAML file listing tasks (name, kind, path relative to the suite file), and optionally:
- ``test_fraction`` (suite-wide, default 0.5): each task's examples are split, deterministically, into a
  *search* split (what searches tune on) and a disjoint *test* split (what reports are scored on);
- ``test_path`` (per task): a second JSONL file of the same kind whose examples are held out only: they join
  the test split and never the search split (lm-eval's ``test_split`` beside its ``validation_split``), so a
  report's examples can grow without changing what searches tune on;
- per task, lm-evaluation-harness's conventions: ``until`` (stop sequences for exact match, default
  ``["\n"]``; the tokenizer's EOS always stops), ``filter`` (``{regex: PATTERN}`` or ``{contains: true}``:
  the answer is extracted from a greedy generation, for models that answer in a sentence),
  ``max_gen_toks``, ``metric`` (multiple choice: ``acc`` or ``acc_norm``, the objective; both are reported);
- ``chat_template: true`` (suite-wide or per task): prompts are wrapped in the family's chat template;
- ``lm_eval``: lm-evaluation-harness tasks beside (or instead of) the JSONL ones, each a task name or
  ``{task, metric, limit, name, test_fraction}`` (``limit``: lm-eval's ``--limit``, docs per lm-eval task
  before the search/test split), and ``lm_eval_include``: folder(s) of lm-eval task YAMLs relative to the
  suite file. Their docs become ordinary examples (``gptailor.eval.lm_eval``), so splits and fidelities
  apply unchanged; ``lm_eval_report``: lm-eval task names a chosen plan is reported on (lm-eval's own run).

Fidelity n means "the first n examples of a fixed shuffle" of a task's split, so a higher fidelity
always contains every lower one (what multi-fidelity search assumes).
"""
from __future__ import annotations

import json
import re
import os
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptailor.eval.metrics import TASK_KINDS, default_metric, metrics_for


SPLITS = ("search", "test", "all")
DEFAULT_TEST_FRACTION = 0.5


class TaskError(ValueError):
    """A malformed task or suite file; the message gives the file, the line and what is wrong."""


@dataclass
class Task:
    name: str
    kind: str
    examples: list[dict[str, Any]]
    path: str | None = None
    until: list[str] = field(default_factory=lambda: ["\n"])  # exact match: stop sequences (lm-eval's ``until``)
    filter: dict[str, Any] | None = None  # exact match: {regex: ...} | {contains: true}; scored by generation
    metric: str | None = None  # the objective metric: acc | acc_norm (multiple choice); None: the kind's default
    chat_template: bool = False  # wrap prompts/contexts in the family's chat template
    max_gen_toks: int | None = None  # generation length for filtered exact match (default: longest target + 16)
    test_fraction: float = DEFAULT_TEST_FRACTION
    n_test_only: int = 0  # the last n examples came from the task's ``test_path``: test split only
    test_path: str | None = None  # the file they came from (what a view re-reads to know the split changed)
    _order: list[int] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def n_main(self) -> int:
        """Examples from the task's own file (split by ``test_fraction``), the test-only ones excluded."""
        return len(self.examples) - self.n_test_only

    @property
    def objective_metric(self) -> str:
        """The metric a search maximizes on this task (lm-eval's names)."""
        return self.metric or default_metric(self.kind)

    def split_indices(self, split: str = "all") -> list[int]:
        """Example indices of a split, in the fixed shuffle's order: search = the first part, test = the rest.

        Disjoint and deterministic (seeded by the task's name), so a study never sees its test examples."""
        if split not in SPLITS:
            raise TaskError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        order = self.order()
        if split == "all":
            return order
        n_main = self.n_main
        main, extra = order[:n_main], order[n_main:]
        n_test = int(round(n_main * self.test_fraction))
        n_test = min(max(n_test, 1), n_main - 1) if n_main >= 2 else 0
        return main[: n_main - n_test] if split == "search" else main[n_main - n_test:] + extra

    def split_size(self, split: str = "all") -> int:
        return len(self.split_indices(split))

    def order(self) -> list[int]:
        """A fixed shuffle seeded by the task's name, so subsets do not depend on file order tricks; the
        test-only examples follow in a shuffle of their own, so adding them leaves the search split as it was."""
        if self._order is None:
            idx = list(range(self.n_main))
            random.Random(zlib.crc32(self.name.encode())).shuffle(idx)
            extra = list(range(self.n_main, len(self.examples)))
            random.Random(zlib.crc32(f"{self.name}:test_path".encode())).shuffle(extra)
            self._order = idx + extra
        return self._order

    def add_test_only(self, examples: list[dict[str, Any]]) -> None:
        """Append held-out-only examples (a suite's ``test_path``): they join the test split alone."""
        self.examples = self.examples + list(examples)
        self.n_test_only += len(examples)
        self._order = None

    def subset(self, n: int | None, split: str = "all") -> list[dict[str, Any]]:
        """The first ``n`` examples of the split's fixed shuffle (all of them for None or n >= its size)."""
        idx = self.split_indices(split)
        if n is not None and n <= 0:
            raise TaskError(f"task {self.name!r}: fidelity must be a positive number of examples, got {n}")
        if n is not None:
            idx = idx[:n]
        return [self.examples[i] for i in idx]


def _check_example(kind: str, obj: Any) -> str | None:
    """What is wrong with one example, or None."""
    if not isinstance(obj, dict):
        return "expected a JSON object"
    if kind == "exact_match":
        for k in ("prompt", "target"):
            if not isinstance(obj.get(k), str):
                return f"needs a string {k!r}"
        if not obj["target"]:
            return "'target' is empty"
    elif kind == "multiple_choice":
        ctx = obj.get("context")
        ch = obj.get("choices")
        if not isinstance(ctx, str) and not (isinstance(ctx, list) and all(isinstance(c, str) for c in ctx)):
            return "needs a string 'context'"
        if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) and c for c in ch):
            return "'choices' must be a list of at least two non-empty strings"
        if isinstance(ctx, list) and len(ctx) != len(ch):
            return f"a list 'context' needs one context per choice ({len(ch)}), got {len(ctx)}"
        a = obj.get("answer")
        if not isinstance(a, int) or isinstance(a, bool) or not 0 <= a < len(ch):
            return f"'answer' must be the index of the right choice (0..{len(ch) - 1}), got {a!r}"
        n = obj.get("lengths")
        if n is not None and not (isinstance(n, list) and len(n) == len(ch) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in n)):
            return "'lengths' must give one positive number per choice"
    elif kind == "perplexity":
        if not isinstance(obj.get("text"), str) or not obj["text"]:
            return "needs a non-empty string 'text'"
    return None


def _json_line(where: str | os.PathLike, lineno: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise TaskError(f"{where}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None


def _text(path: Path, shown: str | None = None) -> str:
    """The file's text, or a TaskError naming it (``shown``) if it is a folder or not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TaskError(f"{shown or path}: not UTF-8 text (byte {e.start}); save it as UTF-8 JSON lines") from None
    except IsADirectoryError:
        raise TaskError(f"{shown or path}: is a folder, not a file") from None


def load_task(path: str | os.PathLike, kind: str, name: str | None = None) -> Task:
    path = Path(path)
    name = name or path.stem
    if kind not in TASK_KINDS:
        raise TaskError(f"task {name!r}: unknown kind {kind!r}; use one of {', '.join(TASK_KINDS)}")
    if not path.exists():
        raise TaskError(f"task {name!r}: file {path} does not exist")
    examples = []
    for lineno, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip():
            continue
        obj = _json_line(path, lineno, line)
        problem = _check_example(kind, obj)
        if problem:
            raise TaskError(f"{path}:{lineno}: {kind} example {problem}")
        examples.append(obj)
    if not examples:
        raise TaskError(f"{path}: task {name!r} has no examples")
    return Task(name, kind, examples, str(path))


def _apply_options(task: Task, opts: dict[str, Any], where: str) -> None:
    """Check and set a task's lm-eval-style options; errors name the suite file and the task."""
    if "until" in opts:
        u = opts["until"]
        u = [u] if isinstance(u, str) else u
        if not isinstance(u, list) or not all(isinstance(x, str) and x for x in u):
            raise TaskError(f"{where}: 'until' must be a stop string or a list of non-empty strings")
        task.until = u
    if opts.get("filter") is not None:
        f = opts["filter"]
        ok = isinstance(f, dict) and len(f) == 1 and (
            (isinstance(f.get("regex"), str)) or f.get("contains") is True)
        if not ok:
            raise TaskError(f"{where}: 'filter' must be {{regex: PATTERN}} or {{contains: true}}")
        if "regex" in f:
            try:
                re.compile(f["regex"])
            except re.error as e:
                raise TaskError(f"{where}: filter regex {f['regex']!r} does not compile: {e}") from None
        if task.kind != "exact_match":
            raise TaskError(f"{where}: 'filter' applies to exact_match tasks only")
        task.filter = dict(f)
    if opts.get("metric") is not None:
        allowed = metrics_for(task.kind)
        if opts["metric"] not in allowed:
            raise TaskError(f"{where}: metric {opts['metric']!r} is not one of {', '.join(allowed)} "
                            f"for a {task.kind} task")
        task.metric = opts["metric"]
    if "chat_template" in opts:
        if not isinstance(opts["chat_template"], bool):
            raise TaskError(f"{where}: 'chat_template' is true or false")
        task.chat_template = opts["chat_template"]
    if opts.get("max_gen_toks") is not None:
        m = opts["max_gen_toks"]
        if not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= 4096:
            raise TaskError(f"{where}: 'max_gen_toks' must be an integer in 1..4096")
        task.max_gen_toks = m
    if "test_fraction" in opts:
        f = opts["test_fraction"]
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f < 1:
            raise TaskError(f"{where}: 'test_fraction' must be a number between 0 and 1 (exclusive)")
        task.test_fraction = float(f)
    if task.kind == "exact_match":
        for i, ex in enumerate(task.examples):
            hit = next((u for u in task.until if u in ex["target"]), None)
            if hit is not None:
                raise TaskError(f"{where}: example {i + 1}'s target contains the stop sequence {hit!r}, so a "
                                f"generated answer can never match it; change the task's 'until'")
    if len(task.examples) < 2:
        raise TaskError(f"{where}: needs at least 2 examples (one for the search split, one for the test split)")


_KIND_KEYS = {"exact_match": {"prompt", "target"}, "multiple_choice": {"context", "choices", "answer"},
              "perplexity": {"text"}}


def infer_kind(example: Any) -> str | None:
    """The task kind an example's keys say (``prompt``+``target``, ``context``+``choices``+``answer``, ``text``)."""
    if not isinstance(example, dict):
        return None
    kinds = [k for k, keys in _KIND_KEYS.items() if keys <= example.keys()]
    return kinds[0] if len(kinds) == 1 else None


def _first_example(path: Path) -> tuple[int, Any]:
    for lineno, line in enumerate(_text(path, path.name).splitlines(), 1):
        if line.strip():
            return lineno, _json_line(path.name, lineno, line)
    raise TaskError(f"{path.name}: the file is empty")


def file_kind(path: Path, shown: str, verb: str) -> str:
    """A task file's kind, read from its first example's keys; ``shown`` names the file in the error and
    ``verb`` says how the user supplies a suite.yaml instead (write / upload)."""
    lineno, first = _first_example(path)
    kind = infer_kind(first)
    if kind is None:
        raise TaskError(f"{shown}:{lineno}: cannot tell the task kind from this example; exact_match needs "
                        f"prompt+target, multiple_choice context+choices+answer, perplexity text (or {verb} a "
                        f"suite.yaml naming each file's kind)")
    return kind
