"""lm-evaluation-harness tasks: reported as lm-eval computes them, and searched on with our fast scorer.

Two routes, one source of truth (lm-eval's own task definitions):
- :func:`run_lm_eval` runs lm-eval itself on a ready (stitched) model in memory -- ``HFLM(pretrained=model,
  tokenizer=...)`` -- and returns lm-eval's metrics (acc, acc_norm, exact_match and their stderr). This is
  the number to set beside a paper's table.
- :func:`tasks_from_lm_eval` builds lm-eval's task objects once and turns the requests lm-eval would send
  (its prompts with zero few-shot, ``target_delimiter`` + choices, gold index, ``until`` stops) into the
  project's :class:`~gptailor.eval.tasks.Task` examples, so the batched scorer in ``gptailor.eval.evaluator`` scores
  them hundreds of times per search at a fraction of lm-eval's cost, with the same per-doc results.

Offline and honest: datasets come from the local Hugging Face cache or from task YAMLs over local files
(``dataset_path: json`` + ``dataset_kwargs: {data_files: ...}``, found through ``include_path``). Every Hub
access is forced offline while lm-eval builds a task, so a missing dataset is a one-line :class:`LmEvalError`
naming the task and how to make it available, never a network-retry hang. ``lm_eval`` is imported lazily:
the rest of the engine works without it.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from gptailor.common.progress import Progress, listening, tick
from gptailor.eval.metrics import accuracy_metrics, metrics_for
from gptailor.eval.tasks import Task, TaskError, _apply_options

LM_EVAL_VERSION = "0.4.13"
_SPEC_KEYS = {"task", "name", "metric", "limit", "test_fraction"}


class LmEvalError(TaskError):
    """An lm-eval task that cannot be built or run here; one line, naming the task and the way out."""


@dataclass
class LmEvalSpec:
    """One lm-eval task in a suite: lm-eval's task (or group) name, the objective metric, how many of its
    docs (lm-eval's ``--limit``: the first ``limit`` docs of each of its tasks), and our task name."""

    task: str
    metric: str | None = None
    limit: int | None = None
    name: str | None = None
    test_fraction: float | None = None

    @classmethod
    def parse(cls, entry: Any, where: str) -> "LmEvalSpec":
        if isinstance(entry, str):
            entry = {"task": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("task"), str) or not entry["task"]:
            raise TaskError(f"{where}: each lm_eval entry is a task name or {{task: NAME, metric, limit, name}}")
        unknown = set(entry) - _SPEC_KEYS
        if unknown:
            raise TaskError(f"{where}: lm_eval task {entry['task']!r} has unknown key(s) {', '.join(sorted(unknown))}"
                            f"; use {', '.join(sorted(_SPEC_KEYS))}")
        lim = entry.get("limit")
        if lim is not None and (not isinstance(lim, int) or isinstance(lim, bool) or lim < 2):
            raise TaskError(f"{where}: lm_eval task {entry['task']!r}: 'limit' must be a whole number >= 2")
        return cls(entry["task"], entry.get("metric"), lim, entry.get("name"), entry.get("test_fraction"))


# ----------------------------------------------------------------------------- lm-eval, lazily and offline
def _lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError:
        raise LmEvalError(f"lm-evaluation-harness is not installed; pip install lm_eval=={LM_EVAL_VERSION}") from None
    for name in ("lm-eval", "lm_eval"):  # its per-task notices are for its own CLI; errors still show
        logging.getLogger(name).setLevel(logging.ERROR)
    import lm_eval

    return lm_eval


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Every Hugging Face Hub access offline for the duration (both libraries read the flag at import,
    so the environment variables alone would come too late): a dataset not in the cache fails at once."""
    import datasets.config as dcfg
    import huggingface_hub.constants as hcfg

    saved = (hcfg.HF_HUB_OFFLINE, dcfg.HF_HUB_OFFLINE, getattr(dcfg, "HF_DATASETS_OFFLINE", None))
    env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    hcfg.HF_HUB_OFFLINE = dcfg.HF_HUB_OFFLINE = dcfg.HF_DATASETS_OFFLINE = True
    os.environ.update({k: "1" for k in env})
    try:
        yield
    finally:
        hcfg.HF_HUB_OFFLINE, dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE = saved
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _includes(include_path: str | os.PathLike | Sequence[str | os.PathLike] | None) -> tuple[str, ...]:
    if include_path is None:
        return ()
    paths = [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path)
    out = []
    for p in paths:
        p = Path(p).expanduser().resolve()
        if not p.exists():
            raise LmEvalError(f"lm-eval include path {p} does not exist; give a folder of lm-eval task YAMLs")
        out.append(str(p))
    return tuple(out)


_MANAGERS: dict[tuple, Any] = {}
_BUILT: dict[tuple, list] = {}


def task_manager(names: Sequence[str], include: tuple[str, ...] = ()):
    """lm-eval's TaskManager: only the include folders when they define every name (indexing lm-eval's
    own 14k task YAMLs takes seconds), else lm-eval's tasks plus the include folders. Kept per process."""
    from lm_eval.tasks import TaskManager

    if include:
        key = (include, False)
        if key not in _MANAGERS:
            _MANAGERS[key] = TaskManager(include_path=list(include), include_defaults=False)
        if all(n in _MANAGERS[key].all_tasks for n in names):
            return _MANAGERS[key]
    key = (include, True)
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=list(include) or None)
    return _MANAGERS[key]


