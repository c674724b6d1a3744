"""Every hook kind of ``torch.optim.Optimizer`` (step, state_dict, load_state_dict; pre and post), on both optimizers.

The first tests port the hook tests of PyTorch's ``test/test_optim.py`` (each names its torch test). The load
tests after them check where the load hooks run: the dict a pre-hook returns is the one
checked and loaded, and post-hooks run once the state is in place, with its real dtypes.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from lit_microopt.optim import MicroAdam
from tests.optim.contract_helpers import BUILDERS, named, weight_and_bias


@pytest.fixture(params=list(BUILDERS))
def build(request):
    return BUILDERS[request.param]


def one_parameter(build):
    """An optimizer over one ``(2, 3)`` parameter, and the parameter."""
    param = torch.nn.Parameter(torch.rand(2, 3))
    return build([("param", param)]), param


def stepped(build, steps: int = 2):
    """An optimizer over torch's weight and bias after ``steps`` steps of random gradients."""
    torch.manual_seed(0)
    params = weight_and_bias()
    optimizer = build(named(params))
    for _ in range(steps):
        for param in params:
            param.grad = torch.randn_like(param)
        optimizer.step()
    return optimizer, params


# -- step hooks ----------------------------------------------------------------------------------------------


def test_step_pre_hook(build):
    # Ports test_step_pre_hook.
    optimizer, _ = one_parameter(build)
    calls = []
    handle = optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append(opt))
    optimizer.step()
    optimizer.step()
    handle.remove()
    optimizer.step()
    assert calls == [optimizer, optimizer]


def test_step_post_hook(build):
    # Ports test_step_post_hook.
    optimizer, _ = one_parameter(build)
    calls = []
    handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append(opt))
    optimizer.step()
    optimizer.step()
    handle.remove()
    optimizer.step()
    assert calls == [optimizer, optimizer]


def test_step_all_hooks(build):
    # Ports test_step_all_hooks: global and local hooks, in torch's order, on this optimizer and on an SGD.
    optimizer, param = one_parameter(build)
    sgd = torch.optim.SGD([param])
    order = []
    handles = [
        register_optimizer_step_pre_hook(lambda *_: order.append(0)),
        register_optimizer_step_post_hook(lambda *_: order.append(5)),
        optimizer.register_step_pre_hook(lambda *_: order.append(1)),
        optimizer.register_step_post_hook(lambda *_: order.append(2)),
        sgd.register_step_pre_hook(lambda *_: order.append(1)),
        sgd.register_step_post_hook(lambda *_: order.append(2)),
    ]
    try:
        optimizer.step()
        sgd.step()
        optimizer.step()
    finally:
        for handle in handles:
            handle.remove()
    optimizer.step()
    sgd.step()
    assert order == [0, 1, 2, 5] * 3


# -- state_dict hooks ------------------------------------------------------------------------------------------


def mark_state(optimizer):
    optimizer.state["test"] = 1


def report_mark(optimizer, state_dict):
    state_dict["ran_state_dict_pre_hook"] = state_dict["state"].pop("test", None) == 1
    return state_dict


def test_state_dict_pre_hook(build):
    # Ports test_state_dict_pre_hook.
    optimizer, _ = one_parameter(build)
    optimizer.register_state_dict_pre_hook(mark_state)
    assert optimizer.state_dict()["state"]["test"] == 1


def test_state_dict_post_hook(build):
    # Ports test_state_dict_post_hook.
    optimizer, _ = one_parameter(build)
    optimizer.register_state_dict_post_hook(report_mark)
    assert optimizer.state_dict()["ran_state_dict_pre_hook"] is False


def test_state_dict_pre_post_hook(build):
    # Ports test_state_dict_pre_post_hook.
    optimizer, _ = one_parameter(build)
    optimizer.register_state_dict_pre_hook(mark_state)
    optimizer.register_state_dict_post_hook(report_mark)
    state_dict = optimizer.state_dict()
    assert "test" not in state_dict["state"] and state_dict["ran_state_dict_pre_hook"] is True


# -- load_state_dict hooks: torch's tests ------------------------------------------------------------------------


def set_lr_in_place(optimizer, state_dict):
    state_dict["param_groups"][0]["lr"] = 0.002


def return_changed_copy(optimizer, state_dict):
    changed = copy.deepcopy(state_dict)
    changed["param_groups"][0]["lr"] = 0.003
    return changed


def record_after_load(optimizer):
    optimizer.state["ran_load_state_dict_pre_hook2"] = optimizer.param_groups[0]["lr"] == 0.003
    optimizer.state["ran_load_state_dict_post_hook"] = True


