"""Parameters that are DTensors (FSDP2's ``fully_shard``): their local shards, and the few reductions over the mesh.

The optimizers step each rank's local shard with the same ops as a whole tensor. What this module adds:

- MicroAdam: every rank compresses its own shard. The state is sized for the largest shard (a shorter one is
  padded with zeros while it steps), so that each state tensor is a DTensor of equal shards and saves and loads
  through ``torch.distributed.checkpoint`` like any sharded state.
- Adam-mini (``docs/adam_mini.md``, "Sharded parameters"): a shard holds whole ``row`` and ``head`` blocks, whose
  statistics stay local; blocks that the sharding cuts (``tensor`` blocks, the columns of a Hugging Face ``Conv1D``)
  get their statistics summed over the mesh. ``v`` is small and kept whole on every rank: after each step the ranks
  exchange the entries of the blocks they own, so that it stays the same everywhere.
- Both: a non-finite gradient anywhere stops every rank, not only the one holding it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lit_microopt.optim._common import check_gradients_finite, gradient_extremes, non_finite_gradient_error
from lit_microopt.optim.partition import BlockLayout, shard_layout

try:
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # a PyTorch build without torch.distributed has no DTensor either
    DTensor = None  # type: ignore[assignment,misc]


def is_dtensor(tensor: Any) -> bool:
    """Whether ``tensor`` is a ``DTensor``."""
    return DTensor is not None and isinstance(tensor, DTensor)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor`` (a view: writing into it writes into the DTensor), or ``tensor`` itself."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def local_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every DTensor replaced by its local part (same tensors: in-place updates reach the state)."""
    return {key: local_tensor(value) if isinstance(value, torch.Tensor) else value for key, value in state.items()}


def _shard_mesh_dims(param: torch.Tensor) -> list[int]:
    return [index for index, placement in enumerate(param.placements) if placement.is_shard()]


# -- MicroAdam: equal shards of state ---------------------------------------------------------------------------


def padded_local_numel(param: torch.Tensor) -> int:
    """Elements of the largest local shard of ``param`` (every rank's state is sized for it); ``numel`` if whole."""
    if not is_dtensor(param):
        return param.numel()
    shape = list(param.shape)
    for mesh_dim, placement in enumerate(param.placements):
        if placement.is_shard():
            shape[placement.dim] = -(-shape[placement.dim] // param.device_mesh.size(mesh_dim))
    return math.prod(shape)


def sharded_state_shapes(
    param: torch.Tensor, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]], host_keys: Sequence[str]
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The global shapes of a DTensor parameter's state, from the shapes of one rank's (padded) state.

    Each state tensor other than the host ones is sharded along its last dimension wherever the parameter is
    sharded: the global tensor is the ranks' tensors side by side. ``shapes`` of a whole parameter are returned as
    they are.
    """
    if not is_dtensor(param):
        return shapes
    shards = math.prod(param.device_mesh.size(mesh_dim) for mesh_dim in _shard_mesh_dims(param))
    return {
        key: (shape if key in host_keys or not shape else (*shape[:-1], shape[-1] * shards), dtype)
        for key, (shape, dtype) in shapes.items()
    }


def new_sharded_state(
    param: torch.Tensor, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]], host_keys: Sequence[str], seed: int
) -> dict[str, torch.Tensor]:
    """Zero state for a DTensor parameter: one rank's tensors of ``shapes``, wrapped as DTensors (host keys plain)."""
    local_device = local_tensor(param).device
    state: dict[str, torch.Tensor] = {}
    for key, (shape, dtype) in shapes.items():
        if key in host_keys:
            state[key] = torch.zeros(shape, dtype=dtype, device="cpu")
            continue
        value = torch.zeros(shape, dtype=dtype, device=local_device)
        placements = [Shard(value.dim() - 1) if placement.is_shard() else Replicate() for placement in param.placements]
        global_shape = sharded_state_shapes(param, {key: (shape, dtype)}, ())[key][0]
        state[key] = DTensor.from_local(value, param.device_mesh, placements, shape=torch.Size(global_shape),
                                        stride=torch.empty(global_shape, device="meta").stride())
    if "rounding_seed" in state:
        state["rounding_seed"].fill_(seed)
    return state


