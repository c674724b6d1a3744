"""A tiny Lightning project to run the callbacks on, and readers for what the loggers wrote."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lit_microopt import MicroAdam

BATCHES_PER_EPOCH = 8


def tiny_microadam(module: pl.LightningModule, **kwargs: Any) -> MicroAdam:
    """MicroAdam sized for a model of a few hundred parameters: window of 3, a quarter of each block kept."""
    options = dict(lr=1e-2, m=3, density=0.25, block_size=32, quant_bucket_size=8)
    options.update(kwargs)
    return MicroAdam(module.named_parameters(), **options)


class TinyModule(pl.LightningModule):
    """A small regressor that builds its optimizer with ``make_optimizer(module)``."""

    def __init__(self, make_optimizer: Callable[[pl.LightningModule], Any], net: torch.nn.Module | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.net = net if net is not None else torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)
        )
        self.make_optimizer = make_optimizer

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = torch.nn.functional.mse_loss(self(inputs), targets)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return self.make_optimizer(self)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(1)
        inputs = torch.randn(8 * BATCHES_PER_EPOCH, 8, generator=generator)
        targets = torch.randn(8 * BATCHES_PER_EPOCH, 4, generator=generator)
        return DataLoader(TensorDataset(inputs, targets), batch_size=8)


def transformer_net() -> torch.nn.Module:
    """A model with parameters of all four Adam-mini roles: attention (head), matrices (row), norms, biases."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16),
        torch.nn.TransformerEncoderLayer(16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True),
        torch.nn.Linear(16, 4),
    )


def make_trainer(tmp_path: Path, callbacks: list, **kwargs: Any) -> pl.Trainer:
    """A quiet CPU trainer logging to a CSVLogger under ``tmp_path`` (6 steps, logged every 2 by default)."""
    options = dict(
        accelerator="cpu", devices=1, max_steps=6, log_every_n_steps=2, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, logger=CSVLogger(tmp_path, name="run"),
    )
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


def read_metrics(trainer: pl.Trainer) -> dict[str, list[tuple[int, float]]]:
    """Every metric in the CSVLogger's ``metrics.csv``: name -> [(step, value), ...] in file order."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as file:
        for row in csv.DictReader(file):
            for name, value in row.items():
                if name not in ("step", "epoch") and value != "":
                    series.setdefault(name, []).append((int(row["step"]), float(value)))
    return series


def steps(series: list[tuple[int, float]]) -> list[int]:
    return [step for step, _ in series]


def values(series: list[tuple[int, float]]) -> list[float]:
    return [value for _, value in series]


def warnings_from(caught: list[warnings.WarningMessage], callback_name: str) -> list[str]:
    """The messages of the warnings that ``callback_name`` gave."""
    return [str(warning.message) for warning in caught if str(warning.message).startswith(callback_name)]


def callback_from_yaml(text: str) -> pl.Callback:
    """The callback that a LightningCLI config's ``trainer.callbacks`` entry (YAML) describes."""
    parser = ArgumentParser()
    parser.add_argument("--callbacks", type=list[pl.Callback])
    config = parser.parse_string(f"callbacks:\n{text}")
    (callback,) = parser.instantiate(config).callbacks
    return callback