def _how_to_get(tm, name: str) -> str:
    entry = tm.task_index.get(name)
    cfg = (entry.cfg or {}) if entry is not None else {}
    path, sub = cfg.get("dataset_path"), cfg.get("dataset_name")
    if path and path != "json":
        load = f"datasets.load_dataset({path!r}{f', {sub!r}' if sub else ''})"
        return (f"cache it once online (python -c \"import datasets; {load}\") or point a task YAML at local "
                f"files (dataset_path: json) and pass its folder as the include path")
    return ("cache its dataset once online or point a task YAML at local files (dataset_path: json, "
            "dataset_kwargs: {data_files: ...}) and pass its folder as the include path")


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:300]


def build_tasks(name: str, include_path=None) -> list:
    """lm-eval's own objects for one task or group name (``TaskManager.load``), built once per process."""
    _lm_eval()
    include = _includes(include_path)
    key = (name, include)
    if key in _BUILT:
        return _BUILT[key]
    tm = task_manager([name], include)
    if name not in tm.all_tasks:
        where = f" or in {', '.join(include)}" if include else ""
        raise LmEvalError(f"lm-eval task {name!r} is not one of lm-eval {LM_EVAL_VERSION}'s tasks{where}; check the "
                          f"name (lm_eval ls tasks) or write a task YAML and pass its folder as the include path")
    try:
        with hub_offline():
            loaded = tm.load([name])
    except Exception as e:  # lm-eval reports a missing dataset in many shapes (ConnectionError, FileNotFound...)
        raise LmEvalError(f"lm-eval task {name!r}: its dataset is not available offline ({_first_line(e)}); "
                          f"{_how_to_get(tm, name)}") from None
    built = list(loaded["groups"].values())[:1] if name in loaded["groups"] else list(loaded["tasks"].values())
    _BUILT[key] = built
    return built


def leaf_tasks(name: str, include_path=None) -> list:
    """The single tasks under a name (a group's members, recursively)."""
    built = build_tasks(name, include_path)
    from lm_eval.api.group import Group

    out = []
    for obj in built:
        out += obj.get_all_tasks() if isinstance(obj, Group) else [obj]
    return out


def write_local_task(out: Path, name: str, docs: Sequence[dict[str, Any]], **config: Any) -> Path:
    """One lm-eval task over a local JSON file, the offline route lm-eval itself supports (``dataset_path:
    json`` + ``data_files``): writes ``out/<name>.json`` (the docs, one per line) and ``out/<name>.yaml``
    (``config`` is the rest of lm-eval's task config: output_type, doc_to_text, ...). Returns the YAML."""
    import json

    import yaml

    out.mkdir(parents=True, exist_ok=True)
    data = (out / f"{name}.json").resolve()
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    spec = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", **config}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- lm-eval docs -> our examples
def _lm_requests(task, doc_id: int, doc: dict) -> list:
    """The Instances lm-eval itself builds for one doc (as ``Task.build_all_requests``), zero-shot."""
    ctx = task.fewshot_context(doc, num_fewshot=0, gen_prefix=task.doc_to_prefix(doc))
    inst = task.construct_requests(doc=doc, ctx=ctx, metadata=(task.task_name, doc_id, 1))
    return inst if isinstance(inst, list) else [inst]


def _move_spaces(ctx: str, cont: str) -> tuple[str, str]:
    """lm-eval's ``_encode_pair``: a context's trailing whitespace is scored as part of the continuation."""
    n = len(ctx) - len(ctx.rstrip())
    return (ctx[:-n], ctx[-n:] + cont) if n else (ctx, cont)


