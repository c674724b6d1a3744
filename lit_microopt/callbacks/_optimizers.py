"""Finding the optimizer a monitoring callback should read, and naming it in the logged metrics.

Training frameworks wrap optimizers: Lightning's ``LightningOptimizer`` keeps the user's optimizer in
``_optimizer``, ``torch.distributed.optim.ZeroRedundancyOptimizer`` keeps the optimizer of this process's shard
in ``optim``, DeepSpeed and several other wrappers keep theirs in ``optimizer``. The callbacks read the
innermost one, whose class and state are the real ones.

Names follow Lightning's ``LearningRateMonitor``: optimizers that would share a name get ``-1``, ``-2``, ...
suffixes in order, and param groups are named only when an optimizer has several of them, by their ``"name"``
entry or else ``pg1``, ``pg2``, ...
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

#: Attributes under which known wrappers keep the optimizer they wrap, tried in this order.
WRAPPED_OPTIMIZER_ATTRIBUTES = ("_optimizer", "optim", "optimizer")


def unwrap_optimizer(optimizer: Any) -> Any:
    """The innermost optimizer inside ``optimizer`` (``optimizer`` itself when it wraps none).

    An attribute counts as a wrapped optimizer only when it has ``param_groups``, so that a training object with
    an unrelated ``optimizer`` attribute is not mistaken for a wrapper.
    """
    seen = {id(optimizer)}
    while True:
        for attribute in WRAPPED_OPTIMIZER_ATTRIBUTES:
            inner = getattr(optimizer, attribute, None)
            if inner is not None and id(inner) not in seen and hasattr(inner, "param_groups"):
                break
        else:
            return optimizer
        seen.add(id(inner))
        optimizer = inner


def deduplicate(names: Sequence[str]) -> list[str]:
    """``names`` with later repeats suffixed ``-1``, ``-2``, ...: ``[a, a, b]`` -> ``[a, a-1, b]``."""
    seen: Counter[str] = Counter()
    unique = []
    for name in names:
        unique.append(f"{name}-{seen[name]}" if seen[name] else name)
        seen[name] += 1
    return unique


def param_group_names(optimizer: Any) -> list[str]:
    """One distinct name per param group when there are several (``"name"`` entry, else ``pgN``); ``[]`` for one."""
    groups = optimizer.param_groups
    if len(groups) < 2:
        return []
    return deduplicate([str(group.get("name") or f"pg{index + 1}") for index, group in enumerate(groups)])


def layer_of(parameter_name: str) -> str:
    """The model layer a parameter belongs to, for per-layer summaries.

    Repeated blocks are numbered in parameter names, so a name is cut after its first number
    (``model.layers.3.mlp.up_proj.weight`` -> ``model.layers.3``, ``0.weight`` -> ``0``). A name without a number
    gives its module (``lm_head.weight`` -> ``lm_head``), a top-level parameter its own name.
    """
    parts = parameter_name.split(".")
    for index, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: index + 1])
    return ".".join(parts[:-1]) or parameter_name


__all__ = ["deduplicate", "layer_of", "param_group_names", "unwrap_optimizer"]
