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

from .paths import PathError, safe_name

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


def load_suite(path: str | os.PathLike) -> Suite:
    """Read a suite YAML/JSON: ``{name, tasks: [{name, kind, path}, ...]}``."""
    import yaml

    path = Path(path).expanduser().resolve()
    if path.is_dir():
        path = path / "suite.yaml"
    if not path.exists():
        raise TaskError(f"no suite file at {path}")
    try:
        data = yaml.safe_load(_text(path))
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


def make_suite(files: list[str | os.PathLike], dest: str | os.PathLike, name: str,
               max_bytes: int | None = None) -> Suite:
    """Turn task files into a stored suite folder ``dest`` (``suite.yaml`` + the JSONL files) and load it.

    ``files`` are JSONL task files, optionally with one ``suite.yaml`` naming them (for task names and kinds);
    without one, each file is a task named after the file, its kind read from its first example's keys.
    Everything is checked in a staging folder first, so a bad upload leaves nothing behind and never
    replaces a stored suite. Errors name the uploaded file (not a temp path) and the line.
    """
    import shutil
    import tempfile

    import yaml

    try:
        safe_name("suite", name)
        paths = [Path(f) for f in files]
        for p in paths:
            safe_name("task file", p.name)
    except PathError as e:
        raise TaskError(str(e)) from None
    if not paths:
        raise TaskError("no task files given: upload one JSONL file per task (and optionally a suite.yaml)")
    dest = Path(dest)
    if dest.exists():
        raise TaskError(f"a suite named {name!r} is already stored; pick another name")
    total = sum(p.stat().st_size for p in paths)
    if max_bytes is not None and total > max_bytes:
        raise TaskError(f"the task files hold {total / 1e6:.1f} MB; this app takes at most {max_bytes / 1e6:.1f} MB")
    suites = [p for p in paths if p.suffix.lower() in (".yaml", ".yml")]
    tasks = [p for p in paths if p.suffix.lower() in (".jsonl", ".json")]
    other = [p.name for p in paths if p not in suites and p not in tasks]
    if other:
        raise TaskError(f"expected JSONL task files (.jsonl) and at most one suite.yaml, got {', '.join(other)}")
    if len(suites) > 1:
        raise TaskError(f"expected JSONL task files (.jsonl) and at most one suite.yaml, got "
                        f"{', '.join(p.name for p in suites)}")
    names = [p.name for p in tasks]
    if len(set(names)) != len(names):
        raise TaskError("two task files have the same name; rename one")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        for p in tasks:
            shutil.copyfile(p, staging / p.name)
        if suites:
            try:
                data = yaml.safe_load(_text(suites[0], suites[0].name))
            except yaml.YAMLError as e:
                raise TaskError(f"{suites[0].name}: cannot parse: {e}") from None
            entries = data.get("tasks") if isinstance(data, dict) else None
            if not isinstance(entries, list) or not entries:
                raise TaskError(f"{suites[0].name}: a suite needs a non-empty 'tasks' list of {{name, kind, path}}")
            for i, t in enumerate(entries):
                ref = t.get("path") if isinstance(t, dict) else None
                if not isinstance(ref, str) or ref not in names:
                    raise TaskError(f"{suites[0].name}: task #{i} names file {ref!r}, which was not uploaded "
                                    f"(uploaded: {', '.join(names) or 'none'}); upload it beside the suite file")
        else:
            if not tasks:
                raise TaskError("no task files given: upload one JSONL file per task")
            entries = []
            for p in tasks:
                lineno, first = _first_example(p)
                kind = infer_kind(first)
                if kind is None:
                    raise TaskError(f"{p.name}:{lineno}: cannot tell the task kind from this example; exact_match "
                                    f"needs prompt+target, multiple_choice context+choices+answer, perplexity text "
                                    f"(or upload a suite.yaml naming each file's kind)")
                entries.append({"name": p.stem, "kind": kind, "path": p.name})
        (staging / "suite.yaml").write_text(yaml.safe_dump({"name": name, "tasks": entries}, sort_keys=False))
        try:
            load_suite(staging / "suite.yaml")
        except TaskError as e:
            raise TaskError(str(e).replace(f"{staging.resolve()}{os.sep}", "").replace(f"{staging}{os.sep}", ""))
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_suite(dest / "suite.yaml")
