"""Absurd hyper-parameters and repeated parameters are refused.

``lr=inf`` or ``weight_decay=inf`` used to turn the first step into NaN parameters, and a parameter given twice
was stepped twice (torch only warns, or names no tensor). Both optimizers now raise ``ValueError``.
"""

from __future__ import annotations

import math

import pytest
import torch

from lit_microopt.optim import AdamMini, MicroAdam

ABSURD = [("lr", math.inf), ("lr", math.nan), ("weight_decay", math.inf), ("weight_decay", math.nan)]


def named_linear():
    return list(torch.nn.Linear(4, 3).named_parameters())


@pytest.mark.parametrize("optimizer_class", [MicroAdam, AdamMini])
@pytest.mark.parametrize("key, value", ABSURD)
def test_infinite_or_nan_lr_and_weight_decay_are_refused(optimizer_class, key, value):
    with pytest.raises(ValueError, match=rf"{key} must be >= 0 and finite, got {value}"):
        optimizer_class(named_linear(), **{key: value})
    with pytest.raises(ValueError, match=rf"{key} in param group 1 must be >= 0 and finite"):
        optimizer_class([{"params": named_linear()[:1]}, {"params": named_linear()[1:], key: value}])
    optimizer = optimizer_class(named_linear())
    with pytest.raises(ValueError, match=rf"{key} in param group 1 must be >= 0 and finite"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "param_names": ["extra"], key: value})
    assert len(optimizer.param_groups) == 1


def test_an_infinite_tensor_lr_is_refused():
    with pytest.raises(ValueError, match="lr must be >= 0 and finite, got inf"):
        MicroAdam([torch.nn.Parameter(torch.zeros(3))], lr=torch.tensor(math.inf))


def test_microadam_refuses_a_parameter_given_twice_in_one_group():
    param, other = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=r"params\[2\] in param group 0 is the same tensor as params\[0\]"):
        MicroAdam([param, other, param])
    with pytest.raises(ValueError, match=r"MicroAdam: b in param group 0 is the same tensor as a"):
        MicroAdam([("a", param), ("b", param)])


@pytest.mark.parametrize("optimizer_class", [MicroAdam, AdamMini])
def test_a_parameter_in_two_groups_is_refused_by_name(optimizer_class):
    (weight_name, weight), (bias_name, bias) = named_linear()
    with pytest.raises(ValueError, match=r"again in param group 1 is already in the optimizer as weight"):
        optimizer_class([{"params": [(weight_name, weight), (bias_name, bias)]}, {"params": [("again", weight)]}])
    optimizer = optimizer_class([(weight_name, weight)])
    with pytest.raises(ValueError, match=r"in param group 1 is already in the optimizer as weight"):
        optimizer.add_param_group({"params": [weight], "param_names": ["weight_again"]})
    assert len(optimizer.param_groups) == 1


def test_adam_mini_refuses_a_parameter_given_twice_under_one_name():
    # A tensor under two names is a tied weight, stepped once under the first name; under one name it is a mistake.
    (name, weight), _ = named_linear()
    with pytest.raises(ValueError, match=r"AdamMini: weight is given twice"):
        AdamMini([(name, weight), (name, weight)])
    tied = AdamMini([(name, weight), ("tied.weight", weight)])
    assert tied.param_groups[0]["param_names"] == ["weight"]
