from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from gptailor.analysis.layers import analyze, cached_analysis, linear_cka, weight_drift
from gptailor.family.family import Family

from conftest import make_tiny_family

TEXTS = ["hello world", "the quick brown fox", "12+34=46", "rev abc=cba", "color of bazok"]


def test_linear_cka_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g)
    assert abs(linear_cka(x, x) - 1) < 1e-9
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    assert abs(linear_cka(x, 3 * x @ q) - 1) < 1e-9  # invariant to rotation and scale
    assert linear_cka(x, torch.randn(50, 8, generator=g)) < 0.6


def test_analysis_shapes_and_cache(tiny_family, tmp_path):
    res = analyze(tiny_family, TEXTS)
    L, M = tiny_family.n_layers, len(tiny_family.member_names)
    assert res.members == tiny_family.member_names
    assert all(len(v) == L for v in res.block_influence.values())
    assert len(res.angular["base"]) == L - 1 and len(res.angular["base"][0]) == L
    assert res.angular["base"][L - 2][1] is not None and res.angular["base"][L - 2][2] is None  # 2 starts for n = L-1
    assert len(res.cka_layers["math"]) == L and abs(res.cka_layers["math"][2][2] - 1) < 1e-9
    assert len(res.cka_members) == L and len(res.cka_members[0]) == M
    assert res.drift["base"] == [0.0] * L and all(d > 0 for d in res.drift["math"])
    assert weight_drift(tiny_family, "code") == res.drift["code"]
    first = cached_analysis(tiny_family, TEXTS, tmp_path)
    files = list(tmp_path.glob("analysis-*.json"))
    assert len(files) == 1
    again = cached_analysis(tiny_family, TEXTS, tmp_path)
    assert again.to_dict() == first.to_dict()


# ----------------------------------------------------------------------------- independent references
SAME = {"code": [0, 2]}  # positions where `code` keeps the base's layer, bit for bit


@pytest.fixture(scope="module")
def same_family(tmp_path_factory) -> Family:
    """A family whose finetunes touch only the layers, and whose `code` keeps the base's layers 0 and 2."""
    return Family.from_spec(make_tiny_family(tmp_path_factory.mktemp("same"), layers_only=True, base_layers=SAME))


def raw_layers(folder: Path, i: int) -> dict[str, torch.Tensor]:
    """Layer ``i``'s tensors as saved on disk, read with safetensors itself (not the family's cache)."""
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(f))
    prefix = f"model.layers.{i}."
    return {k[len(prefix):]: v.double() for k, v in tensors.items() if k.startswith(prefix)}


def test_weight_drift_is_the_relative_distance_of_the_raw_tensors(same_family):
    folders = {m: Path(same_family.spec.root) / m for m in same_family.member_names}
    for m in same_family.member_names:
        ref = []
        for i in range(same_family.n_layers):
            base, mine = raw_layers(folders["base"], i), raw_layers(folders[m], i)
            assert base.keys() == mine.keys() and base
            diff = sum(float((mine[k] - base[k]).pow(2).sum()) for k in base)
            ref.append((diff / sum(float(w.pow(2).sum()) for w in base.values())) ** 0.5)
        assert weight_drift(same_family, m) == pytest.approx(ref, rel=1e-5), m
        assert ref == [0.0] * same_family.n_layers if m == "base" else all(
            (d == 0) == (i in SAME.get(m, ())) for i, d in enumerate(ref))
    drift = weight_drift(same_family, "code")
    assert [drift[i] for i in SAME["code"]] == [0.0, 0.0]  # exactly: the very same tensors
    assert 0.01 < drift[1] < 1 and 0.01 < drift[3] < 1


def reference_states(folder: Path, tokenizer, texts: list[str]) -> list[torch.Tensor]:
    """h_0..h_L of each text (tokens x hidden), one text at a time (no padding), from the plain
    transformers model's ``output_hidden_states``; its final norm is bypassed, so h_L is the last
    layer's own output, as the analysis sees it (its hook sits on the layers)."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.model.norm = torch.nn.Identity()
    out = []
    with torch.no_grad():
        for t in texts:
            hs = model(**tokenizer(t, return_tensors="pt"), output_hidden_states=True).hidden_states
            out.append(torch.stack([h[0].double() for h in hs]))  # (L + 1, tokens, hidden)
    return out


def test_block_influence_and_angular_distance_match_hidden_states_from_transformers(same_family):
    res = analyze(same_family, TEXTS)
    L = same_family.n_layers
    cos = torch.nn.functional.cosine_similarity
    for m in same_family.member_names:
        hs = reference_states(Path(same_family.spec.root) / m, same_family.tokenizer, TEXTS)
        # ShortGPT: BI_i = 1 - cos(h_i, h_{i+1}), averaged over every token of every text
        bi = [1 - float(torch.cat([cos(h[i], h[i + 1], dim=-1) for h in hs]).mean()) for i in range(L)]
        assert res.block_influence[m] == pytest.approx(bi, abs=1e-5), m
        # Gromov et al.: d(l, l+n) = arccos(cos(h_l, h_{l+n})) / pi at each text's last token, mean over texts
        for n in range(1, L):
            d = [float(torch.stack([torch.arccos(cos(h[l, -1], h[l + n, -1], dim=0).clamp(-1, 1)) / torch.pi
                                    for h in hs]).mean()) for l in range(L - n + 1)]
            assert res.angular[m][n - 1][: L - n + 1] == pytest.approx(d, abs=1e-5), (m, n)
            assert res.angular[m][n - 1][L - n + 1:] == [None] * (n - 1)
    # layer 0 of `code` is the base's and so is its input (embeddings untouched): the same statistics, exactly
    assert res.block_influence["code"][0] == res.block_influence["base"][0]
    assert res.angular["code"][0][0] == res.angular["base"][0][0]
    assert res.block_influence["math"][0] != res.block_influence["base"][0]
