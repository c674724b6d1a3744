"""``param_rounding``: a bfloat16 or float16 parameter's new values rounded stochastically instead of to nearest.

A bfloat16 weight near 1.0 has an ulp of 2^-7: an update below half of it rounds back to the old value, so small
learning rates leave bfloat16 weights where they are. Stochastic (unbiased) rounding keeps such updates on average.
"""

from __future__ import annotations

import io

import pytest
import torch

from lit_microopt import AdamMini, MicroAdam

OPTIMIZERS = {
    "MicroAdam": lambda params, **kwargs: MicroAdam(params, **kwargs),
    "AdamMini": lambda params, **kwargs: AdamMini(params, **kwargs),
}


#: MicroAdam keeps every entry (density 1), so that every element moves at every step, as under Adam-mini.
EXPERIMENT = {"MicroAdam": dict(density=1.0), "AdamMini": {}}


def constant_gradient_run(name: str, dtype: torch.dtype, param_rounding: str, steps: int = 200) -> torch.Tensor:
    """A 64x64 weight at 1.0 under a constant gradient of ones, lr 1e-4: the weight after ``steps`` steps."""
    weight = torch.nn.Parameter(torch.ones(64, 64, dtype=dtype))
    optimizer = OPTIMIZERS[name]([("weight", weight)], lr=1e-4, param_rounding=param_rounding, **EXPERIMENT[name])
    for _ in range(steps):
        weight.grad = torch.ones_like(weight)
        optimizer.step()
    return weight.detach().float()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_stochastic_rounding_keeps_the_updates_that_rounding_to_nearest_loses(name):
    float32_drift = 1.0 - constant_gradient_run(name, torch.float32, "nearest").mean().item()
    assert float32_drift > 0.01  # MicroAdam 0.032, Adam-mini 0.020
    # To nearest, every update is below half an ulp of 1.0: the bfloat16 weight never moves.
    assert torch.equal(constant_gradient_run(name, torch.bfloat16, "nearest"), torch.ones(64, 64))
    stochastic_drift = 1.0 - constant_gradient_run(name, torch.bfloat16, "stochastic").mean().item()
    assert abs(stochastic_drift - float32_drift) <= 0.15 * float32_drift


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_float32_parameters_are_unchanged_by_the_option(name):
    nearest = constant_gradient_run(name, torch.float32, "nearest", steps=20)
    assert torch.equal(constant_gradient_run(name, torch.float32, "stochastic", steps=20), nearest)


def _model(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.Tanh(), torch.nn.Linear(30, 4)).to(dtype)


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        inputs = torch.randn(8, 20, generator=generator).to(next(model.parameters()).dtype)
        loss = model(inputs).float().square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


SETTINGS = {"MicroAdam": dict(lr=1e-3, m=3, density=0.2, block_size=32, quant_bucket_size=16, weight_decay=0.1),
            "AdamMini": dict(lr=1e-3, weight_decay=0.1)}


