"""Write a stitched model as a plain Hugging Face folder anyone can ``from_pretrained``.

The folder holds: safetensors weights and a config with the right ``num_hidden_layers`` (no custom
code needed to load it), the tokenizer, the generation config, ``plan.json`` (the canonical plan),
``mergekit.yaml`` (the same model as a mergekit config, to rebuild it with mergekit) and a model
card ``README.md``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .evaluate import EvalResult
from .family import Family, FamilyError, dtype_name, resolve_dtype
from .plan import Plan, split_source
from .stitch import Stitcher, param_count

_MODEL_FILES = ("*.safetensors", "model.safetensors.index.json", "*.bin", "pytorch_model.bin.index.json")


class ExportError(ValueError):
    pass


def _prepare_folder(folder: Path, overwrite: bool) -> Path:
    folder = Path(folder).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder} exists and is a file; give a folder path")
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise ExportError(f"{folder} is not empty; choose a new folder or pass overwrite=True (--overwrite)")
        for pattern in _MODEL_FILES:  # stale shards from an earlier export would be loaded too
            for f in folder.glob(pattern):
                f.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def export_dtype(family: Family, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The dtype an export writes: the base checkpoint's by default (a bfloat16 family stays bfloat16
    even when it is searched in float32 on a CPU)."""
    if dtype is None:
        return family.checkpoint_dtype
    try:
        return resolve_dtype(dtype, torch.device("cpu"))
    except FamilyError as e:
        raise ExportError(str(e)) from None


def export(family: Family, plan: Plan, folder: str | os.PathLike, result: EvalResult | None = None,
           overwrite: bool = False, stitcher: Stitcher | None = None,
           dtype: str | torch.dtype | None = None, lm_eval=None) -> Path:
    """Stitch ``plan`` and save it under ``folder`` in ``dtype`` (default: the base checkpoint's);
    returns the folder's resolved path. ``lm_eval``: an ``LmEvalReport`` whose table the model card carries. Picks are written as stored when the dtypes agree; merges are
    computed in float32 and rounded once to ``dtype``."""
    plan.validate(family.member_names, family.n_layers)
    plan = Plan(plan.ops, plan.family or family.name)
    dt = export_dtype(family, dtype)
    folder = _prepare_folder(Path(folder), overwrite)
    if stitcher is None or stitcher.device.type != "cpu" or stitcher.dtype != dt:
        stitcher = Stitcher(family, device="cpu", dtype=dt, cache_mb=0)  # nothing kept after the export
    model = stitcher.build(plan)
    model.save_pretrained(folder, safe_serialization=True)
    family.tokenizer.save_pretrained(folder)
    (folder / "plan.json").write_text(plan.to_json(indent=2) + "\n")
    (folder / "mergekit.yaml").write_text(mergekit_yaml(family, plan, dt))
    (folder / "README.md").write_text(model_card(family, plan, param_count(model), result, lm_eval))
    return folder


# ----------------------------------------------------------------------------- mergekit
def _merge_method(plan: Plan) -> str:
    """The single mergekit merge_method this plan can be written with, or ExportError saying why not."""
    methods = {op.method for op in plan.ops if op.kind == "merge"}
    if len(methods) > 1:
        raise ExportError(f"plan mixes merge methods {sorted(methods)}; one mergekit config has one merge_method")
    if "slerp" in methods:
        raise ExportError("mergekit's slerp also interpolates the embeddings and head, which stay the base's here")
    return methods.pop() if methods else "passthrough"


def _check_io_sources(family: Family, slices: list[dict[str, Any]]) -> None:
    """mergekit takes the embeddings from the first slice's models and the final norm and LM head from
    the last slice's; the stitched model has the base's. They agree when each of those models has the
    base's tensors bit for bit (decoder-only finetunes usually do), whichever member its layers are from."""
    member_of = {family.spec.source(m): m for m in family.member_names}
    for where, sl, parts in (("first", slices[0], ("embed",)), ("last", slices[-1], ("norm", "head"))):
        for source in sl["sources"]:
            m = member_of[source["model"]]
            for part in parts:
                if not family.io_equals_base(m, part):
                    what = {"embed": "embeddings", "norm": "final norm", "head": "LM head"}[part]
                    raise ExportError(f"mergekit takes the {what} from the {where} slice's models; member {m!r} "
                                      f"there has {what} unlike the base's (the stitched model uses the base's)")


