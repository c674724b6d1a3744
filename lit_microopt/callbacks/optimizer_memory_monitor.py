"""OptimizerMemoryMonitor: the bytes of state an optimizer holds, against AdamW's."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lit_microopt.callbacks._monitor import OptimizerMonitor, log_metrics
from lit_microopt.optim import optimizer_state_bytes, state_bytes_per_parameter

#: AdamW's state with float32 moments: ``exp_avg`` and ``exp_avg_sq``, 4 bytes each per parameter.
ADAMW_FLOAT32_BYTES_PER_PARAMETER = 8


class OptimizerMemoryMonitor(OptimizerMonitor):
    """Log how many bytes of state each optimizer holds, once at the start of training and whenever it changes.

    - ``optim/state_bytes``: bytes held by the optimizer's state tensors (each storage counted once, a
      quantized or sharded tensor by what it is made of; see ``lit_microopt.optim.optimizer_state_bytes``);
    - ``optim/state_bytes_per_param``: the same per parameter element the optimizer updates;
    - ``optim/state_ratio_to_adamw``: the same over the 8 bytes per parameter of AdamW with float32 moments
      (0.12 for MicroAdam at its defaults, about 0.5 for Adam-mini, 1 for AdamW itself).

    Most optimizers create their state at their first step, so a fresh run logs these at its first step; a
    resumed run logs them when training starts. Afterwards they are measured again on the steps Lightning logs
    and whenever an optimizer has gained state for more parameters, and logged only if they changed. Several
    optimizers are ``optim``, ``optim-1``, ...; with ``ZeroRedundancyOptimizer`` the figures are those of rank
    zero's shard. Any ``torch.optim.Optimizer`` (or a wrapper around one) can be measured.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lit_microopt.callbacks import OptimizerMemoryMonitor
        >>> trainer = Trainer(callbacks=[OptimizerMemoryMonitor()])

    In a LightningCLI config::

        trainer:
          callbacks:
            - class_path: lit_microopt.callbacks.OptimizerMemoryMonitor
    """

    expected = "a torch.optim.Optimizer"

    def __init__(self) -> None:
        super().__init__()
        self._last_logged: dict[Any, dict[str, float]] = {}
        # (parameters with state, param groups): a change means new state tensors; checking it costs nothing.
        self._shape_seen: dict[Any, tuple[int, int]] = {}

    def understands(self, optimizer: Any) -> bool:
        return isinstance(optimizer, torch.optim.Optimizer)

    def metric_prefix(self, optimizer: Any) -> str:
        return "optim"

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_logged, self._shape_seen = {}, {}
        if not trainer.is_global_zero or not trainer.loggers:
            return
        for optimizer, prefix in self._prefixes.items():
            if prefix is not None and optimizer.state:  # a resumed run: the state is already there
                log_metrics(trainer, self.collect(trainer, pl_module, optimizer, prefix, logged=True))

    def collect(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any, prefix: str, logged: bool
    ) -> dict[str, float]:
        shape = (len(optimizer.state), len(optimizer.param_groups))
        if not logged and self._shape_seen.get(optimizer) == shape:
            return {}
        self._shape_seen[optimizer] = shape
        state_bytes = optimizer_state_bytes(optimizer)
        per_parameter = state_bytes_per_parameter(optimizer)
        metrics = {
            f"{prefix}/state_bytes": float(state_bytes),
            f"{prefix}/state_bytes_per_param": per_parameter,
            f"{prefix}/state_ratio_to_adamw": per_parameter / ADAMW_FLOAT32_BYTES_PER_PARAMETER,
        }
        if metrics == self._last_logged.get(optimizer):
            return {}
        self._last_logged[optimizer] = metrics
        return metrics


__all__ = ["OptimizerMemoryMonitor"]
