"""Reading MicroAdam's telemetry: the shared part of :class:`CompressionMonitor` and :class:`WindowMonitor`.

MicroAdam computes its statistics only during a step that follows ``request_telemetry()``; afterwards
``optimizer.telemetry`` holds them per parameter, per param group and in total (``lit_microopt.optim.telemetry``).
A monitor asks before each step whose metrics Lightning will log, then logs the figures it is about.
"""

from __future__ import annotations

from typing import Any, ClassVar

import lightning.pytorch as pl

from lit_microopt.callbacks._monitor import OptimizerMonitor
from lit_microopt.callbacks._optimizers import param_group_names
from lit_microopt.optim import MicroAdam
from lit_microopt.optim.telemetry import MicroAdamStatistics


class MicroAdamTelemetryMonitor(OptimizerMonitor):
    """Logs some of MicroAdam's statistics (:attr:`figures`) on the steps Lightning logs.

    Metric names: ``microadam/<figure>`` over all parameters; with several param groups also
    ``microadam/<group>/<figure>``; with ``per_parameter=True`` also ``microadam/<parameter name>/<figure>``.

    Args:
        per_parameter: also log every figure for every parameter, by name.
    """

    #: The names of the :class:`MicroAdamStatistics` properties this monitor logs.
    figures: ClassVar[tuple[str, ...]] = ()
    expected = "a MicroAdam optimizer (lit_microopt.MicroAdam)"

    def __init__(self, per_parameter: bool = False) -> None:
        super().__init__()
        self.per_parameter = per_parameter
        # The telemetry each optimizer held before a requested step: the same object afterwards means that the
        # step did not run (a GradScaler skipped it), and there is nothing new to log.
        self._telemetry_before: dict[Any, Any] = {}

    def understands(self, optimizer: Any) -> bool:
        return isinstance(optimizer, MicroAdam)

    def metric_prefix(self, optimizer: Any) -> str:
        return "microadam"

    def prepare_logged_step(self, optimizer: MicroAdam) -> None:
        self._telemetry_before[optimizer] = optimizer.telemetry
        optimizer.request_telemetry()

    def collect(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: MicroAdam, prefix: str, logged: bool
    ) -> dict[str, float]:
        if not logged:
            return {}
        before = self._telemetry_before.pop(optimizer, None)
        telemetry = optimizer.telemetry
        if telemetry is None or telemetry is before:
            return {}
        metrics = self._figures(prefix, telemetry.total)
        for group_name, statistics in zip(param_group_names(optimizer), telemetry.per_group):
            metrics.update(self._figures(f"{prefix}/{group_name}", statistics))
        if self.per_parameter:
            for parameter_name, statistics in telemetry.per_parameter.items():
                metrics.update(self._figures(f"{prefix}/{parameter_name}", statistics))
        return metrics

    def _figures(self, prefix: str, statistics: MicroAdamStatistics) -> dict[str, float]:
        return {f"{prefix}/{figure}": float(getattr(statistics, figure)) for figure in self.figures}


__all__ = ["MicroAdamTelemetryMonitor"]
