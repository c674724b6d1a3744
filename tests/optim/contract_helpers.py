"""The two optimizers as PyTorch's optimizer tests see them: small settings, built from named or plain parameters.

PyTorch's generic tests (``test/test_optim.py``, driven by the ``OptimizerInfo`` entries of
``torch/testing/_internal/common_optimizers.py``) build an optimizer from a few tiny tensors. MicroAdam's defaults
(blocks of 8192, 1 % kept) would keep one entry of such a tensor, so the ports use small blocks and a dense window,
which makes every step move every element, as the torch tests expect.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from lit_microopt.optim import AdamMini, MicroAdam

MICROADAM_SETTINGS = dict(lr=1e-2, m=4, density=0.5, block_size=4, quant_bucket_size=4)
ADAM_MINI_SETTINGS = dict(lr=1e-2)


def build_microadam(named_params: Sequence[tuple[str, torch.Tensor]], named: bool = True, **kwargs) -> MicroAdam:
    """A MicroAdam with small blocks over ``named_params`` (given with their names, or as plain tensors)."""
    params = list(named_params) if named else [param for _, param in named_params]
    return MicroAdam(params, **{**MICROADAM_SETTINGS, **kwargs})


def build_adam_mini(named_params: Sequence[tuple[str, torch.Tensor]], named: bool = True, **kwargs) -> AdamMini:
    """An AdamMini over ``named_params``; it needs the names (documented), so an unnamed variant is skipped."""
    if not named:
        pytest.skip("AdamMini needs parameter names (docs/torch_optim_contract.md)")
    return AdamMini(list(named_params), **{**ADAM_MINI_SETTINGS, **kwargs})


BUILDERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"MicroAdam": build_microadam, "AdamMini": build_adam_mini}


def named(params: Sequence[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """``params`` with torch's test names (``name0``, ``name1``, ...); AdamMini reads ``name1`` (1-D) as a norm."""
    return [(f"name{index}", param) for index, param in enumerate(params)]


def weight_and_bias(dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """The ``(2, 3)`` weight and ``(2,)`` bias most of torch's optimizer tests use."""
    return (torch.nn.Parameter(torch.randn(2, 3, dtype=dtype)), torch.nn.Parameter(torch.randn(2, dtype=dtype)))


def linear_loss(weight: torch.Tensor, bias: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """torch's test loss: ``(w x + b)^2`` summed."""
    return (weight.mv(inputs) + bias).pow(2).sum()


def step_with_loss(optimizer: torch.optim.Optimizer, weight: torch.Tensor, bias: torch.Tensor,
                   inputs: torch.Tensor) -> torch.Tensor:
    """Zero the gradients, back-propagate :func:`linear_loss`, step; the loss before the step."""
    optimizer.zero_grad()
    loss = linear_loss(weight, bias, inputs)
    loss.backward()
    optimizer.step()
    return loss.detach()


def tensors_equal(first: object, second: object) -> bool:
    """Whether two nested structures of dicts, lists and tensors are equal, tensors bit for bit with their dtypes."""
    if isinstance(first, torch.Tensor) or isinstance(second, torch.Tensor):
        return (isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor) and first.dtype == second.dtype
                and first.shape == second.shape and torch.equal(first, second))
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(tensors_equal(first[key], second[key]) for key in first)
    if isinstance(first, (list, tuple)) and isinstance(second, (list, tuple)):
        return len(first) == len(second) and all(tensors_equal(a, b) for a, b in zip(first, second))
    return first == second
