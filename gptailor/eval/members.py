"""The members' table: every member's own scores and retention on a split, and the base with its last
quarter dropped (the naive cut every plan should beat), as ``python -m gptailor report`` prints it.

Each member is scored once: its row is its reference (``Evaluator.references``, the member's own model,
embeddings and head included), and its retention is computed from those same scores."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from gptailor.common.progress import Phase, Progress, current, listening
from gptailor.eval.evaluator import Evaluator
from gptailor.plan import Plan

Say = Callable[[str], None]


@dataclass
class Row:
    label: str
    scores: dict[str, float]  # task -> objective metric
    retentions: dict[str, float]  # definition -> mean retention


def naive_plan(ev: Evaluator) -> tuple[str, Plan]:
    """The base with its last quarter of layers dropped, and its row label."""
    L = ev.family.n_layers
    q = L // 4
    return f"base, last {q} layers dropped", Plan.drop_positions(L, range(L - q, L), family=ev.family.name)


def member_rows(ev: Evaluator, split: str = "test", fidelity: int | None = None, naive: bool = True,
                say: Say | None = None, progress: Progress | None = None) -> list[Row]:
    """One row per member (scored once, on its own model) and, with ``naive``, the naive cut's row.
    ``fidelity`` (examples per task) applies to the naive row; references are on the whole split.
    ``say`` gets a line per member and per task scored, as it starts; ``progress`` (default: the listener
    in force) gets every tick, and may stop the work there."""
    outer = progress or current()

    def on_tick(what: str, done: int | None, total: int | None) -> None:
        outer.tick(what, done, total)
        if say is not None and what and done is not None and total:  # task ticks, not the per-batch ones
            say(f"  {what} (task {done + 1} of {total})")

    def on_phase(p: Phase) -> None:
        if say is not None:
            say(f"scoring member {p.detail.removeprefix('scoring ')} ({p.done + 1} of {p.total})")

    kinds = {t.name: t.kind for t in ev.suite}
    with listening(on_tick):
        refs = ev.references(split, progress=Progress(on_phase=on_phase))
        rows = [Row(m, refs.scores[m], refs.retentions(refs.scores[m], kinds)[0]) for m in ev.family.member_names]
        if naive:
            label, plan = naive_plan(ev)
            if say is not None:
                say(f"scoring {label}")
            res = ev.evaluate(plan, fidelity, split, references=refs)
            rows.append(Row(label, res.scores, res.retentions))
    return rows


def markdown(ev: Evaluator, rows: list[Row]) -> str:
    """The rows as a markdown table: accuracy as a percentage, perplexity as a number, both retentions."""
    names = ev.suite.names
    kinds = {t.name: t.kind for t in ev.suite}
    metrics = {t.name: t.objective_metric for t in ev.suite}
    out = ["| model | " + " | ".join(f"{t} ({metrics[t]})" for t in names)
           + " | retention (family) | retention (base) |", "|---" * (len(names) + 3) + "|"]
    for r in rows:
        cells = [f"{r.scores[t]:.2f}" if kinds[t] == "perplexity" else f"{100 * r.scores[t]:.1f}%" for t in names]
        out.append(f"| {r.label} | " + " | ".join(cells) + f" | {100 * r.retentions['family']:.1f}% | "
                   f"{100 * r.retentions['base']:.1f}% |")
    return "\n".join(out)
