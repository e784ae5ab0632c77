"""Lazy, per-tensor access to a Hugging Face checkpoint's safetensors files.

Why not ``from_pretrained``: it materialises every member in the requested dtype, so a bfloat16
family searched in float32 on the CPU holds a float32 copy of every member in RAM. Here a member is
its headers (names, dtypes, shapes: read in microseconds, no tensor data) plus memory-mapped files;
a tensor is read only when a plan uses it (a zero-copy view of the read-only mapping, as
``safetensors.safe_open`` gives, with the offsets from the header). Single files and sharded folders
(``model.safetensors.index.json``) work alike, as in mergekit's ``LazyTensorLoader``.

Why our own mapping: pages a process has touched stay in its resident set as long as the file is
mapped, so a search that visits every member's layers would end up with the whole family resident.
``release(names)`` hands those tensors' pages back (``madvise(MADV_DONTNEED)``: the mapping stays
valid, a later read faults the pages in again from the OS page cache), which keeps the resident set
to the layers the current plan uses.
"""
from __future__ import annotations

import json
import mmap
import struct
import threading
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable

import torch

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# safetensors header dtype names -> torch dtypes (the ones LLM checkpoints use)
ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_FIX = "re-download it or re-save the model with save_pretrained(folder) (safetensors is the default)"


class CheckpointError(ValueError):
    """A weights file or folder that cannot be read; the message names the file and what to do."""


def one_line(e: BaseException | str) -> str:
    """An error message on one line (library messages often span several)."""
    return " ".join(str(e).split())


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (safetensors dtype, shape), from the file's JSON header only."""
    return {name: (dt, shape) for name, (dt, shape, _) in read_entries(path).items()}


def read_entries(path: Path) -> dict[str, tuple[str, tuple[int, ...], tuple[int, int]]]:
    """Tensor name -> (safetensors dtype, shape, (start, end) byte offsets in the file)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n <= 1 or n > size - 8:
            raise CheckpointError(f"{path} is not a safetensors file (no valid header); {_FIX}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
        out = {}
        for name, e in header.items():
            if name == "__metadata__":
                continue
            start, end = e["data_offsets"]
            if end > size - 8 - n or e["dtype"] not in ST_DTYPES:
                raise ValueError(f"tensor {name} lies past the end of the file or has dtype {e['dtype']}")
            out[name] = (str(e["dtype"]), tuple(int(d) for d in e["shape"]), (8 + n + int(start), 8 + n + int(end)))
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({one_line(e)}); {_FIX}") from None


def weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (the index for sharded checkpoints)."""
    index = folder / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({one_line(e)}); {_FIX}") from None
        files = {name: folder / shard for name, shard in weight_map.items()}
        missing = sorted({str(p.name) for p in files.values() if not p.exists()})
        if missing:
            raise CheckpointError(f"{index} lists shard(s) {', '.join(missing)} that are not in {folder}; {_FIX}")
        return files
    single = folder / SINGLE_FILE
    if single.exists():
        return {name: single for name in read_header(single)}
    others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.safetensors"))
    hint = f" (found {', '.join(others[:3])})" if others else ""
    raise CheckpointError(f"{folder} has no {SINGLE_FILE} or {INDEX_FILE}{hint}; GPTailor reads safetensors only: "
                          f"load the model with transformers and save_pretrained it to a new folder")


class Checkpoint:
    """One member's weights: headers read at once, tensors read lazily and memory-mapped."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.files = weight_files(self.folder)
        self.headers: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.spans: dict[str, tuple[int, int]] = {}  # byte range of each tensor in its file
        for path in sorted(set(self.files.values())):
            for name, (dt, shape, span) in read_entries(path).items():
                if self.files.get(name) == path:
                    self.headers[name] = (dt, shape)
                    self.spans[name] = span
        missing = [n for n in self.files if n not in self.headers]
        if missing:
            raise CheckpointError(f"{self.files[missing[0]]} lacks tensor {missing[0]} that {INDEX_FILE} places "
                                  f"there; {_FIX}")
        self._maps: dict[Path, mmap.mmap] = {}
        self._lock = threading.Lock()

    def __contains__(self, name: str) -> bool:
        return name in self.headers

    def shape(self, name: str) -> tuple[int, ...]:
        return self.headers[name][1]

    def dtype(self, name: str) -> torch.dtype:
        return ST_DTYPES[self.headers[name][0]]

    def numel(self, names: Iterable[str]) -> int:
        total = 0
        for n in names:
            k = 1
            for d in self.shape(n):
                k *= d
            total += k
        return total

    def main_dtype(self, names: Iterable[str] | None = None) -> torch.dtype:
        """The dtype most of ``names`` (default: all tensors) are stored in, weighted by size."""
        counts: Counter[str] = Counter()
        for n in (self.headers if names is None else names):
            counts[self.headers[n][0]] += self.numel([n])
        return ST_DTYPES[counts.most_common(1)[0][0]]

    def _map(self, path: Path) -> mmap.mmap:
        with self._lock:
            mm = self._maps.get(path)
            if mm is None:
                try:
                    with open(path, "rb") as f:
                        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                except (OSError, ValueError) as e:
                    raise CheckpointError(f"{path}: cannot open ({one_line(e)}); {_FIX}") from None
                self._maps[path] = mm
            return mm

    def get(self, name: str) -> torch.Tensor:
        """The tensor as stored (dtype and all), on the CPU, a view of the memory-mapped file (read-only:
        never write into it)."""
        path = self.files[name]
        dt, shape = self.dtype(name), self.shape(name)
        start, end = self.spans[name]
        if end == start:
            return torch.empty(shape, dtype=dt)
        mm = self._map(path)
        with warnings.catch_warnings():  # the mapping is read-only on purpose: nothing writes into weights
            warnings.filterwarnings("ignore", "The given buffer is not writable", UserWarning)
            flat = torch.frombuffer(mm, dtype=dt, count=(end - start) // dt.itemsize, offset=start)
        return flat.view(shape)

    def release(self, names: Iterable[str]) -> None:
        """Hand back the resident pages of ``names`` (their views stay valid: a later read faults them in
        again from the OS page cache). A no-op where ``madvise`` is missing."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        with self._lock:
            for name in names:
                mm = self._maps.get(self.files[name])
                start, end = self.spans[name]
                lo = start - start % page
                hi = min(len(mm), end + (-end) % page) if mm is not None else lo
                if mm is not None and hi > lo:
                    mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
