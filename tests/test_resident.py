"""Resident memory stays bounded to the layers in use: a search that visits every member's layers must
not end with the whole family resident (pages of a memory-mapped file stay in the process's resident
set while mapped, unless handed back). Measured by the kernel (/proc/self/smaps), not by our counters."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_family
from gptailor.family.family import Family
from gptailor.plan import Plan
from gptailor.stitch import Stitcher

MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")


def mapped_rss(paths: set[str]) -> int:
    """Resident bytes of this process's mappings of ``paths``, as /proc/self/smaps counts them."""
    total, current = 0, None
    with open("/proc/self/smaps") as f:
        for line in f:
            m = MAPPING.match(line)
            if m:
                current = m.group(1).strip()
            elif line.startswith("Rss:") and current in paths:
                total += int(line.split()[1]) * 1024
    return total


@pytest.fixture(scope="module")
def bf16_family(tmp_path_factory) -> Family:
    root = tmp_path_factory.mktemp("bf16")
    spec = make_tiny_family(root, n_layers=4, members=("math", "code"), dtype=torch.bfloat16,
                            hidden_size=256, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=4)
    text = spec.read_text().replace("dtype: float32", "dtype: bfloat16")
    spec.write_text(text)
    return Family.from_spec(spec)


def test_mapped_tensors_are_the_files_values(bf16_family):
    fam = bf16_family
    for m in fam.member_names:
        ckpt = fam.checkpoints[m]
        ref = load_file(str(ckpt.folder / "model.safetensors"))  # safetensors' own reader
        for name, t in ref.items():
            got = ckpt.get(name)
            assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t), name


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc/self/smaps")
def test_resident_set_holds_only_the_layers_in_use(bf16_family):
    fam = bf16_family
    files = {str(c.folder.resolve() / "model.safetensors") for c in fam.checkpoints.values()}
    sizes = {m: (fam.checkpoints[m].folder / "model.safetensors").stat().st_size for m in fam.member_names}
    st = Stitcher(fam)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    first = {}
    for m in fam.member_names:  # a search visiting every member: each one's layers are read and used
        with torch.no_grad():
            first[m] = st.build(Plan.identity(fam.n_layers, m, fam.name))(ids).logits
    layer_bytes = sum(v.numel() * 2 for v in fam.raw_layer("base", 0).values()) * fam.n_layers
    assert layer_bytes > 4 * 1024 * 1024  # large enough that page granularity does not matter
    resident = mapped_rss(files)
    # the last model (every layer of `code`) and the base's embeddings: at most one member's file plus the
    # kernel's fault-around slack (up to 16 pages) per file; the three members' layers were all touched
    slack = 128 * 1024 * len(files)
    assert resident <= sizes["code"] + slack, (resident, sizes)
    assert resident >= layer_bytes * 0.9  # the layers in use are resident (the measure measures)
    # the views stay valid after their pages were handed back: rebuilding gives the same logits
    for m in fam.member_names:
        with torch.no_grad():
            assert torch.equal(st.build(Plan.identity(fam.n_layers, m, fam.name))(ids).logits, first[m])


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc/self/smaps")
def test_converted_layers_leave_no_mapped_pages_behind(bf16_family):
    """float32 compute from bf16 files: the converted copies are cached; the mapped pages go."""
    fam = bf16_family
    files = {str(c.folder.resolve() / "model.safetensors") for c in fam.checkpoints.values()}
    st = Stitcher(fam, dtype=torch.float32, cache_mb=256)
    fam.release_mapped()
    for m in fam.member_names:
        st.build(Plan.identity(fam.n_layers, m, fam.name))
    # 12 layers (23.6 MB) were read; what stays mapped is the base's shared tensors (embeddings) and the
    # kernel's fault-around pages at the edges of released ranges: less than one decoder layer
    one_layer = sum(v.numel() * 2 for v in fam.raw_layer("base", 0).values())
    assert mapped_rss(files) < one_layer
