"""A callback for the distributed tests: what each rank ends a run with, written to files the test reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from lit_microopt.optim import optimizer_state_bytes


class RecordRun(pl.Callback):
    """Write ``rank{N}.json`` (losses, state bytes, DDP's logging data, compression counters) and ``rank{N}.pt``
    (the parameters) into ``folder`` at the end of training, on every rank.

    Args:
        folder: where to write.
    """

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.losses: list[float] = []

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        strategy = trainer.strategy
        optimizer = trainer.optimizers[0]
        ddp = strategy.model if isinstance(strategy.model, DistributedDataParallel) else None
        compression = getattr(strategy, "compression_state", None)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "losses": self.losses,
            "val_loss": float(trainer.callback_metrics["val_loss"]) if "val_loss" in trainer.callback_metrics else None,
            "optimizer": type(optimizer).__name__,
            "state_bytes": optimizer_state_bytes(optimizer),
            "parameters_with_state": len(optimizer.state),
            "parameters": sum(len(group["params"]) for group in optimizer.param_groups),
            "steps": sorted({int(state["step"]) for state in optimizer.state.values()}),
            "comm_hook": ddp._get_ddp_logging_data().get("comm_hook") if ddp is not None else None,
            "bytes_sent": compression.bytes_sent if compression is not None else None,
            "dense_bytes": compression.dense_bytes if compression is not None else None,
        }
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
        # A DTensor (FSDP2) is gathered whole on every rank (a collective: every rank is here).
        parameters = {name: (param.full_tensor() if isinstance(param, DTensor) else param).detach().cpu().clone()
                      for name, param in pl_module.named_parameters()}
        torch.save(parameters, self.folder / f"rank{trainer.global_rank}.pt")
