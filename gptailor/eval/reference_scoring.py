"""The fixed references of retention, and the proxies scored against them (``Evaluator``'s half that scores
the family's own members rather than a plan).

- ``references``: every member scored once on a whole split; retention divides a plan's scores by them.
- the loglik proxy (``proxy_metric``, ``add_proxy``): each task's continuous metric, for the members too, so
  a plan's proxy retention is computed like its retention.
- the KL objective (``kl_reference``, ``kl_probes``): a reference member's top-k next-token log-probabilities,
  once per fidelity and split, and a probe per task that scores a plan's divergence to them.
"""
from __future__ import annotations

from gptailor.common.progress import Phase, Progress
from gptailor.eval.divergence import KLProbe
from gptailor.eval.metrics import continuous_metric
from gptailor.eval.results import References
from gptailor.eval.suite import Suite
from gptailor.eval.tasks import Task, TaskError
from gptailor.family.family import Family
from gptailor.plan import Plan
from gptailor.stitch import Stitcher


class ReferenceScoring:
    """Mixin of ``Evaluator``: the members' scores, the references and proxies made of them, cached.

    It scores through the Evaluator's ``model_details``, ``objective_scores``, ``task_values`` and
    ``prefix_run``, and keeps its caches in the attributes below (set by ``Evaluator.__init__``)."""

    family: Family
    suite: Suite
    stitcher: Stitcher
    split: str
    near_zero: float
    _member_scores: dict[tuple, dict[str, dict[str, float]]]  # (member, fidelity, split) -> task -> metrics
    _refs: dict[str, References]  # split -> the references (computed or adopted)
    _kl_refs: dict[tuple, dict[str, list]]  # (member, fidelity, split, k) -> task -> top-k per chunk

    def member_values(self, member: str, fidelity: int | None = None, split: str | None = None
                      ) -> dict[str, dict[str, list]]:
        """A family member's own per-example values (its own model, embeddings and head included): what its
        metrics aggregate."""
        plan = Plan.identity(self.family.n_layers, member, self.family.name)
        model = self.stitcher.build(plan, shared_from=member)
        return self.model_values(model, fidelity, split, plan, shared_from=member)

    def member_details(self, member: str, fidelity: int | None = None, split: str | None = None
                       ) -> dict[str, dict[str, float]]:
        """A family member's own metrics, once per (fidelity, split)."""
        key = (member, fidelity, split or self.split)
        if key not in self._member_scores:
            self._member_scores[key] = self.details_of(self.member_values(member, fidelity, split))
        return self._member_scores[key]

    def member_scores(self, member: str, fidelity: int | None = None, split: str | None = None) -> dict[str, float]:
        return self.objective_scores(self.member_details(member, fidelity, split))

    def references(self, split: str | None = None, progress: Progress | None = None) -> References:
        """Every member scored on the whole ``split``: the fixed references of retention. ``progress`` gets a
        "references" phase as each member starts (none by default: a report re-scoring references keeps its
        own phase line).

        Refuses a suite on which no member scores anything (every task's reference would be zero), which
        is what a prompt format the models do not follow looks like (e.g. an instruction-tuned family
        without ``chat_template: true``)."""
        split = split or self.split
        if split not in self._refs:
            scores = {}
            for k, m in enumerate(self.family.member_names):
                if progress is not None:
                    progress.phase(Phase("references", k, len(self.family.member_names), f"scoring {m}"))
                scores[m] = self.member_scores(m, None, split)
            refs = References(split, {t.name: t.kind for t in self.suite}, scores, self.near_zero)
            self.add_proxy(refs)
            if all(refs.reference("family", t).member == "none" for t in refs.kinds):
                raise TaskError(
                    f"suite {self.suite.name!r}: no member of family {self.family.name!r} scores above zero on any "
                    f"task ({split} split), so retention would be meaningless. Check the prompt format: for an "
                    f"instruction-tuned family set 'chat_template: true' in the suite, or add an extract filter "
                    f"(filter: {{regex: ...}} or {{contains: true}}) for answers given inside a sentence")
            self._refs[split] = refs
        return self._refs[split]

    def proxy_metric(self, task: Task) -> str:
        """The continuous proxy of ``task`` (``--objective loglik``); a generated, filtered exact-match task
        has none from its forward and keeps its accuracy metric."""
        return task.objective_metric if task.kind == "exact_match" and task.filter else continuous_metric(task.kind)

    def proxy_scores(self, details: dict[str, dict[str, float]]) -> dict[str, float]:
        """Each task's continuous proxy picked out of its full metrics."""
        return {t.name: details[t.name][self.proxy_metric(t)] for t in self.suite}

    def add_proxy(self, refs: References) -> References:
        """Fill in the members' proxy values of ``refs`` where missing (references stored before there were
        proxies): the members' details on the references' split, cached, so free once the scores exist."""
        if refs.proxy is None:
            refs.proxy = {m: self.proxy_scores(self.member_details(m, None, refs.split)) for m in refs.scores}
            refs.proxy_metrics = {t.name: self.proxy_metric(t) for t in self.suite}
        return refs

    def kl_tasks(self) -> list[Task]:
        """The tasks a divergence is scored on: every task scored from one forward (a generated, filtered
        exact-match task has no teacher-forced logits to compare)."""
        return [t for t in self.suite if not (t.kind == "exact_match" and t.filter)]

    def kl_reference(self, member: str, fidelity: int | None, split: str, k: int) -> dict[str, list]:
        """``member``'s top-k next-token log-probabilities at every scored position of every KL task, at
        this fidelity and split: computed once (one forward of the member per fidelity), then shared by
        every plan of the study."""
        key = (member, fidelity, split, k)
        if key not in self._kl_refs:
            plan = Plan.identity(self.family.n_layers, member, self.family.name)
            model = self.stitcher.build(plan, shared_from=member)
            run = self.prefix_run(model, plan, member, fidelity, split)
            probes = {t.name: KLProbe(k) for t in self.kl_tasks()}
            for t in self.kl_tasks():  # only the tasks it is scored on: no generation for the filtered ones
                self.task_values(model, t, fidelity, split, run, probes[t.name])
            self._kl_refs[key] = {name: p.captured for name, p in probes.items()}
        return self._kl_refs[key]

    def kl_probes(self, refs: References, definition: str, fidelity: int | None, split: str, k: int
                  ) -> dict[str, KLProbe]:
        """A comparing probe per KL task, against that task's retention reference member under
        ``definition`` (the base where no member scores)."""
        probes = {}
        for t in self.kl_tasks():
            member = refs.reference(definition, t.name).member
            member = member if member in self.family.member_names else "base"
            probes[t.name] = KLProbe(k, reference=self.kl_reference(member, fidelity, split, k)[t.name],
                                     member=member)
        return probes

    def has_references(self, split: str | None = None) -> bool:
        """Whether this evaluator already holds the references of ``split`` (computed or adopted)."""
        return (split or self.split) in self._refs

    def use_references(self, refs: References) -> None:
        """Adopt references fixed earlier (a resumed study's stored ones)."""
        self._refs[refs.split] = refs
