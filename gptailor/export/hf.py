"""Write a stitched model as a plain Hugging Face folder anyone can ``from_pretrained``.

The folder holds: safetensors weights and a config with the right ``num_hidden_layers`` (no custom
code needed to load it), the tokenizer, the generation config, ``plan.json`` (the canonical plan),
``mergekit.yaml`` (the same model as a mergekit config, to rebuild it with mergekit) and a model
card ``README.md``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from gptailor.eval.results import EvalResult
from gptailor.family.family import Family
from gptailor.plan import Plan
from gptailor.stitch import Stitcher, param_count
from gptailor.export.card import model_card
from gptailor.export.mergekit import ExportError, export_dtype, mergekit_yaml

_MODEL_FILES = ("*.safetensors", "model.safetensors.index.json", "*.bin", "pytorch_model.bin.index.json")


def prepare_folder(folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """The export folder, resolved, created and proven writable (ExportError naming it and why otherwise).

    The command line calls it before scoring the plan, so a folder it cannot write is said in seconds,
    not after the evaluation; ``export`` calls it again (stale shards go only with ``overwrite``)."""
    folder = Path(folder).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder} exists and is a file; give a folder path")
    try:
        if folder.exists() and any(folder.iterdir()):
            if not overwrite:
                raise ExportError(f"{folder} is not empty; choose a new folder or pass overwrite=True (--overwrite)")
            for pattern in _MODEL_FILES:  # stale shards from an earlier export would be loaded too
                for f in folder.glob(pattern):
                    f.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".gptailor-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        near = next((p for p in folder.parents if p.exists()), None)
        where = f"; {near} takes no new folder or file there" if near is not None and not folder.exists() else ""
        raise ExportError(f"cannot write the export folder {folder} ({e.strerror}{where}); choose a folder you can "
                          f"write (-o)") from None
    return folder


def export(family: Family, plan: Plan, folder: str | os.PathLike, result: EvalResult | None = None,
           overwrite: bool = False, stitcher: Stitcher | None = None,
           dtype: str | torch.dtype | None = None, lm_eval=None) -> Path:
    """Stitch ``plan`` and save it under ``folder`` in ``dtype`` (default: the base checkpoint's);
    returns the folder's resolved path. ``lm_eval``: an ``LmEvalReport`` whose table the model card carries. Picks are written as stored when the dtypes agree; merges are
    computed in float32 and rounded once to ``dtype``."""
    plan.validate(family.member_names, family.n_layers)
    plan = Plan(plan.ops, plan.family or family.name)
    dt = export_dtype(family, dtype)
    folder = prepare_folder(folder, overwrite)
    if stitcher is None or stitcher.device.type != "cpu" or stitcher.dtype != dt:
        stitcher = Stitcher(family, device="cpu", dtype=dt, cache_mb=0)  # nothing kept after the export
    model = stitcher.build(plan)
    model.save_pretrained(folder, safe_serialization=True)
    family.tokenizer.save_pretrained(folder)
    (folder / "plan.json").write_text(plan.to_json(indent=2) + "\n")
    (folder / "mergekit.yaml").write_text(mergekit_yaml(family, plan, dt))
    (folder / "README.md").write_text(model_card(family, plan, param_count(model), result, lm_eval))
    return folder
