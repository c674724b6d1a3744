"""``MicroOptDDPStrategy``: Lightning's DDP with sharded optimizer state and compressed gradient communication."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.utilities.optimizer import _optimizer_to_device
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import DDPStrategy
from lightning.fabric.strategies.registry import _StrategyRegistry
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from lit_microopt.strategies.checkpoint_io import AtomicCheckpointIO
from lit_microopt.strategies.compression import TopKCompression, TopKCompressionState, topk_compression_hook
from lit_microopt.strategies.sharded_state import OptimizerStateSharding, shard_optimizer

#: The checkpoint entry holding each rank's compression state (error feedback), a list by rank.
COMPRESSION_CHECKPOINT_KEY = "microopt_ddp_compression"
#: Registry names: ``(name, description, shard_optimizer_state, gradient compression on, start method)``.
REGISTERED_NAMES = (
    ("microopt_ddp", "sharded optimizer state and Top-K compressed gradients", True, True, "popen"),
    ("microopt_ddp_spawn", "sharded optimizer state and Top-K compressed gradients, spawned processes", True, True,
     "spawn"),
    ("microopt_ddp_sharded", "sharded optimizer state, dense gradients", True, False, "popen"),
    ("microopt_ddp_compressed", "Top-K compressed gradients, whole optimizer state on every rank", False, True,
     "popen"),
)


class MicroOptDDPStrategy(DDPStrategy):
    """DDP for MicroAdam and Adam-mini: optimizer state sharded over the ranks, gradients sent as a block Top-K.

    - ``shard_optimizer_state`` (ZeRO stage 1): each rank keeps and updates the state of its share of the
      parameters, then broadcasts them; state per rank is about ``1 / world`` of the whole and the parameters are
      those of an unsharded run. Checkpoints hold the unsharded optimizer's state dict, so a run can resume on any
      number of processes, with or without this strategy. MicroAdam, Adam-mini and PyTorch's Adam, AdamW and SGD
      are sharded; other optimizers are kept whole, with a warning.
    - ``gradient_compression``: instead of all-reducing each gradient bucket, every rank sends its block Top-K
      with 4-bit error feedback (:func:`~lit_microopt.strategies.compression.topk_compression_hook`), about 1 % of
      the bytes at density 0.01 on two ranks. It changes the training (MicroAdam's own compression, applied to the
      communication), unlike sharding. Registered on every device and backend, CPU and gloo included. Each
      rank's error feedback is saved in checkpoints, naming its parameters, so that a resume on as many processes
      takes the steps of an uninterrupted run, whatever buckets DDP starts the resumed process with.

    Registered names: ``microopt_ddp`` (both), ``microopt_ddp_spawn`` (both, spawned processes),
    ``microopt_ddp_sharded`` (sharding only), ``microopt_ddp_compressed`` (compression only).

    Args:
        shard_optimizer_state: shard the optimizer state over the ranks (ZeRO stage 1).
        gradient_compression: the Top-K settings of the compression hook, or ``None`` for dense all-reduce.
        accelerator: as for :class:`~lightning.pytorch.strategies.DDPStrategy` (set by the Trainer).
        parallel_devices: as for ``DDPStrategy`` (set by the Trainer).
        cluster_environment: as for ``DDPStrategy`` (set by the Trainer: SLURM, torchrun, ...).
        checkpoint_io: as for ``DDPStrategy``; by default an
            :class:`~lit_microopt.strategies.checkpoint_io.AtomicCheckpointIO` (a kill cannot truncate a checkpoint).
        precision_plugin: as for ``DDPStrategy``.
        ddp_comm_state: the state of a communication hook of your own (``gradient_compression=None`` only).
        ddp_comm_hook: a communication hook of your own (``gradient_compression=None`` only).
        ddp_comm_wrapper: wraps the hook (e.g. ``fp16_compress_wrapper``).
        process_group_backend: ``"nccl"``, ``"gloo"``, ...; the device's default when ``None``.
        timeout: the collectives' timeout.
        start_method: ``"popen"`` (a script per rank), ``"spawn"``, ``"fork"`` or ``"forkserver"``.
        **kwargs: passed to :class:`~torch.nn.parallel.DistributedDataParallel` (``find_unused_parameters``,
            ``static_graph``, ``bucket_cap_mb``, ...).

    Raises:
        ValueError: both ``gradient_compression`` and ``ddp_comm_hook`` are given.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> strategy = MicroOptDDPStrategy(gradient_compression=TopKCompression(density=0.01))
        >>> trainer = Trainer(accelerator="cpu", devices=2, strategy=strategy)  # doctest: +SKIP

    In a LightningCLI config, ``trainer.strategy: microopt_ddp``, or::

        trainer:
          strategy:
            class_path: lit_microopt.strategies.MicroOptDDPStrategy
            init_args:
              shard_optimizer_state: true
              gradient_compression: {density: 0.01, block_size: 8192}
    """

    def __init__(
        self,
        shard_optimizer_state: bool = True,
        gradient_compression: TopKCompression | None = TopKCompression(),
        accelerator: pl.accelerators.Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: Any = None,
        checkpoint_io: Any = None,
        precision_plugin: Any = None,
        ddp_comm_state: object | None = None,
        ddp_comm_hook: Callable | None = None,
        ddp_comm_wrapper: Callable | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
        **kwargs: Any,
    ) -> None:
        if gradient_compression is not None and ddp_comm_hook is not None:
            raise ValueError(
                "MicroOptDDPStrategy: both gradient_compression and ddp_comm_hook were given, but DDP takes one "
                "communication hook; set gradient_compression=None to use your own hook."
            )
        if gradient_compression is not None:
            ddp_comm_state = TopKCompressionState(gradient_compression)
            ddp_comm_hook = topk_compression_hook
        super().__init__(
            accelerator=accelerator, parallel_devices=parallel_devices, cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io if checkpoint_io is not None else AtomicCheckpointIO(),
            precision_plugin=precision_plugin, ddp_comm_state=ddp_comm_state,
            ddp_comm_hook=ddp_comm_hook, ddp_comm_wrapper=ddp_comm_wrapper,
            process_group_backend=process_group_backend, timeout=timeout, start_method=start_method, **kwargs,
        )
        self.shard_optimizer_state = shard_optimizer_state
        self.gradient_compression = gradient_compression
        self._shardings: dict[int, OptimizerStateSharding] = {}

    @property
    def compression_state(self) -> TopKCompressionState | None:
        """The compression hook's state on this rank (error feedback, bytes sent), or ``None`` without compression."""
        state = self._ddp_comm_state
        return state if isinstance(state, TopKCompressionState) else None

    def sharding_of(self, optimizer: Any) -> OptimizerStateSharding | None:
        """The state sharding attached to ``optimizer`` (or to the optimizer a ``LightningOptimizer`` wraps)."""
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        return self._shardings.get(id(optimizer))

    # -- communication hook --------------------------------------------------------------------------

    @override
    def _register_ddp_hooks(self) -> None:
        # Lightning registers hooks on CUDA only; hooks, this one included, work on every backend.
        if self._ddp_comm_hook is None:
            return
        assert isinstance(self.model, DistributedDataParallel)
        hook = self._ddp_comm_hook
        if self._ddp_comm_wrapper is not None:
            hook = self._ddp_comm_wrapper(hook)
        if self.compression_state is not None:
            # Checkpoints name the parameters each error feedback belongs to, whatever DDP's buckets are.
            self.compression_state.name_parameters(self.model.module)
        self.model.register_comm_hook(state=self._ddp_comm_state, hook=hook)
        if self.gradient_compression is not None:
            rank_zero_info(f"MicroOptDDPStrategy: gradients are sent as a block Top-K ({self.gradient_compression}).")

    # -- sharded optimizer state -------------------------------------------------------------------------

    @override
    def setup_optimizers(self, trainer: pl.Trainer) -> None:
        super().setup_optimizers(trainer)
        self._detach_shardings()
        if not self.shard_optimizer_state:
            return
        for optimizer in self.optimizers:
            sharding = shard_optimizer(optimizer, warn=rank_zero_warn)
            if sharding is not None:
                self._shardings[id(optimizer)] = sharding

    def _detach_shardings(self) -> None:
        for sharding in self._shardings.values():
            sharding.detach()
        self._shardings = {}

    @override
    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The unsharded optimizer's state dict on rank 0 (``{}`` on the others) for a sharded optimizer."""
        sharding = self.sharding_of(optimizer)
        if sharding is None:
            return super().optimizer_state(optimizer)
        return sharding.consolidated_state_dict(destination=0)

    @override
    def load_optimizer_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        """Load each optimizer's full state dict; a sharded optimizer keeps its share of the parameters.

        The compression hook's state is restored with it, before the first synchronised step (and checked first).

        Raises:
            ValueError: the checkpoint's error feedback is of another number of processes, other compression
                settings or other parameters; nothing is loaded.
        """
        # Checked and restored first (fit only), so that a checkpoint that does not fit loads nothing.
        self._restore_compression_state(checkpoint)
        for optimizer, state_dict in zip(self.optimizers, checkpoint["optimizer_states"]):
            sharding = self.sharding_of(optimizer)
            if sharding is None:
                optimizer.load_state_dict(state_dict)
            else:
                sharding.load_state_dict(state_dict)
            _optimizer_to_device(optimizer, self.root_device)

    # -- the compression hook's state in checkpoints ------------------------------------------------------

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """Save as ``DDPStrategy`` does, with every rank's compression state (its error feedback) in the checkpoint.

        Every rank calls this; rank 0 gathers the states and writes the file.
        """
        state = self.compression_state
        if state is not None and "optimizer_states" in checkpoint and torch.distributed.is_initialized():
            per_rank = [None] * self.world_size if self.is_global_zero else None
            torch.distributed.gather_object(state.state_dict(), per_rank, dst=0)
            if self.is_global_zero:
                checkpoint[COMPRESSION_CHECKPOINT_KEY] = per_rank
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def _restore_compression_state(self, checkpoint: Mapping[str, Any]) -> None:
        state = self.compression_state
        per_rank = checkpoint.get(COMPRESSION_CHECKPOINT_KEY)
        if state is None:
            if per_rank is not None:
                rank_zero_warn("MicroOptDDPStrategy: the checkpoint holds gradient-compression error feedback, but "
                               "this run sends dense gradients; the error feedback is left out.")
            return
        if per_rank is None:
            rank_zero_warn("MicroOptDDPStrategy: the checkpoint holds no gradient-compression state; the error "
                           "feedback starts from zero, so the run goes on differently than it would have.")
            return
        if len(per_rank) != self.world_size:
            problem = f"it is of {len(per_rank)} processes, but this run has {self.world_size}"
        else:
            problem = state.state_dict_problem(per_rank[self.global_rank])
        if problem is not None:
            raise ValueError(
                f"MicroOptDDPStrategy: the checkpoint's gradient-compression error feedback cannot be loaded, as "
                f"{problem}; resume with the processes, model and gradient_compression settings that saved it, or "
                f"delete the checkpoint's {COMPRESSION_CHECKPOINT_KEY!r} entry to start the error feedback from zero."
            )
        state.load_state_dict(per_rank[self.global_rank], device=self.root_device)

    @override
    def teardown(self) -> None:
        self._detach_shardings()
        super().teardown()

    # -- registry ------------------------------------------------------------------------------------

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: _StrategyRegistry) -> None:
        for name, description, shard, compress, start_method in REGISTERED_NAMES:
            if name in strategy_registry:
                continue
            strategy_registry.register(
                name, cls, description=f"{cls.__name__}: {description}", shard_optimizer_state=shard,
                gradient_compression=TopKCompression() if compress else None, start_method=start_method,
            )


__all__ = ["COMPRESSION_CHECKPOINT_KEY", "REGISTERED_NAMES", "MicroOptDDPStrategy"]