def _gold_index(task, doc: dict, choices: list[str], where: str) -> int:
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str) and not task.multiple_input:
        gold = choices.index(gold) if gold in choices else -1
    if isinstance(gold, list) or task.multiple_target:
        raise LmEvalError(f"{where}: several gold answers per doc are not supported by the fast scorer; "
                          f"report it with run_lm_eval (--lm-eval) instead")
    if not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise LmEvalError(f"{where}: gold answer {gold!r} is not a choice index (0..{len(choices) - 1})")
    return gold


def _mc_example(task, doc_id: int, doc: dict, where: str) -> dict[str, Any]:
    pairs = [_move_spaces(*inst.arguments[:2]) for inst in _lm_requests(task, doc_id, doc)]
    choices = task.doc_to_choice(doc)
    ctxs = [c for c, _ in pairs]
    return {"context": ctxs[0] if len(set(ctxs)) == 1 else ctxs, "choices": [c for _, c in pairs],
            "answer": _gold_index(task, doc, choices, where), "lengths": [float(len(c)) for c in choices],
            "doc_id": doc_id}


def _check_generation(task, where: str) -> None:
    """Only what the teacher-forced exact match reproduces: greedy, no filters, plain exact_match."""
    cfg = task.config
    metrics = set(getattr(task, "_metric_fn_list", {}))
    kwargs = getattr(task, "_metric_fn_kwargs", {}).get("exact_match", {})
    problem = None
    if metrics != {"exact_match"}:
        problem = f"metrics {sorted(metrics)} (only exact_match is scored fast)"
    elif any(kwargs.get(k) for k in ("ignore_case", "ignore_punctuation", "ignore_numbers", "regexes_to_ignore")):
        problem = "exact_match options (ignore_case, regexes...)"
    elif cfg.filter_list:
        problem = "answer filters (filter_list)"
    elif (cfg.generation_kwargs or {}).get("do_sample"):
        problem = "sampled generation"
    if problem:
        raise LmEvalError(f"{where}: its {problem} are not supported by the fast scorer; report it with "
                          f"run_lm_eval (--lm-eval) instead")


def _em_example(task, doc_id: int, doc: dict) -> tuple[dict[str, Any], list[str]]:
    (inst,) = _lm_requests(task, doc_id, doc)
    ctx, gen = inst.arguments[:2]
    target = task.doc_to_target(doc)
    if task.config.doc_to_choice is not None:
        target = task.doc_to_choice(doc)[target]
    until = gen.get("until") or []
    return {"prompt": ctx, "target": str(target), "doc_id": doc_id}, [until] if isinstance(until, str) else list(until)


KINDS = {"multiple_choice": "multiple_choice", "generate_until": "exact_match", "loglikelihood_rolling": "perplexity"}


def task_examples(task, limit: int | None = None) -> tuple[str, list[dict[str, Any]], list[str]]:
    """One lm-eval task's first ``limit`` eval docs as our examples: (kind, examples, until)."""
    where = f"lm-eval task {task.task_name!r}"
    out_type = task.config.output_type
    if out_type not in KINDS:
        raise LmEvalError(f"{where}: output type {out_type!r} is not scored by the fast scorer "
                          f"(it scores {', '.join(KINDS)}); report it with run_lm_eval (--lm-eval) instead")
    if out_type == "generate_until":
        _check_generation(task, where)
    examples, until = [], ["\n"]
    for doc_id, doc in itertools.islice(enumerate(task.eval_docs), limit):
        if out_type == "multiple_choice":
            examples.append(_mc_example(task, doc_id, doc, where))
        elif out_type == "generate_until":
            ex, until = _em_example(task, doc_id, doc)
            examples.append(ex)
        else:
            examples.append({"text": task.doc_to_target(doc), "doc_id": doc_id})
    return KINDS[out_type], examples, until