def _saved(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_save_reload_continue_is_bit_identical_with_stochastic_rounding(name, dtype):
    kwargs = dict(SETTINGS[name], param_rounding="stochastic")
    uninterrupted = _model(dtype)
    optimizer = OPTIMIZERS[name](uninterrupted.named_parameters(), **kwargs)
    _train(uninterrupted, optimizer, 4, seed=1)
    _train(uninterrupted, optimizer, 4, seed=2)

    interrupted = _model(dtype)
    first = OPTIMIZERS[name](interrupted.named_parameters(), **kwargs)
    _train(interrupted, first, 4, seed=1)
    saved = _saved({"model": interrupted.state_dict(), "optimizer": first.state_dict()})
    assert all(group["param_rounding"] == "stochastic" for group in saved["optimizer"]["param_groups"])
    resumed = _model(dtype)
    resumed.load_state_dict(saved["model"])
    second = OPTIMIZERS[name](resumed.named_parameters(), **kwargs)
    second.load_state_dict(saved["optimizer"])
    _train(resumed, second, 4, seed=2)
    for a, b in zip(uninterrupted.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    # The two roundings draw numbers of their own: to nearest, the same run ends elsewhere.
    nearest = _model(dtype)
    _train(nearest, OPTIMIZERS[name](nearest.named_parameters(), **SETTINGS[name]), 8, seed=1)
    assert any(not torch.equal(a, b) for a, b in zip(uninterrupted.parameters(), nearest.parameters()))


def test_adam_mini_keeps_a_rounding_seed_only_where_it_rounds_stochastically():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2).bfloat16())
    optimizer = AdamMini(model.named_parameters(), param_rounding="stochastic")
    optimizer.initialize_state()
    float32_weight, bfloat16_weight = model[0].weight, model[1].weight
    assert "rounding_seed" not in optimizer.state[float32_weight]
    assert int(optimizer.state[bfloat16_weight]["rounding_seed"]) == 2  # its position, as every seed
    assert "rounding_seed" not in AdamMini(model.named_parameters()).expected_state_shapes(bfloat16_weight)


def test_adam_mini_checkpoint_without_a_seed_gets_the_seed_a_new_state_gets():
    """A state saved while a bfloat16 parameter was rounded to nearest (a checkpoint from before param_rounding, or
    param_rounding="nearest") has no rounding_seed; loaded into a stochastic optimizer, each parameter gets its
    position, the seed a new state gets. The run then equals one that switched its group to "stochastic"."""
    switched = _model(torch.bfloat16)
    optimizer = AdamMini(switched.named_parameters(), **SETTINGS["AdamMini"])
    _train(switched, optimizer, 3, seed=1)
    old = _saved({"model": switched.state_dict(), "optimizer": optimizer.state_dict()})
    for group in old["optimizer"]["param_groups"]:
        del group["param_rounding"]  # as an optimizer saved it before the option existed
    assert all("rounding_seed" not in state for state in old["optimizer"]["state"].values())
    optimizer.param_groups[0]["param_rounding"] = "stochastic"
    _train(switched, optimizer, 3, seed=2)

    resumed = _model(torch.bfloat16)
    resumed.load_state_dict(old["model"])
    stochastic = AdamMini(resumed.named_parameters(), **SETTINGS["AdamMini"], param_rounding="stochastic")
    stochastic.load_state_dict(old["optimizer"])
    assert [int(stochastic.state[p]["rounding_seed"]) for p in resumed.parameters()] == [0, 1, 2, 3]
    _train(resumed, stochastic, 3, seed=2)
    for a, b in zip(switched.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    # And back: a stochastic state loads into an optimizer that rounds to nearest (its unused seeds dropped).
    nearest = AdamMini(resumed.named_parameters(), **SETTINGS["AdamMini"])
    saved = stochastic.state_dict()
    for group in saved["param_groups"]:
        group["param_rounding"] = "nearest"
    nearest.load_state_dict(saved)
    assert all("rounding_seed" not in nearest.state[p] for p in resumed.parameters())


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_param_rounding_is_checked_per_group_and_saved(name):
    weight = torch.nn.Parameter(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"param_rounding must be 'nearest' or 'stochastic', got 'up'"):
        OPTIMIZERS[name]([("weight", weight)], param_rounding="up")
    optimizer = OPTIMIZERS[name]([("weight", weight)])
    assert optimizer.param_groups[0]["param_rounding"] == "nearest"
    with pytest.raises(ValueError, match="param_rounding in param group 1"):
        optimizer.add_param_group({"params": [("other", torch.nn.Parameter(torch.zeros(3, 2)))],
                                   "param_rounding": "down"})
    optimizer.add_param_group({"params": [("other", torch.nn.Parameter(torch.zeros(3, 2).bfloat16()))],
                               "param_rounding": "stochastic"})
    assert [group["param_rounding"] for group in optimizer.state_dict()["param_groups"]] == ["nearest", "stochastic"]
