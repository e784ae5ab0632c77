"""Where a member's files come from: a local folder or a cached Hugging Face hub snapshot; configs and checkpoints opened from there."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


from gptailor.weights.checkpoint import Checkpoint, CheckpointError, one_line
from gptailor.family.compat import check_architecture
from gptailor.family.spec import FamilyError, FamilySpec


def _weights_folder(spec: FamilySpec, member: str) -> Path:
    """The local folder holding ``member``'s safetensors: the folder itself, or the hub cache's snapshot
    (downloading only the safetensors files when online)."""
    src = spec.source(member)
    if Path(src).is_dir():
        return Path(src)
    from huggingface_hub import hf_hub_download

    try:
        try:
            index = Path(hf_hub_download(src, "model.safetensors.index.json"))
        except Exception as e:  # noqa: BLE001 - hub errors differ offline and online
            if type(e).__name__ not in ("EntryNotFoundError", "RemoteEntryNotFoundError", "LocalEntryNotFoundError"):
                raise
            return Path(hf_hub_download(src, "model.safetensors")).parent
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            hf_hub_download(src, shard)
        return index.parent
    except Exception as e:  # noqa: BLE001
        raise FamilyError(f"member {member!r} ({src}): cannot find safetensors weights ({one_line(e)}); a hub id "
                          f"needs a local cache when offline") from None


def open_checkpoint(spec: FamilySpec, member: str) -> Checkpoint:
    try:
        return Checkpoint(_weights_folder(spec, member))
    except CheckpointError as e:
        raise FamilyError(f"member {member!r}: {e}") from None
    except OSError as e:
        raise FamilyError(f"member {member!r} ({spec.source(member)}): cannot read weights: {one_line(e)}") from None


def _generation_config(spec: FamilySpec, config):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(spec.source("base"))
    except (OSError, ValueError):
        return GenerationConfig.from_model_config(config)


def _load_config(auto_config, spec: FamilySpec, member: str):
    src = spec.source(member)
    if (os.path.isabs(src) or src.startswith(".")) and not Path(src).exists():
        raise FamilyError(f"member {member!r}: folder {src} does not exist; fix the path in the family spec")
    try:
        cfg = auto_config.from_pretrained(src, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as e:
        raise FamilyError(f"member {member!r}: cannot load config from {src!r} (a hub id needs a local cache "
                          f"when offline, a folder needs config.json): {one_line(e)}") from None
    check_architecture(member, cfg.model_type)
    return cfg


def _config_json(spec: FamilySpec, member: str) -> dict[str, Any]:
    """A member's config.json as a dict: no transformers import (about 2 s on a small CPU)."""
    src = spec.source(member)
    path = Path(src) / "config.json"
    if not Path(src).is_dir():
        if os.path.isabs(src) or src.startswith("."):
            raise FamilyError(f"member {member!r}: folder {src} does not exist; fix the path in the family spec")
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(src, "config.json"))
        except Exception as e:  # noqa: BLE001 - hub errors differ offline and online
            raise FamilyError(f"member {member!r}: cannot load config from {src!r} (a hub id needs a local cache "
                              f"when offline): {one_line(e)}") from None
    try:
        cfg = json.loads(path.read_text())
        assert isinstance(cfg, dict)
    except (OSError, ValueError, AssertionError) as e:
        raise FamilyError(f"member {member!r}: {path} is not a readable config.json ({one_line(e)})") from None
    check_architecture(member, cfg.get("model_type"))
    return cfg