def zeros_like_sharded(param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Zeros of ``dtype`` shaped and sharded like the DTensor ``param`` (each rank allocates its shard only)."""
    local = local_tensor(param)
    return DTensor.from_local(torch.zeros(local.shape, dtype=dtype, device=local.device), param.device_mesh,
                              param.placements, shape=param.shape, stride=param.stride())


class FlatShard:
    """A parameter's values and gradient as MicroAdam steps them: contiguous tensors, the tensors themselves where they
    are (a whole, contiguous parameter), else copies: a DTensor's local shard flattened and zero-padded to
    :func:`padded_local_numel` elements, a non-contiguous tensor's values in order (then ``is_copy``). Call
    :meth:`write_back` after.

    Args:
        param: the parameter, whole or a DTensor.
    """

    def __init__(self, param: torch.Tensor) -> None:
        self._local = local_tensor(param)
        self.param, self.grad = self._local, local_tensor(param.grad)
        self.padded = is_dtensor(param) and self._local.numel() != padded_local_numel(param)
        if self.padded:
            numel = self._local.numel()
            self.param = self._local.new_zeros(padded_local_numel(param))
            self.param[:numel] = self._local.reshape(-1)
            grad = self.grad.new_zeros(self.param.numel())
            grad[:numel] = self.grad.reshape(-1)
            self.grad = grad
            self.is_copy = True
        else:
            self.is_copy = not (self.param.is_contiguous() and self.grad.is_contiguous())
            self.param, self.grad = self.param.contiguous(), self.grad.contiguous()  # no copy when contiguous

    def write_back(self) -> None:
        """Copy the stepped values into the local shard (nothing to do when it was stepped in place)."""
        if self.padded:
            self._local.copy_(self.param[: self._local.numel()].view_as(self._local))
        elif self.param is not self._local:
            self._local.copy_(self.param)


# -- Adam-mini: blocks of a shard -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardBlocks:
    """Where the local shard of a DTensor parameter lies among its Adam-mini blocks.

    Attributes:
        layout: the blocks of the local shard (the op's arguments).
        first_block: index, in the parameter's ``v``, of the shard's first block (local blocks).
        spans: the sharding cuts the blocks: each rank holds a part of every block, and the block statistics are
            summed over ``group`` (``tensor`` blocks, ``Conv1D`` columns).
        scale: the shard's share of the parameter's elements (a spanning block's partial mean is scaled by it).
        group: the process group of the mesh dimension that shards the parameter (``None``: replicated).
    """

    layout: BlockLayout
    first_block: int
    spans: bool
    scale: float
    group: Any


def shard_blocks(name: str, param: torch.Tensor, layout: BlockLayout) -> ShardBlocks | None:
    """The :class:`ShardBlocks` of a DTensor parameter; ``None`` for a whole one.

    Raises:
        ValueError: the parameter is sharded other than along dim 0 of one mesh dimension, or a shard boundary falls
            inside a block (a head); the message names the parameter and what to change.
    """
    if not is_dtensor(param):
        return None
    mesh_dims = _shard_mesh_dims(param)
    odd = [p for p in param.placements if not (p.is_replicate() or type(p) is Shard)]
    if odd or len(mesh_dims) > 1 or (mesh_dims and param.placements[mesh_dims[0]].dim != 0):
        raise ValueError(
            f"AdamMini: {name} is a DTensor with placements {tuple(param.placements)}; Adam-mini's blocks need a "
            "parameter sharded along dim 0 over one mesh dimension (FSDP2's fully_shard); leave tensor-parallel "
            "parameters out of AdamMini or train with fully_shard or DDP."
        )
    local = local_tensor(param)
    if not mesh_dims or param.dim() == 0:
        return ShardBlocks(layout, 0, False, 1.0, None)
    mesh, mesh_dim = param.device_mesh, mesh_dims[0]
    rows = param.shape[0]
    chunk = -(-rows // mesh.size(mesh_dim))
    start = min(mesh.get_local_rank(mesh_dim) * chunk, rows)
    stop = start + local.shape[0]
    group = mesh.get_group(mesh_dim)
    if layout.role == "tensor" or layout.block_axis == 1:
        return ShardBlocks(layout, 0, True, local.numel() / max(param.numel(), 1), group)
    # Element blocks count elements; the others count rows along dim 0.
    unit = param.numel() // rows if layout.role == "element" and rows else 1
    local_layout, first_block = shard_layout(layout, name, start * unit, stop * unit)
    return ShardBlocks(local_layout, first_block, False, 1.0, group)


def _all_reduce_in_place(tensors: list[torch.Tensor], group: Any, op: Any) -> None:
    """One all-reduce of several tensors of one dtype (flattened into one buffer)."""
    if not tensors:
        return
    flat = torch.cat([tensor.reshape(-1) for tensor in tensors])
    dist.all_reduce(flat, op=op, group=group)
    for tensor, reduced in zip(tensors, flat.split([tensor.numel() for tensor in tensors])):
        tensor.copy_(reduced.view_as(tensor))


def _by_group(entries: list[tuple[Any, torch.Tensor]]) -> dict[Any, list[torch.Tensor]]:
    grouped: dict[Any, list[torch.Tensor]] = {}
    for group, tensor in entries:
        grouped.setdefault(group, []).append(tensor)
    return grouped


def sum_spanning_statistics(statistics: list[tuple[ShardBlocks, torch.Tensor]]) -> None:
    """Turn each spanning block's partial mean (already scaled by :attr:`ShardBlocks.scale`) into its mean over the
    whole parameter, in place: one all-reduce per process group."""
    for group, tensors in _by_group([(blocks.group, stat) for blocks, stat in statistics]).items():
        _all_reduce_in_place(tensors, group, dist.ReduceOp.SUM)


def share_local_blocks(second_moments: list[tuple[ShardBlocks, torch.Tensor]]) -> None:
    """After a step, give every rank the ``v`` entries of the blocks the other ranks own (local blocks only)."""
    contributions = []
    for blocks, exp_avg_sq in second_moments:
        contribution = torch.zeros_like(exp_avg_sq)
        owned = slice(blocks.first_block, blocks.first_block + blocks.layout.n_blocks)
        contribution[owned] = exp_avg_sq[owned]
        contributions.append((blocks.group, contribution, exp_avg_sq))
    for group, pairs in _by_group([(group, (c, v)) for group, c, v in contributions]).items():
        _all_reduce_in_place([contribution for contribution, _ in pairs], group, dist.ReduceOp.SUM)
        for contribution, exp_avg_sq in pairs:
            exp_avg_sq.copy_(contribution)


# -- both: the finite check -------------------------------------------------------------------------------------


def _non_finite(tensor: torch.Tensor) -> torch.Tensor:
    """1.0 when ``tensor`` holds a NaN or an infinity, else 0.0 (float32, on its device)."""
    extremes = torch.stack([value.float() for value in gradient_extremes(tensor)])
    return (~torch.isfinite(extremes).all()).float()


def check_gradients_finite_everywhere(owner: str, named_gradients: Sequence[tuple[str, torch.Tensor]]
                                      ) -> dict[str, float]:
    """Raise ``FloatingPointError`` naming every gradient that holds a NaN or an infinity, on every rank alike;
    else return the largest magnitude of every whole (not sharded) gradient, by name.

    Whole gradients are checked as :func:`~lit_microopt.optim._common.check_gradients_finite` does. For DTensor
    gradients each rank checks its shard and the verdicts are combined over each mesh, so that a NaN in one rank's
    shard stops all of them (a rank that stopped alone would leave the others waiting in the next collective).
    """
    whole = [(name, grad) for name, grad in named_gradients if not is_dtensor(grad)]
    sharded = [(name, grad) for name, grad in named_gradients if is_dtensor(grad)]
    magnitudes = check_gradients_finite(owner, whole) if whole else {}
    if not sharded:
        return magnitudes
    by_mesh: dict[Any, list[tuple[str, torch.Tensor]]] = {}
    for name, grad in sharded:
        by_mesh.setdefault(grad.device_mesh, []).append((name, grad))
    bad = []
    for mesh, entries in by_mesh.items():
        flags = torch.stack([_non_finite(local_tensor(grad)) for _, grad in entries])
        for mesh_dim in range(mesh.ndim):  # the largest verdict over every mesh dimension: over the whole mesh
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=mesh.get_group(mesh_dim))
        bad.extend(name for (name, _), flag in zip(entries, flags.tolist()) if flag)
    if bad:
        raise non_finite_gradient_error(owner, bad)
    return magnitudes
