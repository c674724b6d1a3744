"""MicroAdam's reference ops, one at a time, on the edges of blocks and buckets."""

from __future__ import annotations

import math

import pytest
import torch

from lit_microopt import ops
from lit_microopt.ops.reference import microadam as reference

SIZES = [1, 2, 7, 15, 16, 17, 31, 32, 33, 100]  # around a block of 16 and a bucket of 16


@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("density", [0.1, 0.5, 1.0])
def test_layout_counts_columns_exactly(numel, density):
    layout = ops.TopKLayout.of(numel, 16, density)
    full, last = divmod(numel, 16)
    assert layout.k == full * math.ceil(16 * density) + (math.ceil(last * density) if last else 0)
    # ceil(length * density) without floating-point error: 100 * 0.07 is 7.000000000000001 in floats.
    assert ops.TopKLayout.of(100, 100, 0.07).k == 7


@pytest.mark.parametrize("numel", SIZES)
def test_block_topk_keeps_the_largest_of_every_block(device, dtype, numel):
    torch.manual_seed(numel)
    layout = ops.TopKLayout.of(numel, 16, 0.25)
    values = torch.randn(numel, device=device).to(dtype)
    indices_row = torch.full((layout.k,), -1, dtype=torch.int16, device=device)
    values_row = torch.zeros(layout.k, dtype=torch.bfloat16, device=device)
    ops.block_topk(values, indices_row, values_row, layout)
    positions = ops.window_positions(indices_row, layout)
    for block_start in range(0, numel, 16):
        block = values[block_start : block_start + 16].float()
        chosen = positions[(positions >= block_start) & (positions < block_start + 16)] - block_start
        assert len(set(chosen.tolist())) == math.ceil(block.numel() * 0.25)
        threshold = block.abs()[chosen].min()
        others = torch.ones(block.numel(), dtype=torch.bool, device=device)
        others[chosen] = False
        assert torch.all(block.abs()[others] <= threshold)
    torch.testing.assert_close(values_row, values[positions].to(torch.bfloat16), rtol=0, atol=0)


