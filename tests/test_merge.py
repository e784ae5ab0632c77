import math

import pytest
import torch

from gptailor.merge import merge_state, merge_tensors
from gptailor.merge.linear import linear
from gptailor.merge.slerp import slerp
from gptailor.merge.task_arithmetic import task_arithmetic
from gptailor.merge.ties import ties

from mergekit_reference import mergekit_merge


def test_linear_normalizes_weights():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    assert torch.allclose(linear([a, b], [3, 1]), torch.tensor([1.5, 3.0]))


def test_task_arithmetic_adds_weighted_deltas_to_base():
    base = torch.tensor([1.0, 1.0, 1.0])
    a, b = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([1.0, 3.0, 1.0])
    out = task_arithmetic(base, [a, b], [0.5, 1.0])
    assert torch.allclose(out, torch.tensor([1.5, 3.0, 0.5]))


def test_ties_trims_elects_sign_and_averages_agreeing():
    base = torch.zeros(4)
    a = torch.tensor([1.0, -2.0, 0.1, 3.0])
    b = torch.tensor([2.0, 1.0, -0.2, -0.9])
    # density .5: a keeps {-2, 3}, b keeps {2, 1}. Weighted sums per entry: [2, -1, 0, 3]
    # -> signs [+, -, 0, +]; agreeing: e0 {b:2}, e1 {a:-2}, e3 {a:3}
    out = ties(base, [a, b], [1.0, 1.0], density=0.5)
    assert torch.allclose(out, torch.tensor([2.0, -2.0, 0.0, 3.0]))
    # weights: the mean over agreeing members is weighted
    out = ties(base, [torch.tensor([2.0]), torch.tensor([4.0])], [1.0, 3.0], density=1.0)
    assert torch.allclose(out, torch.tensor([(2 * 1 + 4 * 3) / 4.0]))


def test_slerp_on_orthogonal_vectors_stays_on_the_circle():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    # parallel vectors fall back to linear interpolation
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a)
    # weights (1, 3) mean t = .75 toward the second tensor
    assert torch.allclose(merge_tensors("slerp", [a, b], [1, 3]), slerp(a, b, 0.75))


# -- against mergekit's own methods: the same tensors in, the same tensor out -------------------------
def _members(shape, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


# shapes and densities where int(density * n) and round(density * n) differ (mergekit keeps int(...))
@pytest.mark.parametrize("shape,density", [((32, 32), 0.4), ((7,), 0.5), ((5, 3), 0.3), ((6, 4), 1.0)])
def test_ties_equals_mergekit(shape, density):
    base, a, b = _members(shape)
    want = mergekit_merge("ties", [a, b], base, weight=[1.0, 2.0], density=density)
    assert torch.allclose(ties(base, [a, b], [1.0, 2.0], density), want, atol=1e-6)
    assert torch.allclose(merge_tensors("ties", [a, b], [1.0, 2.0], base, density), want, atol=1e-6)


def test_linear_task_arithmetic_and_slerp_equal_mergekit():
    base, a, b = _members((16, 8), seed=1)
    assert torch.allclose(merge_tensors("linear", [a, b], [1.0, 3.0]),
                          mergekit_merge("linear", [a, b], weight=[1.0, 3.0]), atol=1e-6)
    assert torch.allclose(merge_tensors("task_arithmetic", [a, b], [0.5, 0.7], base),
                          mergekit_merge("task_arithmetic", [a, b], base, weight=[0.5, 0.7]), atol=1e-6)
    # mergekit's slerp goes from its base toward the other input at t
    assert torch.allclose(merge_tensors("slerp", [a, b], [1.0, 3.0]),
                          mergekit_merge("slerp", [b], a, t=0.75), atol=1e-6)


# -- DARE: random drop and rescale, seeded ------------------------------------------------------------
@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
@pytest.mark.parametrize("shape,density", [((32, 32), 0.3), ((7,), 0.5), ((4, 6), 0.9), ((3, 5), 1.0)])
def test_dare_equals_mergekit_with_the_same_seed(method, shape, density):
    """mergekit draws its masks from torch's global generator, member after member; ours from a generator
    seeded with the tensor's seed: seeding the global one alike, the two must agree exactly."""
    base, a, b, c = _members(shape, n=4, seed=2)
    weights = [0.6, 1.3, 0.4]
    got = merge_tensors(method, [a, b, c], weights, base, density, seed=123)
    torch.manual_seed(123)
    want = mergekit_merge(method, [a, b, c], base, weight=weights, density=density)
    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
def test_dare_is_reproducible_and_drops_about_one_minus_density(method):
    base, a, b = _members((64, 64), seed=3)
    states, base_state = [{"w": a, "v": b}, {"w": b, "v": a}], {"w": base, "v": base}

    def merged(seed: int) -> dict[str, torch.Tensor]:
        return merge_state(method, states, [1.0, 1.0], base_state, density=0.25, seed=seed)

    first, again, other = merged(5), merged(5), merged(6)
    assert all(torch.equal(first[k], again[k]) for k in first)  # the same plan, the same model
    assert not torch.equal(first["w"], other["w"])  # another position draws other masks
    assert not torch.equal(first["w"] - base != 0, first["v"] - base != 0)  # so does each parameter
    # with one member, the kept entries are the delta rescaled by |delta|_1 / |kept|_1 and the rest base
    one = merge_tensors(method, [a], [1.0], base, density=0.25, seed=9)
    kept = one != base
    assert abs(kept.float().mean().item() - 0.25) < 0.03
    delta = a - base
    scale = delta.abs().sum() / delta[kept].abs().sum()
    assert torch.allclose(one[kept], (base + delta * scale)[kept], atol=1e-5)


def test_dare_at_density_one_is_task_arithmetic_or_unnormalised_ties():
    base, a, b = _members((8, 8), seed=4)
    assert torch.allclose(merge_tensors("dare_linear", [a, b], [0.5, 0.7], base, 1.0),
                          task_arithmetic(base, [a, b], [0.5, 0.7]), atol=1e-6)
    assert torch.allclose(merge_tensors("dare_ties", [a, b], [0.5, 0.7], base, 1.0),
                          mergekit_merge("ties", [a, b], base, weight=[0.5, 0.7], density=1.0, normalize=False),
                          atol=1e-6)
