"""Helpers for the torchmetrics metrics the LightningModules keep."""

from __future__ import annotations

from abc import ABC, abstractmethod

from typing import Any

import torch
from torchmetrics import Metric


def reset_outside_inference_mode(metric: Metric) -> None:
    """Reset ``metric`` so that its fresh state tensors are ordinary tensors.

    ``trainer.validate`` runs in inference mode, where a reset would create inference tensors, which the
    validation inside ``trainer.fit`` (run under ``no_grad``) cannot update in place.

    Example:
        >>> from torchmetrics import MeanMetric
        >>> metric = MeanMetric()
        >>> with torch.inference_mode():
        ...     metric.update(1.0); reset_outside_inference_mode(metric)
        >>> metric.update(2.0); float(metric.compute())
        2.0
    """
    with torch.inference_mode(False):
        metric.reset()


class EvaluationHooks(ABC):
    """Lightning's validation and test hooks for a model that evaluates both stages the same way: each batch
    goes to ``_evaluate(batch, stage)`` and each epoch's end to ``_log_epoch(stage)``, ``stage`` being ``"val"``
    or ``"test"`` (the prefix of the logged metrics). Listed before ``LightningModule`` among the bases."""

    @abstractmethod
    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        """Update the stage's metrics with one batch."""

    @abstractmethod
    def _log_epoch(self, stage: str) -> Any:
        """Log the stage's metrics at the end of an epoch."""

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
