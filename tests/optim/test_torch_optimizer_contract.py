"""PyTorch's generic optimizer tests, ported to MicroAdam and AdamMini.

Each test names the test of PyTorch's ``test/test_optim.py`` (class ``TestOptimRenewed``) that it ports. What the
optimizers document as different (``docs/torch_optim_contract.md``) is skipped or asserted as the difference:
AdamMini needs parameter names, neither optimizer takes complex parameters. The hook tests are in
``test_torch_optimizer_hooks.py``, ``torch.compile`` in ``test_torch_compile_step.py``.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

from lit_microopt.optim import AdamMini, MicroAdam
from tests.optim.contract_helpers import (
    BUILDERS,
    linear_loss,
    named,
    step_with_loss,
    tensors_equal,
    weight_and_bias,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=list(BUILDERS))
def build(request):
    """Builds the optimizer under test: ``build(named_params, named=True, **settings)``."""
    return BUILDERS[request.param]


def primed(build, steps: int = 3, named_optimizer: bool = True):
    """An optimizer over torch's weight and bias after ``steps`` steps, with the tensors and the input."""
    torch.manual_seed(0)
    weight, bias = weight_and_bias()
    inputs = torch.randn(3)
    optimizer = build(named([weight, bias]), named=named_optimizer)
    for _ in range(steps):
        step_with_loss(optimizer, weight, bias, inputs)
    return optimizer, weight, bias, inputs


def without_param_names(state_dict: dict) -> dict:
    state_dict = copy.deepcopy(state_dict)
    for group in state_dict["param_groups"]:
        group.pop("param_names", None)
    return state_dict


# -- copies ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_deepcopy_copies_all_public_attrs(build, how):
    # Ports test_deepcopy_copies_all_public_attrs, and goes on: the copy steps like the original.
    optimizer, weight, bias, inputs = primed(build)
    duplicate = copy.deepcopy(optimizer) if how == "deepcopy" else pickle.loads(pickle.dumps(optimizer))

    def public(obj):
        return {key for key in obj.__dict__ if not key.startswith("_")}

    assert public(duplicate) == public(optimizer)
    # Beyond torch's test: every attribute is kept, private ones included; only the hooks are left out, as in torch.
    not_hooks = {key for key in vars(optimizer) if not key.startswith("_optimizer_")}
    assert not_hooks <= set(vars(duplicate))
    weight_copy, bias_copy = duplicate.param_groups[0]["params"]
    for _ in range(3):
        step_with_loss(optimizer, weight, bias, inputs)
        step_with_loss(duplicate, weight_copy, bias_copy, inputs)
    assert torch.equal(weight, weight_copy) and torch.equal(bias, bias_copy)
    assert tensors_equal(optimizer.state_dict(), duplicate.state_dict())


# -- state dicts -----------------------------------------------------------------------------------------------


def test_load_nontensor_step(build):
    # Ports test_load_nontensor_step: steps saved as Python numbers load, and the optimizer goes on stepping.
    optimizer, weight, bias, inputs = primed(build)
    state_dict = copy.deepcopy(optimizer.state_dict())
    for state in state_dict["state"].values():
        state["step"] = state["step"].item()
    reference = copy.deepcopy(optimizer)
    optimizer.load_state_dict(state_dict)
    assert all(state["step"].dtype == torch.int64 for state in optimizer.state.values())
    weight_copy, bias_copy = reference.param_groups[0]["params"]
    step_with_loss(optimizer, weight, bias, inputs)
    step_with_loss(reference, weight_copy, bias_copy, inputs)
    assert torch.equal(weight, weight_copy) and torch.equal(bias, bias_copy)


@pytest.mark.parametrize("named_first", [True, False], ids=["named0", "unnamed0"])
@pytest.mark.parametrize("named_second", [True, False], ids=["named1", "unnamed1"])
def test_state_dict_deterministic(build, named_first, named_second):
    # Ports test_state_dict_deterministic: a state loaded into an optimizer of equal parameters steps identically.
    optimizer, weight, bias, inputs = primed(build, steps=10, named_optimizer=named_first)
    with torch.no_grad():
        weight_copy, bias_copy = torch.nn.Parameter(weight.clone()), torch.nn.Parameter(bias.clone())
    twin = build(named([weight_copy, bias_copy]), named=named_second)
    twin.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for _ in range(10):
        step_with_loss(optimizer, weight, bias, inputs)
        step_with_loss(twin, weight_copy, bias_copy, inputs)
        assert torch.equal(weight, weight_copy) and torch.equal(bias, bias_copy)
    assert tensors_equal(without_param_names(optimizer.state_dict()), without_param_names(twin.state_dict()))
    # Repeated param groups have the same representation (torch's #36831).
    twin.param_groups.extend(twin.param_groups)
    assert tensors_equal(without_param_names(optimizer.state_dict())["param_groups"][-1],
                         without_param_names(twin.state_dict())["param_groups"][-1])


