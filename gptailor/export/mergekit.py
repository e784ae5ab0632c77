"""The plan as a mergekit YAML (passthrough slices of picks and merges): the same model rebuilt by ``mergekit-yaml``."""
from __future__ import annotations

from typing import Any

import torch

from gptailor.family.family import Family
from gptailor.family.spec import FamilyError
from gptailor.family.device import dtype_name, resolve_dtype
from gptailor.merge import MergeMethod, get_method
from gptailor.plan import Plan, split_source


# ----------------------------------------------------------------------------- mergekit
def _merge_method(plan: Plan) -> MergeMethod | None:
    """The single merge method this plan can be written with in one mergekit config (None: passthrough,
    the plan merges nothing), or ExportError saying why not."""
    methods = {op.method for op in plan.ops if op.kind == "merge"}
    if len(methods) > 1:
        raise ExportError(f"plan mixes merge methods {sorted(methods)}; one mergekit config has one merge_method")
    if not methods:
        return None
    method = get_method(methods.pop())
    if method.mergekit is None:
        raise ExportError(method.mergekit_why_not)
    return method


_IO_WHAT = {"embed": "embeddings", "norm": "final norm", "head": "LM head"}


def io_inputs(slices: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The models mergekit 0.1.5 merges each non-layer tensor from (``MergePlanner.plan_module``):
    the embeddings from every source of the first slice; the final norm and LM head from the last
    slice's sources, but only as many as the first slice has (it zips the last slice's models with the
    first slice's weight list, so the rest are dropped). Each is merged with its slice's parameters."""
    first, last = slices[0]["sources"], slices[-1]["sources"]
    tail = [s["model"] for s in last[:len(first)]]
    return {"embed": [s["model"] for s in first], "norm": tail, "head": tail}


def _check_io_sources(family: Family, slices: list[dict[str, Any]], needs_base: bool) -> None:
    """The stitched model has the base's embeddings, final norm and head; mergekit merges them from the
    models ``io_inputs`` names. They agree when each of those models has the base's tensors bit for bit
    (decoder-only finetunes usually do): any weighted mean or task-vector merge of equal tensors is that
    tensor. A method that needs the base fails in mergekit unless the base is among them."""
    member_of = {family.spec.source(m): m for m in family.member_names}
    base = family.spec.source("base")
    for part, models in io_inputs(slices).items():
        what = _IO_WHAT[part]
        if needs_base and base not in models:  # base_first puts it there whenever the slice holds it
            names = ", ".join(repr(member_of[x]) for x in models)
            raise ExportError(f"mergekit merges the {what} from {names} and needs the base among them")
        for model in models:
            m = member_of[model]
            if not family.io_equals_base(m, part):
                names = ", ".join(repr(member_of[x]) for x in models)
                raise ExportError(f"mergekit merges the {what} from {names}; member {m!r} there has {what} "
                                  f"unlike the base's (the stitched model uses the base's)")


def _base_first(sources: list[dict[str, Any]], base: str) -> list[dict[str, Any]]:
    """The base's source first in a slice (the order of the others kept): mergekit merges the final norm
    and head from the last slice's first sources only (``io_inputs``), and a method that needs the base
    fails without it there ("Base input is not present in merge inputs")."""
    return sorted(sources, key=lambda s: s["model"] != base)


def mergekit_config(family: Family, plan: Plan, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The plan as a mergekit config: slices in position order, the base first in each slice that holds
    it. Written only when mergekit rebuilds the stitched model: the models it merges the embeddings,
    final norm and LM head from (``io_inputs``) must have the base's, as the stitched model does."""
    merge = _merge_method(plan)
    method = "passthrough" if merge is None else merge.mergekit
    src = family.spec.source
    needs_base = merge is not None and merge.needs_base  # mergekit reads the base tensor from each slice
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
            if merge is not None:  # a single source with weight 1 (and density 1: all kept) reproduces that layer
                source["parameters"] = {"weight": 1.0, **({"density": 1.0} if "density" in merge.defaults else {})}
            sources = [source]
            if needs_base and op.member != "base":
                sources.append({"model": src("base"), "layer_range": [i, j]})
            slices.append({"sources": _base_first(sources, src("base"))})
            i = j
            continue
        sources = []
        for m, w in op.weights:
            params: dict[str, Any] = {"weight": w, **merge.parameters(op.density)}  # type: ignore[union-attr]
            name, pos = split_source(m)
            j = i if pos is None else pos  # mergekit sources may read other layer ranges of equal length
            sources.append({"model": src(name), "layer_range": [j, j + 1], "parameters": params})
        if needs_base and "base" not in op.members:
            sources.append({"model": src("base"), "layer_range": [i, i + 1]})
        slices.append({"sources": sources if merge.ordered else _base_first(sources, src("base"))})  # type: ignore[union-attr]
        i += 1
    _check_io_sources(family, slices, needs_base)
    cfg: dict[str, Any] = {"slices": slices, "merge_method": method, "base_model": src("base"),
                           "dtype": dtype_name(export_dtype(family, dtype))}
    if merge is not None and merge.mergekit_parameters:
        cfg["parameters"] = dict(merge.mergekit_parameters)
    return cfg


def mergekit_yaml(family: Family, plan: Plan, dtype: torch.dtype | None = None) -> str:
    import yaml

    head = f"# GPTailor plan for family {family.name!r} as a mergekit config: mergekit-yaml mergekit.yaml OUT\n"
    try:
        cfg = mergekit_config(family, plan, dtype)
        merge = _merge_method(plan)
        if merge is not None and not merge.mergekit_exact:
            head += (f"# {merge.name} draws random numbers: mergekit draws its own (pass --random-seed to repeat a "
                     f"run), so its model differs from GPTailor's in the drawn entries\n")
        return head + yaml.safe_dump(cfg, sort_keys=False)
    except ExportError as e:
        return head + f"# not expressible as one mergekit config: {e}\n# rebuild with gptailor from plan.json\n"


class ExportError(ValueError):
    pass


def export_dtype(family: Family, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The dtype an export writes: the base checkpoint's by default (a bfloat16 family stays bfloat16
    even when it is searched in float32 on a CPU)."""
    if dtype is None:
        return family.checkpoint_dtype
    try:
        return resolve_dtype(dtype, torch.device("cpu"))
    except FamilyError as e:
        raise ExportError(str(e)) from None
