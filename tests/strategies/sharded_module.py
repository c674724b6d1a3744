"""A tiny LightningModule that shards itself with FSDP2 in ``configure_model``, for ModelParallelStrategy tests."""

from __future__ import annotations

from collections import OrderedDict

import lightning.pytorch as pl
import torch
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from lit_microopt.optim import AdamMini, MicroAdam


class ShardedTinyModel(pl.LightningModule):
    """Next-token prediction on random tokens with an embedding, an attention query, a norm and an output layer.

    Args:
        optimizer: ``"MicroAdam"`` or ``"AdamMini"``.
        lr: learning rate.
        steps: training batches (of 8 sequences of 6 tokens) an epoch.
    """

    def __init__(self, optimizer: str = "MicroAdam", lr: float = 1e-2, steps: int = 8) -> None:
        super().__init__()
        if optimizer not in ("MicroAdam", "AdamMini"):
            raise ValueError(f"optimizer must be 'MicroAdam' or 'AdamMini', got {optimizer!r}.")
        self.optimizer_name, self.lr, self.steps = optimizer, lr, steps
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(OrderedDict(
            embed=torch.nn.Embedding(48, 32), q_proj=torch.nn.Linear(32, 32, bias=False),
            norm=torch.nn.LayerNorm(32), head=torch.nn.Linear(32, 48),
        ))

    @override
    def configure_model(self) -> None:
        mesh = self.device_mesh["data_parallel"]
        for module in self.model:
            fully_shard(module, mesh=mesh)
        fully_shard(self.model, mesh=mesh)

    @override
    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (tokens,) = batch
        logits = self.model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        self.log("train_loss", loss)
        return loss

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "MicroAdam":
            return MicroAdam(self.model.named_parameters(), lr=self.lr, m=4, density=0.25, block_size=64)
        return AdamMini(self.model.named_parameters(), lr=self.lr, n_heads=4)

    @override
    def train_dataloader(self) -> DataLoader:
        # A learnable pattern: each sequence counts up from a random start.
        starts = torch.randint(0, 48, (8 * self.steps, 1), generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset((starts + torch.arange(7)) % 48), batch_size=8)