def mergekit_config(family: Family, plan: Plan, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The plan as a mergekit config: slices in position order. Written only when mergekit rebuilds
    the stitched model: the models it takes the embeddings, final norm and LM head from (first and last
    slice) must have the base's, as the stitched model does."""
    method = _merge_method(plan)
    src = family.spec.source
    needs_base = method in ("task_arithmetic", "ties")  # mergekit reads the base tensor from each slice
    slices: list[dict[str, Any]] = []
    i, ops = 0, plan.ops
    while i < len(ops):
        op = ops[i]
        if op.kind == "drop":
            i += 1
            continue
        if op.kind == "pick":
            j = i + 1
            if method == "passthrough":  # merge runs of picks from one member into one slice
                while j < len(ops) and ops[j].kind == "pick" and ops[j].member == op.member:
                    j += 1
            source: dict[str, Any] = {"model": src(op.member or "base"), "layer_range": [i, j]}
            if method != "passthrough":  # a single source with weight 1 reproduces that layer
                source["parameters"] = {"weight": 1.0, **({"density": 1.0} if method == "ties" else {})}
            sources = [source]
            if needs_base and op.member != "base":
                sources.append({"model": src("base"), "layer_range": [i, j]})
            slices.append({"sources": sources})
            i = j
            continue
        sources = []
        for m, w in op.weights:
            params: dict[str, Any] = {"weight": w}
            if op.method == "ties":
                params["density"] = 0.5 if op.density is None else op.density
            name, pos = split_source(m)
            j = i if pos is None else pos  # mergekit sources may read other layer ranges of equal length
            sources.append({"model": src(name), "layer_range": [j, j + 1], "parameters": params})
        if needs_base and "base" not in op.members:
            sources.append({"model": src("base"), "layer_range": [i, i + 1]})
        slices.append({"sources": sources})
        i += 1
    _check_io_sources(family, slices)
    cfg: dict[str, Any] = {"slices": slices, "merge_method": method, "base_model": src("base"),
                           "dtype": dtype_name(export_dtype(family, dtype))}
    if method in ("linear", "ties"):
        cfg["parameters"] = {"normalize": True}
    return cfg


def mergekit_yaml(family: Family, plan: Plan, dtype: torch.dtype | None = None) -> str:
    import yaml

    head = f"# GPTailor plan for family {family.name!r} as a mergekit config: mergekit-yaml mergekit.yaml OUT\n"
    try:
        return head + yaml.safe_dump(mergekit_config(family, plan, dtype), sort_keys=False)
    except ExportError as e:
        return head + f"# not expressible as one mergekit config: {e}\n# rebuild with gptailor from plan.json\n"


# ----------------------------------------------------------------------------- model card
def model_card(family: Family, plan: Plan, params: int, result: EvalResult | None = None, lm_eval=None) -> str:
    base_src = family.spec.source("base")
    hub_id = not Path(base_src).exists()  # the hub's card metadata only makes sense for hub ids
    lines = ["---", "library_name: transformers", "tags:", "- gptailor", "- layer-pruning", "- model-merging",
             *([f"base_model: {json.dumps(base_src)}"] if hub_id else []), "---", "", f"# {family.name}: tailored with GPTailor", "",
             f"Layers kept: {plan.n_kept} of {len(plan)}; parameters: {params / 1e6:.2f}M "
             f"(base: {family.param_count() / 1e6:.2f}M, {100 * params / family.param_count():.1f}%).", "",
             "Family members:", ""]
    lines += [f"- `{m}`: {family.spec.source(m)}" for m in family.member_names]
    lines += ["", "Plan (one op per base layer position):", "", "```", plan.to_text(), "```", ""]
    if result is not None:
        lines += [f"Scores at fidelity {result.fidelity or 'full'} (retention {100 * result.retention:.1f}% of the "
                  f"reference):", "", "| task | metric | score | reference | retention |", "|---|---|---|---|---|"]
        for t, v in result.scores.items():
            r = result.task_retention[t]
            ref = result.references[t]
            lines.append(f"| {t} | {result.metrics[t]} | {v:.4f} | {ref.value:.4f} ({ref.member}) | "
                         f"{'-' if r is None else f'{100 * r:.1f}%'} |")
        lines.append("")
        if result.speed:
            m, b = result.speed["model"], result.speed["base"]
            lines += [f"Speed, measured on {m['device']} in {m['dtype']} (batch {m['batch']}, prompt {m['prompt_len']} "
                      f"tokens, {m['new_tokens']} new tokens, greedy with KV cache):", "",
                      "| | prefill tok/s | decode tok/s |", "|---|---|---|",
                      f"| this model | {m['prefill_tok_s']:,.0f} | {m['decode_tok_s']:,.1f} |",
                      f"| base | {b['prefill_tok_s']:,.0f} | {b['decode_tok_s']:,.1f} |",
                      f"| ratio | {result.speed['prefill_ratio']:.2f}x | {result.speed['decode_ratio']:.2f}x |", ""]
    if lm_eval is not None:
        lines += [f"lm-evaluation-harness (zero-shot, {'all' if lm_eval.limit is None else lm_eval.limit} docs per "
                  f"task; value ± stderr), this model (`plan`) beside the family members:", "", lm_eval.markdown(), ""]
    lines += ["Load it with `AutoModelForCausalLM.from_pretrained(folder)`; `plan.json` and `mergekit.yaml` "
              "rebuild it from the family.", ""]
    return "\n".join(lines)
