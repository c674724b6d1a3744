"""A loaded state is checked once, in ``load_state_dict``.

The kernels trust the window: an index outside its block wrote outside the parameter (segfaults through the CPU
kernels), inf in a bucket range gave NaN parameters, a negative step an unrelated error later. Each corrupted
entry must now raise a ``ValueError`` naming the parameter and the entry, with nothing loaded.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lit_microopt.optim import AdamMini, MicroAdam
from tests.optim.contract_helpers import tensors_equal


def issue_reproduction(steps: int = 1):
    """A state that once crashed the CPU kernel: 20000 elements, blocks of 1024 (the last one of 544), a window of 4 rows."""
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(20000))
    optimizer = MicroAdam([param], m=4, block_size=1024)
    for _ in range(steps):
        param.grad = torch.randn_like(param)
        optimizer.step()
    return optimizer, param


def refused(optimizer, state_dict, pattern: str) -> None:
    """``load_state_dict`` raises ``ValueError`` matching ``pattern`` and leaves the optimizer as it was."""
    before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError, match=pattern):
        optimizer.load_state_dict(state_dict)
    assert tensors_equal(optimizer.state_dict(), before)


def test_a_negative_window_index_is_refused():
    # Without the check, the next step would write outside the parameter in the CPU kernel.
    optimizer, _ = issue_reproduction()
    state_dict = copy.deepcopy(optimizer.state_dict())
    state_dict["state"][0]["window_indices"][0, :] = -30000
    state_dict["param_groups"][0]["lr"] = 0.5  # nothing loads: not the group settings either
    refused(optimizer, state_dict, r"window_indices\[0, 0\] of param_groups\[0\]\.params\[0\] is -30000, outside its "
                                   r"block of 1024 elements")


def test_an_index_past_its_block_is_refused():
    # A flipped 0x4000 bit: the index stays positive but leaves its block (it used to train on silently).
    optimizer, _ = issue_reproduction()
    state_dict = copy.deepcopy(optimizer.state_dict())
    state_dict["state"][0]["window_indices"][0, 3] |= 0x4000
    refused(optimizer, state_dict, r"window_indices\[0, 3\] .* outside its block of 1024 elements")


def test_the_last_shorter_block_has_its_own_bound():
    optimizer, _ = issue_reproduction()
    state_dict = copy.deepcopy(optimizer.state_dict())
    last_column = state_dict["state"][0]["window_indices"].shape[1] - 1  # in the last block, of 544 elements
    state_dict["state"][0]["window_indices"][0, last_column] = 600
    refused(optimizer, state_dict, rf"window_indices\[0, {last_column}\] of .* is 600, outside its block of 544")


def test_indices_that_do_not_rise_within_a_block_are_refused():
    # block_topk writes each block's kept indices in position order; the CUDA kernels rely on it.
    optimizer, _ = issue_reproduction(steps=2)
    state_dict = copy.deepcopy(optimizer.state_dict())
    row = state_dict["state"][0]["window_indices"][1]
    row[0], row[1] = row[1].clone(), row[0].clone()
    refused(optimizer, state_dict, r"window_indices\[1, 1\] .* not above the index before it in its block")


def test_only_the_filled_rows_are_checked_and_an_intact_dict_loads():
    # After one step of m=4, rows 1 to 3 are zeros (not rising): that is what a step writes, so it loads.
    optimizer, param = issue_reproduction(steps=1)
    state_dict = copy.deepcopy(optimizer.state_dict())
    optimizer.load_state_dict(state_dict)
    state_dict["state"][0]["step"] = torch.tensor(2)  # now row 1 claims to be filled
    refused(optimizer, state_dict, r"window_indices\[1, 1\]")


@pytest.mark.parametrize("step, why", [(1.5, "a whole number >= 0"), ("1", "a whole number >= 0")])
def test_a_step_of_the_wrong_type_is_blamed_alone(step, why):
    # Issue 15, item 2: the message used to blame m, density and block_size when only the step's type differed.
    optimizer, _ = issue_reproduction()
    state_dict = copy.deepcopy(optimizer.state_dict())
    state_dict["state"][0]["step"] = step
    before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError, match=f"saved step of .* is {step!r}, but it must be {why}") as raised:
        optimizer.load_state_dict(state_dict)
    assert "density" not in str(raised.value)
    assert tensors_equal(optimizer.state_dict(), before)


def test_a_converted_dtype_is_blamed_alone():
    optimizer, _ = issue_reproduction()
    state_dict = copy.deepcopy(optimizer.state_dict())
    state_dict["state"][0]["window_values"] = state_dict["state"][0]["window_values"].float()
    with pytest.raises(ValueError, match=r"saved window_values of .* is torch.float32 .* needs torch.bfloat16 .*; "
                                         r"state_dict\(\) keeps every dtype") as raised:
        optimizer.load_state_dict(state_dict)
    assert "density" not in str(raised.value)


def test_a_negative_step_is_refused():
    optimizer, _ = issue_reproduction()
    state_dict = copy.deepcopy(optimizer.state_dict())
    state_dict["state"][0]["step"] = torch.tensor(-3)
    refused(optimizer, state_dict, r"saved step of param_groups\[0\]\.params\[0\] is tensor\(-3\), but it must be a "
                                   r"whole number >= 0")


@pytest.mark.parametrize("key, value", [("bucket_max", float("inf")), ("bucket_min", float("-inf")),
                                        ("window_values", float("nan"))])
def test_non_finite_window_values_and_bucket_ranges_are_refused(key, value):
    optimizer, _ = issue_reproduction()
    state_dict = copy.deepcopy(optimizer.state_dict())
    state_dict["state"][0][key].view(-1)[5] = value
    where = r"\[0, 5\]" if key == "window_values" else r"\[5\]"
    refused(optimizer, state_dict, rf"saved {key}{where} of param_groups\[0\]\.params\[0\] is {value}, but it must be "
                                   r"finite")


def adam_mini_stepped():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = AdamMini(model.named_parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return optimizer


@pytest.mark.parametrize("key, value, pattern", [
    ("step", torch.tensor(-1), r"saved step of weight is tensor\(-1\), but it must be a whole number >= 0"),
    ("exp_avg", float("nan"), r"saved exp_avg\[0, 0\] of weight is nan, but it must be finite"),
    ("exp_avg_sq", float("inf"), r"saved exp_avg_sq\[0\] of weight is inf, but it must be finite"),
    ("exp_avg_sq", -1.0, r"saved exp_avg_sq\[0\] of weight is -1.0, but it must be >= 0"),
])
def test_adam_mini_refuses_a_negative_step_and_impossible_moments(key, value, pattern):
    optimizer = adam_mini_stepped()
    state_dict = copy.deepcopy(optimizer.state_dict())
    if key == "step":
        state_dict["state"][0]["step"] = value
    else:
        state_dict["state"][0][key].view(-1)[0] = value
    refused(optimizer, state_dict, pattern)
