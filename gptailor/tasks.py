"""Calibration tasks: scored examples in JSONL, grouped into suites, with nested fidelity subsets.

Three kinds (one JSON object per line):
- ``exact_match``:     ``{"prompt": ..., "target": ...}``  -- teacher-forced, one forward pass scores it;
- ``multiple_choice``: ``{"context": ..., "choices": [...], "answer": <index>}``  -- log-likelihood;
- ``perplexity``:      ``{"text": ...}``.

A suite is a YAML file listing tasks (name, kind, path relative to the suite file).
Fidelity n means "the first n examples of a fixed shuffle" of each task, so a higher fidelity
always contains every lower one (what multi-fidelity search assumes).
"""
from __future__ import annotations

import json
import os
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASK_KINDS = ("exact_match", "multiple_choice", "perplexity")


class TaskError(ValueError):
    """A malformed task or suite file; the message gives the file, the line and what is wrong."""


@dataclass
class Task:
    name: str
    kind: str
    examples: list[dict[str, Any]]
    path: str | None = None
    _order: list[int] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.examples)

    def order(self) -> list[int]:
        """A fixed shuffle seeded by the task's name, so subsets do not depend on file order tricks."""
        if self._order is None:
            idx = list(range(len(self.examples)))
            random.Random(zlib.crc32(self.name.encode())).shuffle(idx)
            self._order = idx
        return self._order

    def subset(self, n: int | None) -> list[dict[str, Any]]:
        """The first ``n`` examples of the fixed shuffle (all of them for None or n >= len)."""
        if n is None or n >= len(self.examples):
            return [self.examples[i] for i in self.order()]
        if n <= 0:
            raise TaskError(f"task {self.name!r}: fidelity must be a positive number of examples, got {n}")
        return [self.examples[i] for i in self.order()[:n]]


@dataclass
class Suite:
    name: str
    tasks: list[Task]
    path: str | None = None

    def __iter__(self):
        return iter(self.tasks)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def max_fidelity(self) -> int:
        return max(len(t) for t in self.tasks)


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
        if not isinstance(obj.get("context"), str):
            return "needs a string 'context'"
        ch = obj.get("choices")
        if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) and c for c in ch):
            return "'choices' must be a list of at least two non-empty strings"
        a = obj.get("answer")
        if not isinstance(a, int) or isinstance(a, bool) or not 0 <= a < len(ch):
            return f"'answer' must be the index of the right choice (0..{len(ch) - 1}), got {a!r}"
    elif kind == "perplexity":
        if not isinstance(obj.get("text"), str) or not obj["text"]:
            return "needs a non-empty string 'text'"
    return None


def load_task(path: str | os.PathLike, kind: str, name: str | None = None) -> Task:
    path = Path(path)
    name = name or path.stem
    if kind not in TASK_KINDS:
        raise TaskError(f"task {name!r}: unknown kind {kind!r}; use one of {', '.join(TASK_KINDS)}")
    if not path.exists():
        raise TaskError(f"task {name!r}: file {path} does not exist")
    examples = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            problem = _check_example(kind, obj)
            if problem:
                raise TaskError(f"{path}:{lineno}: {kind} example {problem}")
            examples.append(obj)
    if not examples:
        raise TaskError(f"{path}: task {name!r} has no examples")
    return Task(name, kind, examples, str(path))


def load_suite(path: str | os.PathLike) -> Suite:
    """Read a suite YAML/JSON: ``{name, tasks: [{name, kind, path}, ...]}``."""
    import yaml

    path = Path(path).expanduser().resolve()
    if path.is_dir():
        path = path / "suite.yaml"
    if not path.exists():
        raise TaskError(f"no suite file at {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise TaskError(f"{path}: cannot parse suite: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list) or not data["tasks"]:
        raise TaskError(f"{path}: a suite needs a non-empty 'tasks' list of {{name, kind, path}}")
    tasks, seen = [], set()
    for i, t in enumerate(data["tasks"]):
        if not isinstance(t, dict) or not all(k in t for k in ("kind", "path")):
            raise TaskError(f"{path}: task #{i} needs 'kind' and 'path' (and optionally 'name')")
        task = load_task(path.parent / t["path"], t["kind"], t.get("name"))
        if task.name in seen:
            raise TaskError(f"{path}: task name {task.name!r} appears twice")
        seen.add(task.name)
        tasks.append(task)
    return Suite(str(data.get("name", path.parent.name)), tasks, str(path))
