"""How many bytes an optimizer's state holds, for any ``torch.optim.Optimizer``.

Tensors are counted by the storage they really hold: a tensor subclass (a quantized 8-bit state, a
``DTensor`` shard) by the plain tensors it is made of, and a storage shared by several state tensors once.
Tensors on the meta device count their logical size, so that layouts can be sized without allocating:
:func:`initialize_state` creates an optimizer's state without a step, on meta parameters of any size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from lit_microopt.optim._common import ExactStateOptimizer


def _plain_tensors(value: Any) -> Iterator[torch.Tensor]:
    """The plain tensors inside a state value (tensors, subclasses, and containers of them)."""
    if isinstance(value, torch.Tensor):
        if is_traceable_wrapper_subclass(value):
            inner_names, _ = value.__tensor_flatten__()
            for name in inner_names:
                yield from _plain_tensors(getattr(value, name))
        else:
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _plain_tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _plain_tensors(item)


def tensors_bytes(values: Iterable[Any]) -> int:
    """Bytes of storage held by the tensors in ``values``, each storage counted once."""
    seen: set[tuple[torch.device, int]] = set()
    total = 0
    for tensor in (t for value in values for t in _plain_tensors(value)):
        if tensor.device.type == "meta":
            total += tensor.numel() * tensor.element_size()
            continue
        storage = tensor.untyped_storage()
        key = (tensor.device, storage.data_ptr())
        if storage.nbytes() and key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of state held by ``optimizer`` (its per-parameter ``state``).

    Example:
        >>> model = torch.nn.Linear(1000, 1000)
        >>> optimizer = torch.optim.AdamW(model.parameters())
        >>> model(torch.randn(4, 1000)).sum().backward(); optimizer.step()
        >>> optimizer_state_bytes(optimizer) // 1_001_000  # exp_avg and exp_avg_sq in float32
        8
    """
    return tensors_bytes(optimizer.state.values())


def _local_numel(param: torch.Tensor) -> int:
    to_local = getattr(param, "to_local", None)  # DTensor: this process's shard
    return to_local().numel() if callable(to_local) else param.numel()


def state_bytes_per_parameter(optimizer: torch.optim.Optimizer) -> float:
    """Bytes of state per parameter element that ``optimizer`` updates (0.0 without parameters)."""
    numel = sum(_local_numel(p) for group in optimizer.param_groups for p in group["params"])
    return optimizer_state_bytes(optimizer) / numel if numel else 0.0


def initialize_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the state that the first ``step()`` would create, for every parameter that has none, with no update.

    With parameters on the meta device this sizes an optimizer's real state layout at any scale without
    allocating it: :func:`optimizer_state_bytes` then counts the meta tensors by their logical size.

    - MicroAdam and AdamMini create it with their own :meth:`~lit_microopt.optim._common.ExactStateOptimizer.initialize_state`,
      the same code their first step runs, on any device (zero-filled; parameters without elements get none).
    - Any other optimizer takes one step with its parameters on the meta device, where PyTorch computes shapes
      only: nothing is allocated and no parameter changes. Missing gradients are stood in for by empty meta
      tensors during that step and removed afterwards.

    Args:
        optimizer: the optimizer whose state to create.

    Raises:
        ValueError: the optimizer is neither MicroAdam nor AdamMini and has a parameter off the meta device
            (a real step would change it).

    Example:
        >>> with torch.device("meta"):
        ...     model = torch.nn.Linear(4096, 4096, bias=False)
        >>> optimizer = torch.optim.AdamW(model.parameters())
        >>> initialize_state(optimizer)
        >>> optimizer_state_bytes(optimizer) // 4096**2  # exp_avg and exp_avg_sq in float32
        8
    """
    params = [param for group in optimizer.param_groups for param in group["params"]]
    if isinstance(optimizer, ExactStateOptimizer):
        optimizer.initialize_state()
        return
    off_meta = [index for index, param in enumerate(params) if param.device.type != "meta"]
    if off_meta:
        raise ValueError(
            f"initialize_state: {type(optimizer).__name__} would have to take a real step, but parameter "
            f"{off_meta[0]} (in param-group order) is on {params[off_meta[0]].device}; build the model on the "
            "meta device (with torch.device('meta'): ...) to size its state."
        )
    stand_ins = [param for param in params if param.grad is None]
    for param in stand_ins:
        param.grad = torch.empty_like(param)
    try:
        optimizer.step()
    finally:
        for param in stand_ins:
            param.grad = None
