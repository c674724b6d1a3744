"""The op ``max_magnitudes_``, the largest magnitude of every tensor of a list, against its reference on every target."""

from __future__ import annotations

import math

import pytest
import torch

from lit_microopt.ops.library import OPS
from tests.ops.test_compiled_microadam import require_kernels


def tensors_of_every_kind(generator: torch.Generator) -> list[torch.Tensor]:
    """Every dtype, empty and single-element tensors, tensors of several chunks (65536 elements each), a tensor of
    negative values only, infinities of both signs and NaNs, at the start, middle and end of a tensor."""
    tensors = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for numel in (0, 1, 7, 65536, 65537, 200_000):
            tensors.append((torch.randn(numel, generator=generator) * 100).to(dtype))
        tensors.append(-torch.rand(1000, generator=generator).to(dtype) - 1)
        for position, value in ((0, math.inf), (500, -math.inf), (999, math.nan), (70_000, -math.inf)):
            special = torch.randn(max(1000, position + 1), generator=generator).to(dtype)
            special[position] = value
            tensors.append(special)
    return tensors


def test_the_largest_magnitude_of_every_tensor(target):
    require_kernels(target)
    tensors = tensors_of_every_kind(torch.Generator().manual_seed(0))
    expected = torch.empty(len(tensors))
    OPS["max_magnitudes_"].reference(expected, tensors)
    actual = torch.full((len(tensors),), -1.0, device=target.device)
    target.ops.max_magnitudes_(actual, [tensor.to(target.device) for tensor in tensors])
    torch.testing.assert_close(actual.cpu(), expected, rtol=0, atol=0, equal_nan=True)
    # The reference's own meaning: |x| at its largest, NaN where there is one, 0 for an empty tensor.
    for tensor, value in zip(tensors, expected.tolist()):
        if tensor.numel() == 0:
            assert value == 0.0
        elif tensor.isnan().any():
            assert math.isnan(value)
        else:
            assert value == tensor.float().abs().max().item()


def test_a_wrong_output_or_dtype_is_refused(target):
    require_kernels(target)
    device = target.device
    tensors = [torch.randn(10, device=device), torch.randn(3, device=device)]
    with pytest.raises(ValueError, match="one entry per tensor"):
        target.ops.max_magnitudes_(torch.empty(3, device=device), tensors)
    with pytest.raises((TypeError, ValueError), match="must be float32, bfloat16 or float16"):
        target.ops.max_magnitudes_(torch.empty(1, device=device), [torch.ones(4, dtype=torch.float64, device=device)])
