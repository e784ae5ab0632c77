"""Device and dtype names resolved to torch objects, with one error for a wrong name."""
from __future__ import annotations


import torch

from gptailor.family.spec import FamilyError, _DTYPES


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked against this machine (FamilyError)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise FamilyError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise FamilyError(f"device {device!r} asked for, but this machine has "
                          f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA devices; "
                          f"use cpu or auto")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise FamilyError("device 'mps' asked for, but this machine has no MPS; use cpu or auto")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise FamilyError(f"dtype {dtype!r} is not one of auto, float32, bfloat16, float16")
    return _DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