def test_can_load_older_state_dict(build):
    # Ports test_can_load_older_state_dict: a dict without the group settings added after a release (here every
    # setting but torch's four, and the names) loads, keeps this optimizer's values for them, and steps.
    optimizer, weight, bias, inputs = primed(build)
    older = copy.deepcopy(optimizer.state_dict())
    for group in older["param_groups"]:
        for key in list(group):
            if key not in ("params", "lr", "betas", "eps", "weight_decay"):
                del group[key]
    settings = {key: value for key, value in optimizer.param_groups[0].items() if key != "params"}
    optimizer.load_state_dict(older)
    assert {key: value for key, value in optimizer.param_groups[0].items() if key != "params"} == settings
    step_with_loss(optimizer, weight, bias, inputs)


@pytest.mark.parametrize("named_first", [True, False], ids=["named0", "unnamed0"])
@pytest.mark.parametrize("named_second", [True, False], ids=["named1", "unnamed1"])
def test_can_load_from_to_named_state_dict(build, named_first, named_second):
    # Ports test_can_load_from_to_named_state_dict: names are kept when either side has them.
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.LayerNorm(2))
    inputs = torch.rand(3, 4)
    optimizer = build(list(model.named_parameters()), named=named_first)
    for _ in range(3):
        optimizer.zero_grad()
        model(inputs).sum().backward()
        optimizer.step()
    second = build(list(model.named_parameters()), named=named_second)
    second.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    second.zero_grad()
    model(inputs).sum().backward()
    second.step()
    if named_first or named_second:
        assert second.state_dict()["param_groups"][0]["param_names"] == ["0.weight", "0.bias", "1.weight", "1.bias"]


@pytest.mark.parametrize("named_optimizer", [True, False], ids=["named", "unnamed"])
def test_save_load_equality_with_weights_only(build, named_optimizer):
    # Ports test_save_load_equality_with_weights_only: torch.save, then torch.load with and without weights_only.
    optimizer, *_ = primed(build, named_optimizer=named_optimizer)
    state_dict = optimizer.state_dict()
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    for weights_only in (False, True):
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=weights_only)
        assert tensors_equal(loaded, state_dict)
    optimizer.load_state_dict(loaded)
    assert tensors_equal(optimizer.state_dict(), state_dict)


def test_non_empty_state(build):
    # Ports test_non_empty_state: every parameter that stepped has state.
    model = torch.nn.Linear(5, 5)
    optimizer = build(list(model.named_parameters()))
    model(torch.rand(2, 5)).sum().backward()
    optimizer.step()
    assert len(optimizer.state) == 2 and all(len(state) > 0 for state in optimizer.state.values())


# -- printing, param groups, learning rates -------------------------------------------------------------------


def test_optimizer_can_be_printed(build):
    # Ports test_optimizer_can_be_printed, and checks what the print shows: the class and each group's settings.
    optimizer, *_ = primed(build, steps=0)
    text = repr(optimizer)
    assert text.startswith(type(optimizer).__name__) and "lr: 0.01" in text and "Parameter Group 0" in text


def test_param_groups_lr(build):
    # Ports test_param_groups_lr: a group's own lr is used; a group whose lr is almost 0 does not move.
    torch.manual_seed(0)
    weight, bias = weight_and_bias()
    irrelevant = torch.nn.Parameter(torch.randn(2, 2))
    irrelevant_before = irrelevant.detach().clone()
    inputs = torch.randn(3)
    optimizer = build(named([weight, bias]), lr=1e-28)
    optimizer.param_groups[0]["lr"] = 1e-2
    # The irrelevant group is added after the first step, as fine-tuning adds unfrozen layers (add_param_group).
    initial = step_with_loss(optimizer, weight, bias, inputs)
    optimizer.add_param_group({"params": [irrelevant], "param_names": ["irrelevant"]})
    for _ in range(20):
        optimizer.zero_grad()
        loss = linear_loss(weight, bias, inputs)
        loss.backward()
        irrelevant.grad = torch.rand_like(irrelevant)
        optimizer.step()
    assert loss < initial
    assert optimizer.param_groups[1]["lr"] == 1e-28 and torch.equal(irrelevant, irrelevant_before)
    assert optimizer.state[irrelevant]["step"] == 20


def test_param_groups_weight_decay(build):
    # Ports test_param_groups_weight_decay: a group's own weight decay applies to that group only.
    torch.manual_seed(0)
    weight, bias = weight_and_bias()
    inputs = torch.randn(3)
    optimizer = build([("weight", weight)], weight_decay=0.0)
    optimizer.add_param_group({"params": [bias], "param_names": ["bias"], "weight_decay": 0.5})
    initial = step_with_loss(optimizer, weight, bias, inputs)
    for _ in range(20):
        loss = step_with_loss(optimizer, weight, bias, inputs)
    assert loss < initial
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.0, 0.5]


