"""State-size accounting for any optimizer."""

import pytest
import torch
from torch.testing._internal.two_tensor import TwoTensor

from lit_microopt import AdamMini, MicroAdam
from lit_microopt.optim.memory import (
    initialize_state,
    optimizer_state_bytes,
    state_bytes_per_parameter,
    tensors_bytes,
)


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


def _small_model(device: str = "cpu") -> torch.nn.Module:
    with torch.device(device):
        return torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.LayerNorm(200), torch.nn.Linear(200, 10))


def _layout(optimizer: torch.optim.Optimizer) -> list[dict]:
    return [{key: (tuple(value.shape), value.dtype, value.device.type) for key, value in optimizer.state[p].items()}
            for group in optimizer.param_groups for p in group["params"]]


@pytest.mark.parametrize("build", [
    lambda model: MicroAdam(model.named_parameters(), m=4, density=0.05, block_size=256, quant_bucket_size=32),
    lambda model: AdamMini(model.named_parameters(), state_dtype=torch.bfloat16),
], ids=["MicroAdam", "AdamMini"])
def test_initialize_state_creates_what_the_first_step_creates_without_a_step(build):
    stepped_model, fresh_model = _small_model(), _small_model()
    fresh_model.load_state_dict(stepped_model.state_dict())
    stepped, fresh = build(stepped_model), build(fresh_model)
    stepped_model(torch.randn(4, 300)).square().mean().backward()
    stepped.step()

    before = [p.clone() for p in fresh_model.parameters()]
    initialize_state(fresh)

    assert _layout(fresh) == _layout(stepped)
    assert optimizer_state_bytes(fresh) == optimizer_state_bytes(stepped)
    seeds = [state["rounding_seed"].item() for state in fresh.state.values() if "rounding_seed" in state]
    assert seeds == [state["rounding_seed"].item() for state in stepped.state.values() if "rounding_seed" in state]
    assert all(torch.equal(a, b) for a, b in zip(before, fresh_model.parameters()))
    assert all(p.grad is None for p in fresh_model.parameters())


def test_initialize_state_on_meta_matches_the_real_state_in_bytes():
    real = MicroAdam(_small_model().named_parameters(), m=3, block_size=128)
    meta = MicroAdam(_small_model("meta").named_parameters(), m=3, block_size=128)
    initialize_state(real)
    initialize_state(meta)
    assert optimizer_state_bytes(meta) == optimizer_state_bytes(real) > 0


def test_initialize_state_steps_other_optimizers_on_the_meta_device_only():
    model = _small_model("meta")
    model[0].weight.grad = kept = torch.empty_like(model[0].weight)
    optimizer = torch.optim.AdamW(model.parameters())
    initialize_state(optimizer)
    numel = sum(p.numel() for p in model.parameters())
    assert optimizer_state_bytes(optimizer) == 8 * numel + 4 * len(optimizer.state)  # moments and step counts
    assert model[0].weight.grad is kept  # a gradient that was there stays; stand-ins are removed
    assert all(p.grad is None for p in list(model.parameters())[1:])


def test_initialize_state_refuses_to_step_real_parameters():
    model = _small_model()
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="parameter 0 .* is on cpu; build the model on the meta device"):
        initialize_state(optimizer)
    assert not optimizer.state
