"""Helpers for the torchmetrics metrics the LightningModules keep."""

from __future__ import annotations

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
