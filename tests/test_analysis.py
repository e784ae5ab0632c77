import torch

from gptailor.analysis.layers import analyze, cached_analysis, linear_cka, weight_drift

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