@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_quantize_then_dequantize_reproduces_the_remainder(device, dtype, numel, stochastic):
    torch.manual_seed(numel)
    bucket_size = 16
    layout = ops.TopKLayout.of(numel, 16, 0.25)
    accumulator = (torch.randn(numel, device=device) * 3).to(dtype)
    original = accumulator.clone()
    indices_row = torch.zeros(layout.k, dtype=torch.int16, device=device)
    values_row = torch.zeros(layout.k, dtype=torch.bfloat16, device=device)
    error_feedback = torch.zeros(-(-numel // 2), dtype=torch.uint8, device=device)
    buckets = -(-numel // bucket_size)
    bucket_min = torch.zeros(buckets, dtype=torch.bfloat16, device=device)
    bucket_max = torch.zeros(buckets, dtype=torch.bfloat16, device=device)
    ops.block_topk(accumulator, indices_row, values_row, layout)
    ops.ef_quantize_(accumulator, indices_row, error_feedback, bucket_min, bucket_max, bucket_size, layout,
                     stochastic, key=12345)

    positions = ops.window_positions(indices_row, layout)
    kept = original[positions].float()
    torch.testing.assert_close(accumulator[positions].float(), kept - kept.to(torch.bfloat16).float(), rtol=0, atol=0)
    if dtype == torch.bfloat16:
        assert torch.all(accumulator[positions] == 0)

    remainder = accumulator.float()
    decoded = ops.dequantize(error_feedback, bucket_min, bucket_max, bucket_size, 0, numel)
    unit = ((bucket_max.float() - bucket_min.float()) / 15).repeat_interleave(bucket_size)[:numel]
    low = bucket_min.float().repeat_interleave(bucket_size)[:numel]
    high = bucket_max.float().repeat_interleave(bucket_size)[:numel]
    assert torch.all(low <= remainder) and torch.all(remainder <= high)
    # Outward rounding is tight: the next bfloat16 towards the data would exclude an element.
    for bucket in range(buckets):
        part = remainder[bucket * bucket_size : (bucket + 1) * bucket_size]
        assert bucket_min[bucket] == reference._round_outward_to_bfloat16(part.min().view(1), down=True)[0]
        assert bucket_max[bucket] == reference._round_outward_to_bfloat16(part.max().view(1), down=False)[0]
    limit = unit * (1.0 if stochastic else 0.5) * (1 + 1e-5) + 1e-30
    assert torch.all((decoded - remainder).abs() <= limit)

    # Step 2 adds the decoded values back, rounded once to the accumulator's dtype.
    target = torch.zeros(numel, device=device, dtype=dtype)
    ops.ef_dequant_add_(target, error_feedback, bucket_min, bucket_max, bucket_size)
    torch.testing.assert_close(target, decoded.to(dtype), rtol=0, atol=0)


def test_packing_puts_the_even_element_in_the_high_nibble():
    codes = torch.tensor([1.0, 2.0, 15.0, 0.0, 7.0])
    packed = torch.zeros(3, dtype=torch.uint8)
    reference._pack_codes(codes, packed)
    assert packed.tolist() == [0x12, 0xF0, 0x70]
    assert reference._unpack_codes(packed)[:5].tolist() == codes.tolist()


def test_constant_bucket_gets_code_zero():
    layout = ops.TopKLayout.of(8, 8, 0.125)
    accumulator = torch.tensor([5.0, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25])
    error_feedback = torch.full((4,), 0xFF, dtype=torch.uint8)
    bucket_min = torch.zeros(2, dtype=torch.bfloat16)
    bucket_max = torch.zeros(2, dtype=torch.bfloat16)
    indices_row = torch.zeros(1, dtype=torch.int16)
    ops.block_topk(accumulator, indices_row, torch.zeros(1, dtype=torch.bfloat16), layout)
    ops.ef_quantize_(accumulator, indices_row, error_feedback, bucket_min, bucket_max, 4, layout, False, 0)
    # bucket 0 holds 0 (5.0 was kept exactly) and 0.25s; bucket 1 only 0.25s: u == 0, codes 0.
    assert bucket_min[1] == bucket_max[1] == 0.25
    assert error_feedback[2:].tolist() == [0, 0]


def test_stochastic_rounding_is_unbiased():
    numel, bucket_size = 64, 64
    values = torch.linspace(0, 1, numel) ** 2
    layout = ops.TopKLayout.of(numel, 64, 1 / 64)
    totals = torch.zeros(numel)
    trials = 400
    for trial in range(trials):
        accumulator = values.clone()
        accumulator[0] = 0.0  # keep the Top-K choice (index 63, the maximum) out of the comparison
        indices_row = torch.zeros(1, dtype=torch.int16)
        error_feedback = torch.zeros(numel // 2, dtype=torch.uint8)
        bucket_min, bucket_max = torch.zeros(1, dtype=torch.bfloat16), torch.zeros(1, dtype=torch.bfloat16)
        ops.block_topk(accumulator, indices_row, torch.zeros(1, dtype=torch.bfloat16), layout)
        ops.ef_quantize_(accumulator, indices_row, error_feedback, bucket_min, bucket_max, bucket_size, layout,
                         True, key=trial)
        totals += ops.dequantize(error_feedback, bucket_min, bucket_max, bucket_size, 0, numel) - accumulator
    bias = (totals / trials)[1:62].abs().max()
    unit = float(values[62] - 0) / 15
    assert bias < 0.1 * unit  # nearest rounding's bias reaches 0.5 u; here it averages out


@pytest.mark.parametrize("numel", [1, 16, 17, 100])
def test_window_update_matches_a_dense_computation(device, numel):
    torch.manual_seed(0)
    layout = ops.TopKLayout.of(numel, 16, 0.5)
    rows = 3
    indices = torch.stack([
        torch.cat([torch.randperm(min(16, numel - s), device=device)[: (layout.k_block if numel - s >= 16 else layout.k_last)]
                   for s in range(0, numel, 16)]) for _ in range(rows)
    ]).to(torch.int16)
    values = torch.randn(rows, layout.k, device=device).to(torch.bfloat16)
    weights1 = torch.tensor([0.81, 0.9, 1.0], device=device)
    weights2 = torch.tensor([0.998, 0.999, 1.0], device=device)
    param = torch.randn(numel, device=device)
    expected = param.clone() * (1 - 0.1 * 0.01)
    positions = ops.window_positions(indices, layout)
    sum1 = torch.zeros(numel, device=device).index_put_((positions.view(-1),), (values.float() * weights1[:, None]).view(-1), accumulate=True)
    sum2 = torch.zeros(numel, device=device).index_put_((positions.view(-1),), (values.float() ** 2 * weights2[:, None]).view(-1), accumulate=True)
    present = torch.zeros(numel, dtype=torch.bool, device=device)
    present[positions.view(-1)] = True
    update = torch.where(present, 0.5 * sum1 / ((0.01 * sum2).sqrt() + 1e-8), 0.0)
    expected -= 0.1 * update
    ops.window_adam_update_(param, indices, values, weights1, weights2, layout, 0.5, 0.01, 1e-8, 0.1, 0.01)
    torch.testing.assert_close(param, expected, rtol=1e-6, atol=1e-6)


def test_slices_bound_the_temporaries(monkeypatch):
    """Large tensors are processed in slices of whole buckets and blocks: same result as one slice."""
    torch.manual_seed(0)
    numel, bucket_size = 1000, 10
    layout = ops.TopKLayout.of(numel, 50, 0.1)

    def run():
        accumulator = torch.randn(numel, generator=torch.Generator().manual_seed(1))
        indices_row = torch.zeros(layout.k, dtype=torch.int16)
        values_row = torch.zeros(layout.k, dtype=torch.bfloat16)
        error_feedback = torch.zeros(numel // 2, dtype=torch.uint8)
        bucket_min, bucket_max = torch.zeros(100, dtype=torch.bfloat16), torch.zeros(100, dtype=torch.bfloat16)
        ops.block_topk(accumulator, indices_row, values_row, layout)
        ops.ef_quantize_(accumulator, indices_row, error_feedback, bucket_min, bucket_max, bucket_size, layout, True, 3)
        ops.ef_dequant_add_(accumulator, error_feedback, bucket_min, bucket_max, bucket_size)
        param = torch.ones(numel)
        ops.window_adam_update_(param, indices_row[None], values_row[None], torch.ones(1), torch.ones(1), layout,
                                0.1, 0.001, 1e-8, 0.01, 0.0)
        return accumulator, indices_row, values_row, error_feedback, bucket_min, param

    whole = run()
    monkeypatch.setattr(reference, "SLICE_ELEMENTS", 100)
    sliced = run()
    for a, b in zip(whole, sliced):
        assert torch.equal(a, b)


def test_bucket_units_are_exact_quotients_on_every_device(device):
    """u = (hi - lo) / 15 is the correctly rounded float32 quotient, as in every kernel. On CUDA, PyTorch computes
    `tensor / 15` as a product with 1/15, an ulp off in most buckets: the reference divides by a tensor."""
    generator = torch.Generator().manual_seed(0)
    low = (-10 * torch.rand(4096, generator=generator)).to(torch.bfloat16)
    high = (10 * torch.rand(4096, generator=generator)).to(torch.bfloat16)
    _, unit = reference._bucket_units(low.to(device), high.to(device))
    difference = high.float() - low.float()
    exact = (difference.double() / 15).float()  # float32 operands: rounding the float64 quotient is exact
    assert torch.equal(unit.view(-1).cpu(), exact)
