import math

import torch

from gptailor.merge import merge_tensors
from gptailor.merge.linear import linear
from gptailor.merge.slerp import slerp
from gptailor.merge.task_arithmetic import task_arithmetic
from gptailor.merge.ties import ties


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