def to_task(spec: LmEvalSpec, include_path=None, defaults: dict[str, Any] | None = None) -> Task:
    """One lm-eval task or group as our Task (a group's docs pooled: lm-eval's size-weighted mean)."""
    where = f"lm-eval task {spec.task!r}"
    kinds, examples, untils = set(), [], []
    for leaf in leaf_tasks(spec.task, include_path):
        try:
            kind, ex, until = task_examples(leaf, spec.limit)
        except LmEvalError:
            raise
        except Exception as e:  # a doc_to_text / process_docs function of the task failing on a doc
            raise LmEvalError(f"{where}: lm-eval could not build its prompts ({_first_line(e)})") from None
        kinds.add(kind)
        untils.append(until)
        examples += [{**x, "lm_eval_task": leaf.task_name} for x in ex]
    if len(kinds) != 1 or any(u != untils[0] for u in untils):
        raise LmEvalError(f"{where}: its subtasks mix output types or stop sequences; list them one by one")
    if not examples:
        raise LmEvalError(f"{where}: lm-eval built no docs")
    kind = kinds.pop()
    if spec.metric is not None:
        allowed = metrics_for(kind)
        if spec.metric not in allowed:
            raise LmEvalError(f"{where}: metric {spec.metric!r} is not one of {', '.join(allowed)} for this task")
    task = Task(spec.name or spec.task, kind, examples, f"lm_eval:{spec.task}")
    opts = dict(defaults or {})
    opts.update({"metric": spec.metric, **({"until": untils[0]} if kind == "exact_match" else {})})
    if spec.test_fraction is not None:
        opts["test_fraction"] = spec.test_fraction
    _apply_options(task, opts, where)
    return task


def tasks_from_lm_eval(names: Sequence[str | LmEvalSpec | dict], include_path=None, limit: int | None = None,
                       defaults: dict[str, Any] | None = None) -> list[Task]:
    """lm-eval tasks as the project's Tasks, built once (lm-eval's prompts, choices, golds and stops kept).

    ``names``: task or group names, or :class:`LmEvalSpec` / ``{task, metric, limit, name}``; ``limit``
    is the default docs per lm-eval task; ``defaults``: suite-wide task options (``test_fraction``)."""
    tasks = []
    for n in names:
        spec = n if isinstance(n, LmEvalSpec) else LmEvalSpec.parse(n, "lm_eval")
        if spec.limit is None and limit is not None:
            spec = LmEvalSpec(spec.task, spec.metric, limit, spec.name, spec.test_fraction)
        tasks.append(to_task(spec, include_path, defaults))
    return tasks


# ----------------------------------------------------------------------------- lm-eval's own run, in memory
@dataclass
class LmEvalRun:
    """lm-eval's results for one model: task -> {metric: value, metric_stderr: value, n: docs}."""

    metrics: dict[str, dict[str, float]]
    seconds: float
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)


