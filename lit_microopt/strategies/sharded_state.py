"""Sharded optimizer state (ZeRO stage 1) for optimizers whose state is per parameter, on ``torch.distributed``.

Every rank owns a share of the parameters, whole tensors assigned greedily by size, and is the only one to step
them: the optimizer object itself is unchanged (MicroAdam's windows, Adam-mini's named, role-aware partition and
every param group stay as built), but on each rank the gradients of the parameters it does not own are hidden
during ``step()``, so the optimizer skips them and never creates their state. After the step each owner
broadcasts its parameters. State per rank is about ``1 / world`` of the whole, and a parameter's update is the
one an unsharded run computes, bit for bit, since it reads the same (already averaged) gradient, step count and
rounding seed.

:class:`OptimizerStateSharding` attaches to an optimizer through its step hooks, so LR schedulers, gradient
clipping, ``GradScaler`` and the monitoring callbacks see the optimizer they built. Its checkpoints are gathered on
one rank into exactly the state dict of an unsharded run, and any full state dict can be loaded on any number of
ranks (each keeps its share), so a run may resume on a different number of processes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from lit_microopt.optim import AdamMini, MicroAdam, check_gradients_finite, parameter_names

log = logging.getLogger(__name__)

#: Optimizers whose update of a parameter reads only that parameter's gradient and state: sharding them by
#: whole parameters leaves every update unchanged.
SHARDABLE_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (
    MicroAdam, AdamMini, torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD,
)
#: Parameters are broadcast after the step in buckets of at most this many bytes.
BROADCAST_BUCKET_BYTES = 32 * 2**20


def assign_owners(sizes: Sequence[int], world_size: int) -> list[int]:
    """The rank that owns each parameter: largest first, each to the rank with the fewest elements so far.

    Ties go to the lower rank and to the earlier parameter, so every rank computes the same assignment.

    Args:
        sizes: the number of elements of each parameter, in the optimizer's order.
        world_size: the number of ranks.

    Example:
        >>> assign_owners([100, 10, 60, 50], world_size=2)
        [0, 0, 1, 1]
    """
    loads = [0] * world_size
    owners = [0] * len(sizes)
    for position in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owners[position] = rank
        loads[rank] += sizes[position]
    return owners


def _state_to_cpu(state: dict[str, Any]) -> dict[str, Any]:
    return {key: value.detach().cpu() if isinstance(value, torch.Tensor) else value for key, value in state.items()}


class OptimizerStateSharding:
    """ZeRO stage 1 for one optimizer: each rank keeps and updates the state of its own share of the parameters.

    Build it on every rank after the process group is up and the optimizer exists; :meth:`attach` hooks it into the
    optimizer's ``step()``, :meth:`detach` undoes that. The gradients must be the same on every rank when
    ``step()`` runs (as after DDP's all-reduce or the compression hook).

    Args:
        optimizer: an instance of one of :data:`SHARDABLE_OPTIMIZERS` (per-parameter state).
        process_group: the data-parallel group; ``None`` for the default (whole world).

    Raises:
        TypeError: the optimizer's updates are not known to be per parameter.

    Example::

        sharding = OptimizerStateSharding(optimizer)
        sharding.attach()
        loss.backward(); optimizer.step(); optimizer.zero_grad()   # each rank steps its share, then broadcasts
        full = sharding.consolidated_state_dict()                    # the unsharded state dict on rank 0
        sharding.load_state_dict(full)                               # every rank keeps its share
    """

    def __init__(self, optimizer: torch.optim.Optimizer, process_group: Any = None) -> None:
        if not isinstance(optimizer, SHARDABLE_OPTIMIZERS):
            names = ", ".join(cls.__name__ for cls in SHARDABLE_OPTIMIZERS)
            raise TypeError(
                f"OptimizerStateSharding: {type(optimizer).__name__} is not known to keep per-parameter state; "
                f"shard one of {names}, or train without sharding (shard_optimizer_state=False)."
            )
        self.optimizer = optimizer
        self.process_group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        self.parameters = [param for group in optimizer.param_groups for param in group["params"]]
        #: The owning rank of each parameter, in ``state_dict`` order.
        self.owners = assign_owners([param.numel() for param in self.parameters], self.world_size)
        self._buckets = self._broadcast_buckets()
        self._hidden: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._handles: list[Any] = []

    # -- stepping ----------------------------------------------------------------------------------------

    def attach(self) -> None:
        """Hook into the optimizer's ``step()``: hide the other ranks' gradients before it, broadcast after it."""
        if not self._handles:
            self._handles = [
                self.optimizer.register_step_pre_hook(self._before_step),
                self.optimizer.register_step_post_hook(self._after_step),
            ]

    def detach(self) -> None:
        """Remove the hooks: the optimizer steps every parameter again (its state keeps only this rank's share)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _before_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        # ``args`` are those of ``step`` with the optimizer first: ``(optimizer, closure)`` or ``(optimizer,)``.
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:  # the gradients are ready (GradScaler, manual optimization)
            self._hide_foreign_gradients()
            return None

        # Lightning's closure runs forward, backward and gradient clipping: hide after it, not before.
        def closure_then_hide() -> Any:
            loss = closure()
            self._hide_foreign_gradients()
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": closure_then_hide}
        return (args[0], closure_then_hide, *args[2:]), kwargs

    def _hide_foreign_gradients(self) -> None:
        if getattr(self.optimizer, "check_finite", False):
            # Every rank checks every gradient: a non-finite one stops all ranks alike, not only its owner.
            named = zip(parameter_names(self.optimizer), self.parameters)
            check_gradients_finite(type(self.optimizer).__name__,
                                   [(name, param.grad) for name, param in named if param.grad is not None])
        self._hidden = []
        for param, owner in zip(self.parameters, self.owners):
            if owner != self.rank and param.grad is not None:
                self._hidden.append((param, param.grad))
                param.grad = None

    def _after_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        for param, grad in self._hidden:
            param.grad = grad
        self._hidden = []
        self.broadcast_parameters()

    def _broadcast_buckets(self) -> list[tuple[int, list[torch.Tensor]]]:
        """The parameters grouped for broadcasting: one owner, device and dtype per bucket, buckets of bounded size."""
        buckets: list[tuple[int, list[torch.Tensor]]] = []
        open_buckets: dict[tuple[int, torch.device, torch.dtype], list[torch.Tensor]] = {}
        sizes: dict[tuple[int, torch.device, torch.dtype], int] = {}
        for param, owner in zip(self.parameters, self.owners):
            key = (owner, param.device, param.dtype)
            open_buckets.setdefault(key, []).append(param)
            sizes[key] = sizes.get(key, 0) + param.numel() * param.element_size()
            if sizes[key] >= BROADCAST_BUCKET_BYTES:
                buckets.append((owner, open_buckets.pop(key)))
                del sizes[key]
        buckets.extend((key[0], params) for key, params in open_buckets.items())
        return buckets

    @torch.no_grad()
    def broadcast_parameters(self) -> None:
        """Send every parameter from its owner to the other ranks (after the owners' step)."""
        if self.world_size == 1:
            return
        pending = []
        for owner, params in self._buckets:
            source = owner if self.process_group is None else dist.get_global_rank(self.process_group, owner)
            if len(params) == 1 and params[0].is_contiguous():
                flat = params[0].data
            elif owner == self.rank:
                flat = torch.cat([param.detach().reshape(-1) for param in params])
            else:
                flat = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
            work = dist.broadcast(flat, src=source, group=self.process_group, async_op=True)
            pending.append((work, owner, flat, params))
        for work, owner, flat, params in pending:
            work.wait()
            if owner != self.rank and flat.data_ptr() != params[0].data_ptr():
                for param, chunk in zip(params, flat.split([p.numel() for p in params])):
                    param.copy_(chunk.view_as(param))

    # -- saving and loading ------------------------------------------------------------------------------

    def consolidated_state_dict(self, destination: int = 0) -> dict[str, Any]:
        """The unsharded optimizer's state dict on rank ``destination`` (``{}`` elsewhere); a collective call.

        Every rank sends the state of its parameters (on the CPU); ``destination`` merges them into the state dict
        an unsharded run of the same optimizer would save.
        """
        local = self.optimizer.state_dict()
        if self.world_size == 1:
            return local
        shard = {index: _state_to_cpu(state) for index, state in local["state"].items()}
        gathered: list[Any] | None = [None] * self.world_size if self.rank == destination else None
        target = destination if self.process_group is None else dist.get_global_rank(self.process_group, destination)
        dist.gather_object(shard, gathered, dst=target, group=self.process_group)
        if gathered is None:
            return {}
        merged: dict[int, Any] = {}
        for part in gathered:
            merged.update(part)
        return {"state": dict(sorted(merged.items())), "param_groups": local["param_groups"]}

    def local_state_dict(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """The part of a full (unsharded) state dict that this rank keeps: its parameters' state, all param groups.

        Raises:
            ValueError: the state dict holds state for more parameters than the optimizer has.
        """
        states = state_dict.get("state", {})
        beyond = [index for index in states if not 0 <= int(index) < len(self.owners)]
        if beyond:
            raise ValueError(
                f"the optimizer state to load has state for parameter {beyond[0]}, but the optimizer has "
                f"{len(self.owners)} parameters; load a checkpoint saved for the same model and optimizer."
            )
        return {**state_dict, "state": {i: s for i, s in states.items() if self.owners[int(i)] == self.rank}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a full state dict (saved by an unsharded run, or consolidated): this rank keeps its share."""
        self.optimizer.load_state_dict(self.local_state_dict(state_dict))


def shard_optimizer(optimizer: torch.optim.Optimizer, process_group: Any = None,
                    warn: Callable[[str], None] = log.warning) -> OptimizerStateSharding | None:
    """Attach an :class:`OptimizerStateSharding` to ``optimizer`` if it can be sharded, else warn and return ``None``.

    Args:
        optimizer: the optimizer to shard.
        process_group: the data-parallel group; ``None`` for the default (whole world).
        warn: called with the message when ``optimizer`` is kept whole.
    """
    if not isinstance(optimizer, SHARDABLE_OPTIMIZERS):
        names = ", ".join(cls.__name__ for cls in SHARDABLE_OPTIMIZERS)
        warn(f"{type(optimizer).__name__}'s state is kept whole on every rank: only {names} are sharded.")
        return None
    sharding = OptimizerStateSharding(optimizer, process_group)
    sharding.attach()
    return sharding


__all__ = ["SHARDABLE_OPTIMIZERS", "OptimizerStateSharding", "assign_owners", "shard_optimizer"]
