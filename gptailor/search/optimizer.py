"""SMAC search over layer plans (multi-fidelity by default), and random search on the same space
(``method="evolution"``: the same objective, trials and resume, driven by ``gptailor.search.evolution``).

Tailoring is a zero-order problem (the paper): SMAC proposes a configuration, we decode it into a
plan, stitch and score it on ``budget`` examples per task, and tell SMAC ``1 - retention``. The
multi-fidelity facade (Hyperband) spends few examples on bad plans and the whole suite on the
promising ones. We drive SMAC through its own ``optimize()`` loop with callbacks, so the same code
runs sequentially or on Dask workers, and every trial is handed to ``on_trial`` *before* SMAC is
told (a crash after that loses nothing that was reported).

A trial's identity is (canonical plan key, exact budget): the budget SMAC asked for is kept as is
(and the examples per task it maps to), and a result cache by (plan key, fidelity) means no pair is
scored twice in a study -- a repeat is served from the cache and marked ``cached``.

The objective is fixed for the whole study: retention against references computed once on the full
search split (never re-chosen per fidelity), on the suite's search split only; reports use the
test split. ``objective`` says retention of what: ``accuracy`` (each task's metric: exact match, acc,
perplexity) or ``loglik`` (its continuous proxy from the same forward: the target's per-token
log-likelihood, the gold choice's probability among the choices, perplexity), which is far less noisy on
a few examples. Every trial still records accuracy and both retention definitions.

Resume: pass the earlier trials as ``previous``; they are re-told to a fresh SMAC with their exact
budgets (so its Hyperband recognises them), which then goes on until ``n_trials`` trials exist in all.
A trial cut short by its worker stopping (status ``cut``) is neither told nor counted: SMAC proposes
it again, and the study still ends with ``n_trials`` trials that ran to their end.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from typing import Any, Callable, Iterable, NamedTuple

from ConfigSpace import Configuration

from gptailor.eval.divergence import DEFAULT_TOPK
from gptailor.eval.results import EvalResult, References, applicable_definition
from gptailor.eval.evaluator import Evaluator
from gptailor.family.family import Family
from gptailor.plan import Plan
from gptailor.common.progress import Phase, Progress, QUIET, Stopped, listening
from gptailor.search.fidelity import fidelity_of, rungs, search_fidelities
from gptailor.search.space import Budget, BudgetError, PlanSpace, make_space
from gptailor.search.seeds import seed_plans
from gptailor.search.settings import SearchSettings
from gptailor.search.trials import CRASH_COST, CUT, SearchResult, TrialRecord, counted, incumbent, pareto_front


class Seed(NamedTuple):
    """A seeded plan of the initial design: its configuration, and the plan the space decodes it to."""

    config: Configuration
    plan: Plan


# ----------------------------------------------------------------------------- the objective
_CACHE: dict[tuple, Evaluator] = {}


class Objective:
    """SMAC's target function. Picklable for Dask: workers rebuild the evaluator from the recipe."""

    def __init__(self, evaluator: Evaluator, space: PlanSpace, max_fidelity: int, constraint: str,
                 tasks: list[str] | None = None, references: References | None = None,
                 definition: str | None = None, cache: dict[tuple[str, int], dict] | None = None,
                 objective: str = "accuracy") -> None:
        self.evaluator = evaluator
        self.space = space
        self.max_fidelity = max_fidelity
        self.constraint = constraint
        self.tasks = tasks  # per-task objectives (ParEGO) when given
        self.references = references
        self.definition = definition
        self.objective = objective
        self.cache = cache if cache is not None else {}  # (plan key, fidelity) -> result dict
        self._recipe = (evaluator.family.spec, str(evaluator.family.device), evaluator.suite.path,
                        space.name, space.n_remove, space.seed, space.options(), evaluator.batcher.edges)

    def __getstate__(self) -> dict[str, Any]:
        return {"max_fidelity": self.max_fidelity, "constraint": self.constraint, "tasks": self.tasks,
                "_recipe": self._recipe, "references": self.references, "definition": self.definition,
                "cache": dict(self.cache), "objective": self.objective}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        spec, device, suite_path, space_name, n_remove, seed, options, edges = self._recipe
        key = (repr(spec), device, suite_path, edges)
        if key not in _CACHE:
            from gptailor.eval.suite import load_suite

            _CACHE[key] = Evaluator(Family.from_spec(spec, device=device), load_suite(suite_path), split="search")
            _CACHE[key].align_batches(edges)  # batched as the main process batches (the same scores, to the bit)
        self.evaluator = _CACHE[key]
        self.space = make_space(space_name, self.evaluator.family, n_remove, seed, **options)

    def train(self, config: Configuration, seed: int = 0, budget: float | None = None) -> tuple[float, dict]:
        """SMAC's ``train(config, seed, budget)`` convention; a bound method so SMAC can inspect it."""
        fidelity = fidelity_of(budget, self.max_fidelity)
        plan = self.space.decode(config)
        info = {"plan": plan.to_dict(), "fidelity": fidelity, "budget": budget}
        if self.constraint == "reject" and not self.space.valid(config):
            return self._crash(), {**info, "rejected": True}
        key = (plan.key(), fidelity)
        if key in self.cache:  # the same model at the same fidelity: never scored twice
            result = EvalResult.from_dict(self.cache[key])
            return costs_of(result, self.tasks, self.objective), {**info, "result": self.cache[key], "cached": True}
        kw = {"kl_topk": DEFAULT_TOPK} if self.objective == "kl" else {}  # the divergence, in the same forward
        try:
            result = self.evaluator.evaluate(plan, fidelity, split="search", references=self.references,
                                             definition=self.definition, **kw)
        except Stopped:  # the listener's tick stopped it: not a crash, the search ends here (the recorder)
            return self._crash(), {**info, "stopped": True}
        self.cache[key] = result.to_dict()
        return costs_of(result, self.tasks, self.objective), {**info, "result": self.cache[key]}

    def _crash(self) -> float | list[float]:
        return CRASH_COST if not self.tasks else [CRASH_COST] * len(self.tasks)