def test_tensor_lr(build):
    # Ports test_tensor_lr: a one-element tensor lr steps exactly as the same float lr.
    torch.manual_seed(0)
    weight, bias = weight_and_bias()
    with torch.no_grad():
        weight_copy, bias_copy = torch.nn.Parameter(weight.clone()), torch.nn.Parameter(bias.clone())
    inputs = torch.randn(3)
    with_float = build(named([weight, bias]), lr=0.01)
    with_tensor = build(named([weight_copy, bias_copy]), lr=torch.tensor(0.01))
    for _ in range(5):
        step_with_loss(with_float, weight, bias, inputs)
        step_with_loss(with_tensor, weight_copy, bias_copy, inputs)
    assert torch.equal(weight, weight_copy) and torch.equal(bias, bias_copy)


@pytest.mark.parametrize("scheduler", ["StepLR", "OneCycleLR", "ReduceLROnPlateau"])
def test_param_group_with_lrscheduler_goes_right_direction(build, scheduler):
    # Ports test_param_group_with_lrscheduler_goes_right_direction: training with a scheduler lowers the loss, and
    # the scheduler's values (OneCycleLR cycles betas too) are the ones the steps read.
    torch.manual_seed(0)
    weight, bias = weight_and_bias()
    inputs = torch.randn(3)
    optimizer = build(named([weight, bias]))
    schedule = {
        "StepLR": lambda: torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5),
        "OneCycleLR": lambda: torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=20),
        "ReduceLROnPlateau": lambda: torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=1),
    }[scheduler]()
    initial = linear_loss(weight, bias, inputs).item()
    for _ in range(20):
        loss = step_with_loss(optimizer, weight, bias, inputs)
        schedule.step(loss) if scheduler == "ReduceLROnPlateau" else schedule.step()
    assert linear_loss(weight, bias, inputs).item() < initial
    if scheduler == "StepLR":
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**4)


def test_forloop_goes_right_direction(build):
    # Ports test_forloop_goes_right_direction, stepping through a closure: step(closure) re-evaluates the loss
    # with gradients enabled and returns it.
    torch.manual_seed(0)
    weight, bias = weight_and_bias()
    inputs = torch.randn(3)
    optimizer = build(named([weight, bias]))

    def closure():
        optimizer.zero_grad()
        loss = linear_loss(weight, bias, inputs)
        loss.backward()
        return loss

    initial = linear_loss(weight, bias, inputs).item()
    for _ in range(20):
        returned = optimizer.step(closure)
        assert isinstance(returned, torch.Tensor) and returned.grad_fn is not None
    assert linear_loss(weight, bias, inputs).item() < initial


# -- gradients: missing, zero, of several dtypes ----------------------------------------------------------------


def test_step_is_noop_when_params_have_no_grad(build):
    # Ports test_step_is_noop_when_params_have_no_grad, with one parameter that has a gradient: only it moves,
    # only it gets state.
    stepped, skipped = torch.nn.Parameter(torch.randn(2, 3)), torch.nn.Parameter(torch.randn(2, 3))
    skipped_before = skipped.detach().clone()
    optimizer = build([("stepped", stepped), ("skipped", skipped)])
    assert optimizer.step(lambda: torch.tensor([1.0])) == torch.tensor([1.0])  # no gradient at all: nothing to do
    stepped.grad = torch.randn_like(stepped)
    optimizer.step()
    assert torch.equal(skipped, skipped_before) and skipped not in optimizer.state
    assert optimizer.state[stepped]["step"] == 1


def test_step_is_noop_for_zero_grads(build):
    # Ports test_step_is_noop_for_zero_grads.
    param = torch.nn.Parameter(torch.randn(5, 1))
    before = param.detach().clone()
    optimizer = build([("param", param)])
    param.grad = torch.zeros_like(param)
    optimizer.step(lambda: torch.tensor([1.0]))
    assert torch.equal(param, before)


def test_mixed_device_dtype(build):
    # Ports the dtype half of test_mixed_device_dtype (one device here): parameters of float32, bfloat16 and
    # float16 in one optimizer step exactly as each would alone.
    torch.manual_seed(0)
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    together = [torch.nn.Parameter(torch.randn(4, 3, dtype=dtype)) for dtype in dtypes]
    alone = [torch.nn.Parameter(param.detach().clone()) for param in together]
    optimizer = build(named(together))
    singles = [build([(f"name{index}", param)]) for index, param in enumerate(alone)]
    for _ in range(3):
        gradients = [torch.randn(4, 3).to(dtype) for dtype in dtypes]
        for param, twin, gradient in zip(together, alone, gradients):
            param.grad, twin.grad = gradient.clone(), gradient.clone()
        optimizer.step()
        for single in singles:
            single.step()
    for param, twin in zip(together, alone):
        assert param.dtype == twin.dtype and torch.equal(param, twin)


@pytest.mark.parametrize("optimizer_class", [MicroAdam, AdamMini])
def test_complex(optimizer_class):
    # test_complex does not apply: complex parameters are refused (documented), before anything changes.
    param = torch.nn.Parameter(torch.randn(2, 3, dtype=torch.complex64))
    with pytest.raises(TypeError, match="complex"):
        optimizer_class([("param", param)])
