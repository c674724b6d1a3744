"""The reference op ``adam_mini_update_``: block statistics, layouts and stochastic rounding."""

from __future__ import annotations

import pytest
import torch

from lit_microopt.ops.reference.adam_mini import adam_mini_update_, block_mean_squares, stochastic_round
from lit_microopt.optim.partition import BlockLayout

LAYOUTS = {
    # name: (shape, block_axis, segment_rows, rows_per_block)
    "row": ((6, 5), 0, (6,), (1,)),
    "head": ((8, 3), 0, (8,), (4,)),
    "fused qkv": ((16, 3), 0, (8, 4, 4), (2, 2, 1)),
    "conv1d fused": ((3, 16), 1, (8, 4, 4), (2, 2, 1)),
    "conv 4-D": ((4, 2, 3, 3), 0, (4,), (1,)),
    "tensor": ((7,), 0, (1,), (1,)),
    "one row of many": ((1, 9, 2), 0, (1,), (1,)),
}


def loop_block_means(grad: torch.Tensor, block_axis: int, segment_rows, rows_per_block) -> torch.Tensor:
    """Mean of g^2 per block, one block at a time (the oracle)."""
    n_rows = sum(segment_rows)
    matrix = grad.double().reshape(n_rows, -1) if block_axis == 0 else grad.double().reshape(-1, n_rows).T
    means, start = [], 0
    for rows, height in zip(segment_rows, rows_per_block):
        for first in range(start, start + rows, height):
            means.append(matrix[first:first + height].square().mean())
        start += rows
    return torch.stack(means)


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
def test_block_mean_squares_matches_a_loop_over_blocks(layout_name, dtype):
    shape, axis, segments, heights = LAYOUTS[layout_name]
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    means = block_mean_squares(grad, block_axis=axis, segment_rows=segments, rows_per_block=heights)
    assert means.dtype == torch.float32
    assert means.numel() == BlockLayout("row", axis, segments, heights).n_blocks
    torch.testing.assert_close(means.double(), loop_block_means(grad, axis, segments, heights), rtol=1e-6, atol=0)


def step_kwargs(axis, segments, heights, **overrides):
    kwargs = dict(block_axis=axis, segment_rows=segments, rows_per_block=heights, step=1, lr=1e-2, beta1=0.9,
                  beta2=0.999, eps=1e-8, weight_decay=0.1)
    kwargs.update(overrides)
    return kwargs


def test_non_contiguous_parameter_gives_the_contiguous_result():
    generator = torch.Generator().manual_seed(0)
    param = torch.randn(4, 2, 3, 3, generator=generator)
    grad = torch.randn(4, 2, 3, 3, generator=generator)
    channels_last = param.clone().to(memory_format=torch.channels_last)
    results = []
    for target in (param, channels_last):
        exp_avg, exp_avg_sq = torch.zeros(4, 2, 3, 3), torch.zeros(4)
        adam_mini_update_(target, grad, exp_avg, exp_avg_sq, **step_kwargs(0, (4,), (1,)))
        results.append((target, exp_avg, exp_avg_sq))
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    for first, second in zip(*results):
        assert torch.equal(first, second)


def test_precomputed_statistics_give_the_same_step():
    generator = torch.Generator().manual_seed(0)
    grad = torch.randn(16, 3, generator=generator)
    layout = ((8, 4, 4), (2, 2, 1))
    results = []
    for precomputed in (False, True):
        param, exp_avg, exp_avg_sq = torch.ones(16, 3), torch.zeros(16, 3), torch.zeros(10)
        stat = block_mean_squares(grad, block_axis=0, segment_rows=layout[0], rows_per_block=layout[1])
        adam_mini_update_(param, grad, exp_avg, exp_avg_sq, **step_kwargs(0, *layout),
                          block_mean_sq=stat if precomputed else None)
        results.append((param, exp_avg, exp_avg_sq))
    for first, second in zip(*results):
        assert torch.equal(first, second)


def test_wider_state_keeps_float32_moment_without_rounding():
    param = torch.ones(4, 4, dtype=torch.bfloat16)
    grad = torch.full((4, 4), 1e-3, dtype=torch.bfloat16)
    exp_avg, exp_avg_sq = torch.zeros(4, 4), torch.zeros(4)
    adam_mini_update_(param, grad, exp_avg, exp_avg_sq, **step_kwargs(0, (4,), (1,)))
    assert exp_avg.dtype == torch.float32
    torch.testing.assert_close(exp_avg, 0.1 * grad.float())


@pytest.mark.parametrize("target", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("value", [1.0 + 0.3 * 2**-7, -3.0 - 0.8 * 2**-6, 1e-6 + 1e-9, 0.1])
def test_stochastic_rounding_is_unbiased_between_the_two_neighbours(target, value):
    count = 1 << 16
    values = torch.full((count,), value, dtype=torch.float32)
    rounded = stochastic_round(values, target, key=12345)
    assert rounded.dtype == target
    nearest = torch.tensor(value, dtype=torch.float32).to(target)
    toward = torch.tensor(float("inf") if value > nearest.item() else float("-inf"), dtype=target)
    neighbours = {nearest.item(), torch.nextafter(nearest, toward).item()}
    assert set(rounded.float().unique().tolist()) <= neighbours
    low, high = min(neighbours), max(neighbours)
    probability = (value - low) / (high - low)
    spread = (high - low) * (probability * (1 - probability) / count) ** 0.5
    assert abs(rounded.double().mean().item() - value) <= 5 * spread + 1e-12 * abs(value)


@pytest.mark.parametrize("target", [torch.bfloat16, torch.float16])
def test_stochastic_rounding_keeps_representable_values_and_depends_only_on_the_key(target):
    exact = torch.tensor([0.0, 1.0, -2.5, 0.15625, 65504.0 if target == torch.float16 else 3e38]).to(target).float()
    assert torch.equal(stochastic_round(exact, target, key=7).float(), exact)
    values = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(stochastic_round(values, target, key=7), stochastic_round(values, target, key=7))
    assert not torch.equal(stochastic_round(values, target, key=7), stochastic_round(values, target, key=8))