def seed_cap(n_trials: int, n_init: int = 0) -> int:
    """How many seeded plans SMAC's initial design takes, in ``seed_plans``' order: half the trials
    less SMAC's own initial configurations. Measured (docs/benchmarks.md, "seed share"): a quarter cap left
    the demo's best seed (the 18th) out and ended lower (0.271 against 0.280 on the search split), so the
    seeds keep their half until they are ordered by how good they are."""
    return max(0, n_trials // 2 - n_init)


def costs_of(result: EvalResult | None, tasks: list[str] | None, objective: str = "accuracy"
             ) -> float | list[float]:
    """What SMAC minimises: 1 - retention, or 1 - retention of each task (ParEGO), of the ``objective``
    (``accuracy``: the tasks' metrics; ``loglik``: their continuous proxies); for ``kl``, 1 - exp(-KL) of
    the mean (or each task's) divergence to the tasks' reference members, bounded like the others. A result without the
    objective's values (a trial stored before there were proxies) costs what a crash does."""
    if result is None:
        return CRASH_COST if not tasks else [CRASH_COST] * len(tasks)
    if objective == "kl":  # 1 - exp(-KL): the same order as the divergence, 0 at the reference, below a crash's 1
        kl = result.proxies.get("kl")
        if kl is None or kl.get("mean") is None:
            return CRASH_COST if not tasks else [CRASH_COST] * len(tasks)
        if not tasks:
            return 1.0 - math.exp(-kl["mean"])
        return [1.0 - math.exp(-kl["scores"][t]) if kl["scores"].get(t) is not None else CRASH_COST for t in tasks]
    if objective == "accuracy":
        mean, per_task = result.retention, result.task_retention
    else:
        proxy = result.proxies.get(objective)
        if proxy is None:
            return CRASH_COST if not tasks else [CRASH_COST] * len(tasks)
        mean, per_task = proxy["retentions"][result.definition], proxy["task_retentions"][result.definition]
    if not tasks:
        return 1.0 - mean
    return [1.0 - (per_task.get(t) or 0.0) for t in tasks]


# ----------------------------------------------------------------------------- the search
class _Recorder:
    """A SMAC callback: reports each trial before SMAC is told, and stops when asked to (between trials
    through ``on_tell_end``; a trial the listener stopped inside its evaluation is not recorded, and its
    ``Stopped`` ends SMAC's loop)."""

    def __init__(self, search: "Search") -> None:
        from smac.callback import Callback

        self.search = search
        outer = self

        class _CB(Callback):
            def on_tell_start(self, smbo, info, value):
                return outer.on_tell(info, value)

            def on_tell_end(self, smbo, info, value):
                return None if not outer.search._should_stop() else False

        self.callback = _CB()

    def on_tell(self, info, value) -> bool | None:
        s = self.search
        if s._replaying:
            return None
        extra = value.additional_info or {}
        if extra.get("stopped"):  # cut short by the listener: nothing to record, nothing more to run
            s._stopped = "cancelled"
            raise Stopped("stopped")
        fidelity = extra.get("fidelity") or fidelity_of(info.budget, s.max_fidelity)
        plan = Plan.from_dict(extra["plan"]) if "plan" in extra else s.space.decode(info.config)
        status, error, result = "complete", None, None
        cached = bool(extra.get("cached"))
        if extra.get("rejected"):
            status, error = "rejected", f"drops the wrong number of layers (budget removes {s.space.n_remove})"
        elif "result" in extra:
            result = EvalResult.from_dict(extra["result"])
            if cached:  # the time was spent once, on the original trial
                result.stitch_s = result.score_s = 0.0
            else:
                s.cache[(plan.key(), fidelity)] = extra["result"]  # Dask workers: keep the main cache complete
        else:
            status = "failed"
            error = str(extra.get("error") or extra.get("traceback") or "trial failed").strip().splitlines()[-1]
        record = TrialRecord(number=len(s.trials), plan=plan, fidelity=fidelity, result=result, status=status,
                             error=error, config=_plain(dict(info.config)), wall_s=s._elapsed(),
                             source=s.seed_names.get(plan.key(), "search"), budget=info.budget, cached=cached)
        s.trials.append(record)
        if result is not None and not cached:
            s.eval_s += result.stitch_s + result.score_s
            s.evaluations += 1
        if s.on_trial is not None:
            s.on_trial(record)
        return None


class Search:
    """One search run. ``run()`` returns a SearchResult; ``on_trial`` sees each trial as it lands.

    ``progress`` (``gptailor.common.progress.Progress``; default: the one in force) is told each phase
    ('references' when computed here, 'seeds' while SMAC is assembled) and every engine tick, and stops the
    search when asked: between trials (``stop_requested()``), or inside a trial's evaluation when its tick
    raises ``Stopped`` (that trial is dropped). Either way ``run()`` returns what was done, ``cancelled``."""

    def __init__(self, evaluator: Evaluator, budget: Budget, settings: SearchSettings | None = None,
                 on_trial: Callable[[TrialRecord], None] | None = None, previous: Iterable[TrialRecord] = (),
                 heuristic_removals: dict[str, list[int]] | None = None,
                 references: References | None = None, progress: Progress | None = None,
                 space: PlanSpace | None = None) -> None:
        self.evaluator = evaluator
        self._progress = progress  # None: whatever listener is in force when run() starts
        self.progress: Progress = progress or QUIET
        self.family = evaluator.family
        self.settings = settings or SearchSettings()
        self.settings.check()
        self.budget = budget
        self.n_remove = budget.n_remove(self.family)  # raises BudgetError before any work
        self.min_fidelity, self.max_fidelity, self.fidelity_note = search_fidelities(
            self.settings, evaluator.suite.split_fidelity("search"))
        if self.settings.facade == "multi_fidelity" and self.min_fidelity < self.max_fidelity:
            # batches cut at the rungs: a promoted plan re-runs none of its lower rung's examples (prefix cache)
            evaluator.align_batches(rungs(self.min_fidelity, self.max_fidelity, self.settings.eta))
        kw = {"constraint": self.settings.constraint} if self.settings.space == "layerwise" else {}
        # ``space``: a space of the caller's, e.g. a ``pick`` space with chosen sources (bench/search_regret.py
        # restricts a search to the plans of an enumerated table); it must remove ``n_remove`` layers
        self.space = space or make_space(self.settings.space, self.family, self.n_remove, self.settings.seed, **kw)
        if self.space.n_remove != self.n_remove:
            raise BudgetError(f"the space given removes {self.space.n_remove} layers but the budget removes "
                              f"{self.n_remove}; build the space with the budget's count")
        self.tasks: list[str] | None = None
        self.references = references
        self.definition: str | None = None
        self.setup_s = 0.0
        self.on_trial = on_trial
        self.previous = list(previous)
        self.trials: list[TrialRecord] = list(self.previous)
        self.heuristic_removals = heuristic_removals or {}
        self.seed_names: dict[str, str] = {}
        self.cache: dict[tuple[str, int], dict] = {
            (t.plan.key(), t.fidelity): t.result.to_dict() for t in self.previous
            if t.status == "complete" and t.result is not None and not t.cached}
        self.evaluations = 0
        self.eval_s = 0.0
        self._replaying = False
        self._start = 0.0
        self._stopped = "finished"

    def _elapsed(self) -> float:
        return (self.previous[-1].wall_s if self.previous else 0.0) + time.perf_counter() - self._start

    def _should_stop(self) -> bool:
        """Whether to end between trials: the listener asked for it (or already stopped a trial)."""
        if self._stopped == "cancelled" or self.progress.stop_requested():
            self._stopped = "cancelled"
            return True
        return False

    # -- SMAC assembly ----------------------------------------------------------------
    def _scenario(self, outdir: str):
        from smac import Scenario

        s = self.settings
        used = self.previous[-1].wall_s if self.previous else 0.0
        kw: dict[str, Any] = {}
        if s.facade == "multi_fidelity" and self.min_fidelity < self.max_fidelity:  # random too: same rungs
            kw = {"min_budget": self.min_fidelity, "max_budget": self.max_fidelity}
        if self.tasks:
            kw.update(objectives=list(self.tasks), crash_cost=[CRASH_COST] * len(self.tasks))
        else:
            kw.update(crash_cost=CRASH_COST)
        return Scenario(self.space.cs, name="gptailor", output_directory=outdir, deterministic=True,
                        n_trials=s.n_trials, walltime_limit=(s.walltime_s - used) if s.walltime_s else math.inf,
                        seed=s.seed, n_workers=max(1, s.n_workers), **kw)

    def _seeded_start(self) -> list[Seed]:
        """The seeded plans the space expresses, in ``seed_plans``' order, each once (by the plan it decodes to), named in
        ``seed_names``; decoded here once, for SMAC's initial design and the evolution's generation 0."""
        if not self.settings.initial_plans:
            return []
        seeds: list[Seed] = []
        seen: set[str] = set()
        for name, plan in seed_plans(self.family, self.n_remove, self.heuristic_removals).items():
            cfg = self.space.encode(plan)
            if cfg is None:
                continue
            plan = self.space.decode(cfg)  # plans that decode to the same model count once
            if plan.key() in seen:
                continue
            seen.add(plan.key())
            self.seed_names[plan.key()] = name
            seeds.append(Seed(cfg, plan))
        return seeds

    def _facade(self, scenario, objective, dask_client):
        import smac

        s = self.settings
        common = {"overwrite": True, "logging_level": logging.ERROR, "callbacks": [self.recorder.callback],
                  "dask_client": dask_client}
        multi = "min_budget" in _scenario_kw(scenario)
        n_init = s.n_initial if s.n_initial is not None else max(1, min(10, s.n_trials // 10))
        seeds = self._seeded_start()[: seed_cap(s.n_trials, n_init)]  # keep room for SMAC's own picks
        extra = [seed.config for seed in seeds]
        design = {seed.plan.key() for seed in seeds}  # a proposal equal to a seed left out is SMAC's
        for key in [k for k in self.seed_names if k not in design]:  # in place: db.runs holds this dict
            del self.seed_names[key]
        if s.method == "random":
            # Random search gets the same seeded plans and the same fidelities (Hyperband) as SMAC, so a
            # difference between the two is the optimizer's, not the help either got.
            F = smac.HyperbandFacade if multi else smac.RandomFacade
            design = F.get_initial_design(scenario, additional_configs=extra)
        else:
            F = smac.MultiFidelityFacade if multi else smac.HyperparameterOptimizationFacade
            design = F.get_initial_design(scenario, n_configs=n_init, additional_configs=extra)
        kw = {"initial_design": design}
        if self.tasks:
            from smac.multi_objective.parego import ParEGO

            kw["multi_objective_algorithm"] = ParEGO(scenario)
        if multi:
            kw["intensifier"] = F.get_intensifier(scenario, eta=s.eta)
        return F(scenario, objective, **common, **kw)

    def _replay(self, smac_obj) -> None:
        """Re-tell stored trials to a fresh SMAC (resume)."""
        from smac.runhistory import StatusType, TrialInfo, TrialValue

        self._replaying = True
        try:
            for t in self.previous:
                if not t.config or t.status == CUT:  # a cut trial is not SMAC's: it proposes it again
                    continue
                try:
                    cfg = Configuration(self.space.cs, values=t.config)
                except Exception:  # noqa: BLE001 - a config from another space version: skip it
                    continue
                budget = None
                if "min_budget" in _scenario_kw(smac_obj.scenario):  # exactly what SMAC asked before
                    budget = t.budget if t.budget is not None else float(t.fidelity)
                cost = costs_of(t.result if t.status == "complete" else None, self.tasks, self.settings.objective)
                status = StatusType.SUCCESS if t.status != "failed" else StatusType.CRASHED
                smac_obj.tell(TrialInfo(cfg, seed=self.settings.seed, budget=budget),
                              TrialValue(cost=cost, status=status), save=False)
        finally:
            self._replaying = False

    def run(self) -> SearchResult:
        with listening(self._progress) as progress:  # the engine's ticks inside every trial reach it
            self.progress = progress
            return self._run()

    def _run(self) -> SearchResult:
        if os.environ.get("PYTHONHASHSEED") in (None, "random"):
            warnings.warn("PYTHONHASHSEED is not set: the same seed may not repeat exactly "
                          "(the CLI and the background worker set it for you)", stacklevel=3)  # the caller of run()
        t_setup = time.perf_counter()
        if self.references is None:  # fixed once, on the whole search split (fails early on a bad suite)
            self.references = self.evaluator.references("search", progress=self.progress)
        else:
            self.evaluator.use_references(self.references)
        refs = self.references
        if self.settings.objective != "accuracy":  # stored references from before proxies: the members' values
            self.evaluator.add_proxy(refs)

        self.definition = applicable_definition(setting=self.settings.retention, refs=refs)
        if self.settings.objectives == "per_task":
            self.tasks = [t for t in self.evaluator.suite.names if refs.reference(self.definition, t).member != "none"]
        self.setup_s = time.perf_counter() - t_setup
        outdir = tempfile.mkdtemp(prefix="gptailor-smac-")
        self.recorder = _Recorder(self)
        objective = Objective(self.evaluator, self.space, self.max_fidelity, self.settings.constraint
                              if self.settings.space == "layerwise" else "repair", self.tasks, refs,
                              self.definition, self.cache, self.settings.objective)
        client = cluster = None
        self._start = time.perf_counter()
        try:
            if self.settings.n_workers > 1 or self.settings.scheduler:
                client, cluster = _dask_client(self.settings)
            if self.settings.method == "evolution":  # EvoPress-style: same objective, recorder and trials
                runhistory = self._evolve(objective, client)
            else:
                runhistory = self._smac(outdir, objective, client)
        finally:
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
            shutil.rmtree(outdir, ignore_errors=True)
        if self._stopped == "finished" and self.settings.walltime_s and counted(self.trials) < self.settings.n_trials:
            self._stopped = "walltime"
        total = time.perf_counter() - self._start
        return SearchResult(self.trials, incumbent(self.trials), self.settings, self.space.describe(),
                            self._stopped, smac_overhead_s=max(0.0, total - self.eval_s),
                            pareto=pareto_front(self.trials, self.tasks) if self.tasks else [],
                            references=refs, setup_s=self.setup_s, runhistory=runhistory,
                            evaluations=self.evaluations)

    def _evolve(self, objective: Objective, client) -> list[tuple[dict, float | None, Any]]:
        from gptailor.search.evolution import Evolution

        self.progress.phase(Phase("seeds", None, None, "building the seeded start"
                                  + (f" and replaying {len(self.previous)} stored trials" if self.previous else "")))
        evolution = Evolution(self, objective, lambda r: costs_of(r, self.tasks, self.settings.objective), client)
        try:
            return evolution.run()
        except Stopped:  # a trial's evaluation was stopped by the listener (the recorder dropped it)
            self._stopped = "cancelled"
            return evolution.runhistory

    def _smac(self, outdir: str, objective: Objective, client) -> list[tuple[dict, float | None, Any]]:
        """SMAC's own ``optimize()`` loop (smac or random), after re-telling stored trials."""
        scenario = self._scenario(outdir)
        if self.fidelity_note:
            warnings.warn(self.fidelity_note, stacklevel=4)  # the caller of run()
        self.progress.phase(Phase("seeds", None, None, "building SMAC's initial design"
                                  + (f" and re-telling {len(self.previous)} stored trials" if self.previous else "")
                                  + (f" ({self.fidelity_note})" if self.fidelity_note else "")))
        facade = self._facade(scenario, objective.train, client)
        self._replay(facade)
        remaining = self.settings.n_trials - counted(self.previous)
        if remaining > 0 and not self._should_stop():
            with warnings.catch_warnings():  # SMAC averages empty cost lists for fresh configs
                warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
                warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
                try:
                    facade.optimize()
                except Stopped:  # a trial's evaluation was stopped by the listener (the recorder dropped it)
                    self._stopped = "cancelled"
        return _runhistory(facade)


def _runhistory(facade) -> list[tuple[dict, float | None, Any]]:
    """SMAC's runhistory as plain (configuration, budget, cost) rows, in the order it holds them."""
    rh = facade.runhistory
    out = []
    for key, value in rh.items():
        cfg = _plain(dict(rh.get_config(key.config_id)))
        cost = value.cost if not isinstance(value.cost, list) else tuple(value.cost)
        out.append((cfg, key.budget, cost))
    return out


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """Configuration values as plain Python (ConfigSpace hands out numpy scalars), for JSON."""
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in config.items()}


def _scenario_kw(scenario) -> dict[str, Any]:
    return {k: v for k, v in (("min_budget", scenario.min_budget), ("max_budget", scenario.max_budget))
            if v is not None}


def _dask_client(settings: SearchSettings):
    from dask.distributed import Client, LocalCluster

    if settings.scheduler:
        return Client(settings.scheduler), None
    cluster = LocalCluster(n_workers=settings.n_workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    return Client(cluster), cluster
