"""State-size accounting for any optimizer."""

import pytest
import torch
from torch.testing._internal.two_tensor import TwoTensor

from lit_microopt.optim.memory import optimizer_state_bytes, state_bytes_per_parameter, tensors_bytes


def test_adamw_keeps_eight_bytes_per_parameter():
    model = torch.nn.Linear(100, 100)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 100)).sum().backward()
    optimizer.step()
    # exp_avg and exp_avg_sq in float32, plus a 4-byte step count per tensor.
    assert optimizer_state_bytes(optimizer) == 8 * 10_100 + 2 * 4
    assert state_bytes_per_parameter(optimizer) == pytest.approx(8.0, rel=1e-3)


def test_empty_optimizer_has_no_state():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    assert optimizer_state_bytes(optimizer) == 0
    assert state_bytes_per_parameter(optimizer) == 0.0


def test_tensor_subclasses_count_their_inner_tensors():
    inner = torch.zeros(10, dtype=torch.float32)
    pair = TwoTensor(inner, torch.zeros(10, dtype=torch.float32))
    assert tensors_bytes([pair]) == 80


def test_shared_storage_counts_once_and_views_count_their_storage():
    base = torch.zeros(100)
    assert tensors_bytes([base, base[:10], {"again": base}]) == 400


def test_meta_tensors_count_their_logical_size():
    assert tensors_bytes([torch.empty(1000, dtype=torch.bfloat16, device="meta")] * 2) == 4000
