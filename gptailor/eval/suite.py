"""A suite: the tasks a search scores on (a YAML file or a folder of JSONL), with its search/test split, and uploaded suites."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptailor.common.parsing import parse_error
from gptailor.common.paths import PathError, safe_name
from gptailor.eval.tasks import Task, TaskError, _apply_options, _text, file_kind, load_task


@dataclass
class Suite:
    name: str
    tasks: list[Task]
    path: str | None = None
    lm_eval_report: list[str] = field(default_factory=list)  # lm-eval tasks to report a chosen plan on

    def __iter__(self):
        return iter(self.tasks)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def max_fidelity(self) -> int:
        return max(len(t) for t in self.tasks)

    def split_fidelity(self, split: str = "all") -> int:
        """Examples per task of the largest task in a split: the full fidelity there."""
        return max(t.split_size(split) for t in self.tasks)


def load_suite(path: str | os.PathLike) -> Suite:
    """Read a suite YAML/JSON: ``{name, tasks: [{name, kind, path}, ...]}``."""
    import yaml

    path = Path(path).expanduser().resolve()
    if path.is_dir() and not (path / "suite.yaml").exists():
        return folder_suite(path)
    if path.is_dir():
        path = path / "suite.yaml"
    if not path.exists():
        raise TaskError(f"no suite file at {path}")
    try:
        data = yaml.safe_load(_text(path))
    except yaml.YAMLError as e:
        raise TaskError(f"cannot parse suite {parse_error(e, str(path))}") from None
    lm = data.get("lm_eval") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not (isinstance(data.get("tasks"), list) and data["tasks"] or lm):
        raise TaskError(f"{path}: a suite needs a non-empty 'tasks' list of {{name, kind, path}} "
                        f"(or an 'lm_eval' list of lm-evaluation-harness tasks)")
    tasks, seen = [], set()
    suite_opts = _suite_options(data)
    for i, t in enumerate(data.get("tasks") or []):
        if not isinstance(t, dict) or not all(k in t for k in ("kind", "path")):
            raise TaskError(f"{path}: task #{i} needs 'kind' and 'path' (and optionally 'name')")
        task = load_task(path.parent / t["path"], t["kind"], t.get("name"))
        if t.get("test_path") is not None:
            _add_test_path(task, path, t["test_path"])
        _apply_options(task, {**suite_opts, **t}, f"{path}: task {task.name!r}")
        if task.name in seen:
            raise TaskError(f"{path}: task name {task.name!r} appears twice")
        seen.add(task.name)
        tasks.append(task)
    for task in _lm_eval_tasks(path, data, suite_opts):
        if task.name in seen:
            raise TaskError(f"{path}: task name {task.name!r} appears twice; give the lm_eval entry a 'name'")
        seen.add(task.name)
        tasks.append(task)
    report = data.get("lm_eval_report") or []
    if not isinstance(report, list) or not all(isinstance(x, str) and x for x in report):
        raise TaskError(f"{path}: 'lm_eval_report' is a list of lm-eval task names")
    return Suite(str(data.get("name", path.parent.name)), tasks, str(path), report)


def _add_test_path(task: Task, suite_file: Path, ref: Any) -> None:
    """Load a task's ``test_path`` (its held-out-only examples, the same kind, relative to the suite file)."""
    if not isinstance(ref, str) or not ref:
        raise TaskError(f"{suite_file}: task {task.name!r}: 'test_path' is the name of a JSONL file of "
                        f"held-out examples, relative to the suite file")
    extra = load_task(suite_file.parent / ref, task.kind, task.name)
    task.add_test_only(extra.examples)
    task.test_path = extra.path


def _lm_eval_tasks(path: Path, data: dict[str, Any], suite_opts: dict[str, Any]) -> list[Task]:
    """The suite's ``lm_eval`` entries, built from lm-eval's own task definitions (``lm_eval_include``:
    folders of task YAMLs, relative to the suite file)."""
    entries = data.get("lm_eval")
    if entries is None:
        return []
    if not isinstance(entries, list) or not entries:
        raise TaskError(f"{path}: 'lm_eval' is a list of lm-eval task names or {{task, metric, limit, name}}")
    inc = data.get("lm_eval_include")
    inc = [inc] if isinstance(inc, str) else inc
    if inc is not None and not (isinstance(inc, list) and all(isinstance(p, str) and p for p in inc)):
        raise TaskError(f"{path}: 'lm_eval_include' is a folder (or a list of folders) of lm-eval task YAMLs")
    from gptailor.eval.lm_eval import LmEvalSpec, tasks_from_lm_eval

    specs = [LmEvalSpec.parse(e, str(path)) for e in entries]
    include = [str((path.parent / p).resolve()) for p in inc] if inc else None
    opts = {k: v for k, v in suite_opts.items() if k == "test_fraction"}
    return tasks_from_lm_eval(specs, include, defaults=opts)


def _suite_options(data: dict[str, Any]) -> dict[str, Any]:
    """Suite-wide defaults for every task (``chat_template``, ``test_fraction``)."""
    return {k: data[k] for k in ("chat_template", "test_fraction") if k in data}


def folder_suite(folder: Path) -> Suite:
    """A folder of JSONL task files and no suite.yaml: each file is a task named after it, its kind read
    from its first example's keys (as the app's upload does)."""
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise TaskError(f"{folder}: no suite.yaml and no .jsonl task files in this folder")
    tasks = []
    for p in files:
        task = load_task(p, file_kind(p, str(p), "write"))
        _apply_options(task, {}, f"{p}")
        tasks.append(task)
    return Suite(folder.name, tasks, str(folder))


def make_suite(files: list[str | os.PathLike], dest: str | os.PathLike, name: str,
               max_bytes: int | None = None, max_examples: int | None = None) -> Suite:
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
                raise TaskError(f"cannot parse {parse_error(e, suites[0].name)}") from None
            entries = data.get("tasks") if isinstance(data, dict) else None
            if not isinstance(entries, list) or not entries:
                raise TaskError(f"{suites[0].name}: a suite needs a non-empty 'tasks' list of {{name, kind, path}}")
            for i, t in enumerate(entries):
                t = t if isinstance(t, dict) else {}
                for ref in [t.get("path")] + ([t["test_path"]] if "test_path" in t else []):
                    if not isinstance(ref, str) or ref not in names:
                        raise TaskError(f"{suites[0].name}: task #{i} names file {ref!r}, which was not uploaded "
                                        f"(uploaded: {', '.join(names) or 'none'}); upload it beside the suite file")
        else:
            if not tasks:
                raise TaskError("no task files given: upload one JSONL file per task")
            entries = []
            for p in tasks:
                entries.append({"name": p.stem, "kind": file_kind(p, p.name, "upload"), "path": p.name})
        (staging / "suite.yaml").write_text(yaml.safe_dump({"name": name, "tasks": entries}, sort_keys=False))
        try:
            staged = load_suite(staging / "suite.yaml")
        except TaskError as e:
            raise TaskError(str(e).replace(f"{staging.resolve()}{os.sep}", "").replace(f"{staging}{os.sep}", ""))
        if max_examples:
            big = [t for t in staged if len(t) > max_examples]
            if big:
                raise TaskError(f"task {big[0].name!r} has {len(big[0])} examples; this app takes at most "
                                f"{max_examples} per task, so that scoring stays interactive: upload a sample of it")
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_suite(dest / "suite.yaml")