def test_load_state_dict_pre_hook_and_prepend(build):
    # Ports test_load_state_dict_pre_hook_and_prepend.
    optimizer, _ = one_parameter(build)
    state_dict = optimizer.state_dict()
    optimizer.register_load_state_dict_pre_hook(set_lr_in_place)
    optimizer.load_state_dict(state_dict)
    assert optimizer.param_groups[0]["lr"] == 0.002
    optimizer.register_load_state_dict_pre_hook(return_changed_copy, prepend=True)
    optimizer.load_state_dict(state_dict)
    assert optimizer.param_groups[0]["lr"] == 0.002  # the prepended hook ran first; the other one overrode it


def test_load_state_dict_post_hook(build):
    # Ports test_load_state_dict_post_hook.
    optimizer, _ = one_parameter(build)
    optimizer.register_load_state_dict_post_hook(record_after_load)
    optimizer.load_state_dict(optimizer.state_dict())
    assert optimizer.state["ran_load_state_dict_pre_hook2"] is False
    assert optimizer.state["ran_load_state_dict_post_hook"] is True


def test_load_state_dict_pre_post_hook(build):
    # Ports test_load_state_dict_pre_post_hook.
    optimizer, _ = one_parameter(build)
    optimizer.register_load_state_dict_pre_hook(return_changed_copy)
    optimizer.register_load_state_dict_post_hook(record_after_load)
    optimizer.load_state_dict(optimizer.state_dict())
    assert optimizer.state["ran_load_state_dict_pre_hook2"] is True
    assert optimizer.state["ran_load_state_dict_post_hook"] is True


# -- load_state_dict hooks: where they run -----------------------------------------------------------------------


def test_the_state_a_pre_hook_returns_is_the_one_loaded(build):
    optimizer, params = stepped(build, steps=4)  # MicroAdam's window (m=4) is full: any later step count fits
    saved = optimizer.state_dict()

    def advance_steps(opt, state_dict):
        changed = copy.deepcopy(state_dict)
        for state in changed["state"].values():
            state["step"] = state["step"] + 5
        return changed

    optimizer.register_load_state_dict_pre_hook(advance_steps)
    optimizer.load_state_dict(saved)
    assert [int(optimizer.state[param]["step"]) for param in params] == [9, 9]


def test_a_pre_hook_can_adapt_an_older_dict_before_it_is_checked(build):
    # An "older release" named one state entry differently; without the hook that renames it, the dict is refused.
    optimizer, params = stepped(build)
    older = copy.deepcopy(optimizer.state_dict())
    first_key = sorted(older["state"][0])[0]
    for state in older["state"].values():
        state[f"old_{first_key}"] = state.pop(first_key)
    with pytest.raises(ValueError, match="saved state of"):
        optimizer.load_state_dict(older)

    def rename_back(opt, state_dict):
        for state in state_dict["state"].values():
            state[first_key] = state.pop(f"old_{first_key}")

    optimizer.register_load_state_dict_pre_hook(rename_back)
    optimizer.load_state_dict(older)
    assert set(optimizer.state[params[0]]) == set(optimizer.state_dict()["state"][0])


def test_post_hooks_see_the_saved_dtypes_and_their_changes_stay(build):
    optimizer, params = stepped(build)
    saved = optimizer.state_dict()
    seen_dtypes = {}

    def inspect_and_change(opt):
        seen_dtypes.update({key: value.dtype for key, value in opt.state[params[0]].items()})
        opt.state[params[0]]["step"] = torch.tensor(42)

    optimizer.register_load_state_dict_post_hook(inspect_and_change)
    optimizer.load_state_dict(saved)
    assert seen_dtypes == {key: value.dtype for key, value in saved["state"][0].items()}
    assert int(optimizer.state[params[0]]["step"]) == 42


def test_nothing_loads_when_the_returned_dict_does_not_fit():
    optimizer, params = stepped(BUILDERS["MicroAdam"])
    before = copy.deepcopy(optimizer.state_dict())

    def break_the_layout(opt, state_dict):
        changed = copy.deepcopy(state_dict)
        changed["param_groups"][0]["m"] = 2
        changed["param_groups"][0]["lr"] = 0.5
        return changed

    optimizer.register_load_state_dict_pre_hook(break_the_layout)
    with pytest.raises(ValueError, match="m=2"):
        optimizer.load_state_dict(before)
    assert isinstance(optimizer, MicroAdam) and optimizer.param_groups[0]["lr"] == before["param_groups"][0]["lr"]
