"""The model card (README.md) written beside an exported checkpoint: what was kept, from whom, and how it scored."""
from __future__ import annotations

import json
from pathlib import Path


from gptailor.eval.results import EvalResult
from gptailor.eval.speed import ratio_text
from gptailor.family.family import Family
from gptailor.plan import Plan


# ----------------------------------------------------------------------------- model card
def shown_source(source: str) -> str:
    """A member's source as the card shows it: a hub id as it is, a local folder by its name only (the
    card travels with the checkpoint; the folders of the machine that made it mean nothing elsewhere and
    should not be published)."""
    return f"a local folder named `{Path(source).name}`" if Path(source).exists() else source


def speed_lines(speed: dict) -> list[str]:
    """The measured speed: one line saying it in words (a ratio only when larger than the noise), then the
    tokens/s of this model and the base, and each ratio with its range over the runs."""
    m, b = speed["model"], speed["base"]
    return [f"Speed: prefill {ratio_text(speed, 'prefill')}, decode {ratio_text(speed, 'decode')}; measured on "
            f"{m['device']} in {m['dtype']} (batch {m['batch']}, prompt {m['prompt_len']} tokens, {m['new_tokens']} "
            "new tokens, greedy with KV cache, the two models timed in turns).", "",
            "| | prefill tok/s | decode tok/s |", "|---|---|---|",
            f"| this model | {m['prefill_tok_s']:,.0f} | {m['decode_tok_s']:,.1f} |",
            f"| base | {b['prefill_tok_s']:,.0f} | {b['decode_tok_s']:,.1f} |",
            f"| this model / base | {ratio_text(speed, 'prefill')} | {ratio_text(speed, 'decode')} |", ""]


def model_card(family: Family, plan: Plan, params: int, result: EvalResult | None = None, lm_eval=None) -> str:
    base_src = family.spec.source("base")
    hub_id = not Path(base_src).exists()  # the hub's card metadata only makes sense for hub ids
    lines = ["---", "library_name: transformers", "tags:", "- gptailor", "- layer-pruning", "- model-merging",
             *([f"base_model: {json.dumps(base_src)}"] if hub_id else []), "---", "", f"# {family.name}: tailored with GPTailor", "",
             f"Layers kept: {plan.n_kept} of {len(plan)}; parameters: {params / 1e6:.2f}M "
             f"(base: {family.param_count() / 1e6:.2f}M, {100 * params / family.param_count():.1f}%).", "",
             "Family members:", ""]
    lines += [f"- `{m}`: {shown_source(family.spec.source(m))}" for m in family.member_names]
    lines += ["", "Plan (one op per base layer position):", "", "```", plan.to_text(), "```", ""]
    if result is not None:
        both = ", ".join(f"{100 * v:.1f}% {d}" for d, v in result.retentions.items())
        lines += [f"Scores on the {result.split} split at fidelity {result.fidelity or 'full'} (retention "
                  f"{100 * result.retention:.1f}% of the {result.definition} reference; both definitions: {both}):",
                  "", "| task | metric | score | reference | retention |", "|---|---|---|---|---|"]
        for t, v in result.scores.items():
            r = result.task_retention[t]
            ref = result.references[t]
            lines.append(f"| {t} | {result.metrics[t]} | {v:.4f} | {ref.value:.4f} ({ref.member}) | "
                         f"{'-' if r is None else f'{100 * r:.1f}%'} |")
        lines.append("")
        if result.speed:
            lines += speed_lines(result.speed)
    if lm_eval is not None:
        lines += [f"lm-evaluation-harness (zero-shot, {'all' if lm_eval.limit is None else lm_eval.limit} docs per "
                  f"task; value ± stderr), this model (`plan`) beside the family members:", "", lm_eval.markdown(), ""]
    lines += ["Load it with `AutoModelForCausalLM.from_pretrained(folder)`; `plan.json` and `mergekit.yaml` "
              "rebuild it from the family.", ""]
    return "\n".join(lines)
