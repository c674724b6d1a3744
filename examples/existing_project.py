"""An existing Lightning project switched to MicroAdam, with the monitoring callbacks, in a few lines.

Everything below was written without lit_microopt: a plain LightningModule with its own
``configure_optimizers`` and a plain ``Trainer``. The lines marked ``# lit_microopt`` are the whole change:
one import, the optimizer, and the callbacks. It runs on the CPU in seconds.

Run:
    python examples/existing_project.py --out /tmp/existing_project
    python -m lit_microopt plot /tmp/existing_project      # figures of what the callbacks logged
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lit_microopt import MicroAdam  # lit_microopt
from lit_microopt.callbacks import CompressionMonitor, OptimizerMemoryMonitor, WindowMonitor  # lit_microopt


class Classifier(pl.LightningModule):
    """A small MLP classifier, as any project might have."""

    def __init__(self, features: int = 32, hidden: int = 256, classes: int = 10, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, classes),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, labels = batch
        loss = torch.nn.functional.cross_entropy(self(inputs), labels)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Was: return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        # MicroAdam takes named parameters so that its statistics carry the names; a smaller learning rate
        # suits it, because a sparse window entry moves its coordinate by up to 3 learning rates.
        return MicroAdam(self.named_parameters(), lr=self.hparams.lr / 3, m=10, density=0.01)  # lit_microopt


def random_classification(samples: int = 2048, features: int = 32, classes: int = 10) -> TensorDataset:
    """Points labelled by a fixed random linear teacher: learnable, and made in milliseconds."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(samples, features, generator=generator)
    teacher = torch.randn(features, classes, generator=generator)
    return TensorDataset(inputs, (inputs @ teacher).argmax(dim=1))


def main(argv: Sequence[str] | None = None) -> Path:
    """Train for a few steps and return the folder the CSVLogger wrote ``metrics.csv`` to."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="log folder (default: a new temporary folder)")
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps")
    parser.add_argument("--log-every", type=int, default=5, help="Trainer(log_every_n_steps=...)")
    arguments = parser.parse_args(argv)
    out = arguments.out if arguments.out is not None else Path(tempfile.mkdtemp(prefix="existing_project_"))

    torch.manual_seed(0)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=arguments.steps,
        log_every_n_steps=arguments.log_every,
        logger=CSVLogger(out, name="existing_project"),
        callbacks=[CompressionMonitor(), WindowMonitor(), OptimizerMemoryMonitor()],  # lit_microopt
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Classifier(), DataLoader(random_classification(), batch_size=64, shuffle=True))
    return Path(trainer.logger.log_dir)


if __name__ == "__main__":
    print(f"Metrics written to {main() / 'metrics.csv'}")