def _parse_results(results: dict[str, Any], leaves: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """lm-eval's ``results`` (``"acc,none"``, ``"acc_stderr,none"``) as {metric: value}, plus ``n`` (docs)."""
    out: dict[str, dict[str, float]] = {}
    counts = results.get("n-samples", {})
    for name, leaf_names in leaves.items():
        row: dict[str, float] = {}
        for key, v in results.get("results", {}).get(name, {}).items():
            if "," not in key or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            metric, filt = key.split(",", 1)
            row[metric if filt == "none" else f"{metric},{filt}"] = float(v)
        row["n"] = float(sum(counts.get(t, {}).get("effective", 0) for t in leaf_names))
        out[name] = row
    return out


_HFLM: type | None = None


def hflm_class() -> type:
    """lm-eval's HF wrapper (``HFLM``) with the engine's ``tick`` before each batch it runs (each forward
    and each batched generate), so a listener sees lm-eval working and a Stop ends its run within one
    batch instead of after the last model. Subclassing the wrapper is lm-eval's own extension point."""
    global _HFLM
    if _HFLM is None:
        from lm_eval.models.huggingface import HFLM

        class TickingHFLM(HFLM):
            def _model_call(self, inps, attn_mask=None, labels=None):
                tick()
                return super()._model_call(inps, attn_mask, labels)

            def _model_generate(self, context, max_length, stop, **generation_kwargs):
                tick()
                return super()._model_generate(context, max_length, stop, **generation_kwargs)

        _HFLM = TickingHFLM
    return _HFLM


def run_lm_eval(model, tokenizer, tasks: Sequence[str], limit: int | None = None, include_path=None,
                batch_size: int = 16, log_samples: bool = False, bootstrap_iters: int = 1000,
                progress: Progress | None = None) -> LmEvalRun:
    """Run lm-eval on a ready model in memory (no checkpoint written) and return its own metrics.

    ``tasks`` are lm-eval task or group names (datasets from the local cache or task YAMLs under
    ``include_path``); ``limit`` is lm-eval's ``--limit`` (docs per task). Zero-shot, as the suites score.
    ``progress`` (default: the listener in force) gets a tick per lm-eval batch, and may stop it there."""
    lm_eval = _lm_eval()
    if not tasks:
        raise LmEvalError("no lm-eval tasks given; name at least one (e.g. arc_easy)")
    objs, leaves = [], {}
    for name in tasks:
        objs += build_tasks(name, include_path)
        leaves[name] = [t.task_name for t in leaf_tasks(name, include_path)]
    lm = hflm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    t0 = time.perf_counter()
    with hub_offline(), listening(progress):
        # seeds None: zero-shot greedy needs none, and lm-eval would otherwise reseed the caller's global RNGs
        res = lm_eval.simple_evaluate(lm, tasks=objs, num_fewshot=0, limit=limit, log_samples=log_samples,
                                      bootstrap_iters=bootstrap_iters, random_seed=None, numpy_random_seed=None,
                                      torch_random_seed=None,
                                      task_manager=task_manager(tasks, _includes(include_path)))
    seconds = time.perf_counter() - t0
    samples = {k: v for k, v in (res.get("samples") or {}).items()} if log_samples else {}
    return LmEvalRun(_parse_results(res, leaves), seconds, samples)


# ----------------------------------------------------------------------------- a plan beside its family
@dataclass
class LmEvalReport:
    """lm-eval's metrics for a plan and the family members it came from: row label -> task -> metrics."""

    plan: str
    tasks: list[str]
    limit: int | None
    rows: dict[str, dict[str, dict[str, float]]]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LmEvalReport":
        return cls(**{k: d[k] for k in ("plan", "tasks", "limit", "rows", "seconds") if k in d})

    def _cells(self) -> list[tuple[str, str]]:
        """(task, metric) columns: lm-eval's acc / acc_norm / exact_match that any row reports."""
        cols = []
        for t in self.tasks:
            for m in accuracy_metrics():
                if any(m in r.get(t, {}) for r in self.rows.values()):
                    cols.append((t, m))
        return cols

    def _cell(self, label: str, t: str, m: str) -> str:
        r = self.rows[label].get(t, {})
        if m not in r:
            return "-"
        se = r.get(f"{m}_stderr")
        return f"{r[m]:.4f}" + (f" ± {se:.4f}" if se is not None else "")

    def table(self) -> str:
        """Plain text for terminals: one row per model, one column per (task, metric)."""
        head, rows = self.grid()
        widths = [max(len(str(r[k])) for r in [head, *rows]) for k in range(len(head))]
        lines = ["  ".join(f"{c:<{w}}" if k == 0 else f"{c:>{w}}" for k, (c, w) in enumerate(zip(r, widths)))
                 for r in [head, *rows]]  # columns as wide as their longest cell: names never run together
        n = {t: int(next(iter(self.rows.values())).get(t, {}).get("n", 0)) for t in self.tasks}
        lines.append(f"lm-eval {LM_EVAL_VERSION}, zero-shot, docs per task: "
                     + ", ".join(f"{t} {v}" for t, v in n.items()) + " (value ± stderr)")
        return "\n".join(lines)

    def grid(self) -> tuple[list[str], list[list[str]]]:
        """Headers and rows (one per model; cells 'value ± stderr'): the model card's and the app's table."""
        cols = self._cells()
        return (["model", *(f"{t} {m}" for t, m in cols)],
                [[label, *(self._cell(label, t, m) for t, m in cols)] for label in self.rows])

    def markdown(self) -> str:
        """The model card's table."""
        head, rows = self.grid()
        lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)


def lm_eval_report(family, plan, tasks: Sequence[str], limit: int | None = None, include_path=None,
                   members: bool = True, batch_size: int = 16, stitcher=None,
                   progress: Progress | None = None) -> LmEvalReport:
    """lm-eval's metrics for ``plan`` (stitched in memory) and, with ``members``, for every family member.
    ``progress`` (default: the listener in force) gets a tick per model (with its label) and per batch."""
    from gptailor.plan import Plan
    from gptailor.stitch import Stitcher

    stitcher = stitcher or Stitcher(family)
    tasks = list(tasks)
    for name in tasks:  # fail fast (one line) before any model runs
        build_tasks(name, include_path)
    models = [("plan", plan, None)]
    if members:
        models += [(m, Plan.identity(family.n_layers, m, family.name), m) for m in family.member_names]
    rows, secs = {}, {}
    with listening(progress):
        for k, (label, p, shared) in enumerate(models):
            tick(f"lm-eval on {label} ({k + 1} of {len(models)})", k, len(models))
            model = stitcher.build(p, shared_from=shared) if shared else stitcher.build(p)
            run = run_lm_eval(model, family.tokenizer, tasks, limit, include_path, batch_size)
            rows[label], secs[label] = run.metrics, run.seconds
    return LmEvalReport(plan.to_text(), tasks, limit, rows, secs)
