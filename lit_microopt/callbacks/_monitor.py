"""What every optimizer monitor shares: when to ask, what to read, where to log.

A monitor finds the optimizers it understands when training starts and warns once about the others. Before
an optimizer step whose metrics Lightning will write to the loggers, it may prepare the optimizer (MicroAdam
computes statistics only when asked before its step); after the batch, it reads the optimizer and logs
through the trainer's loggers at Lightning's logging step, on rank zero only. On the other steps it does a
few dictionary look-ups and nothing else.

Two of Lightning's private attributes are read here, both by ``LearningRateMonitor`` too: whether the metrics
of the current batch will be logged, and the step they are logged at. Reading them keeps the monitors'
metrics on exactly the rows of the metrics that ``self.log`` writes, with gradient accumulation and after a
resume as well.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

from lit_microopt.callbacks._optimizers import deduplicate, unwrap_optimizer


def will_log_this_batch(trainer: pl.Trainer) -> bool:
    """Whether Lightning writes the current training batch's metrics to the loggers (valid before its step)."""
    return trainer._logger_connector.should_update_logs


def logging_step(trainer: pl.Trainer) -> int:
    """The step Lightning logs the current training batch's metrics at: the batches that stepped before it."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def log_metrics(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Write ``metrics`` to every logger of ``trainer`` at the current logging step."""
    step = logging_step(trainer)
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=step)


class OptimizerMonitor(Callback, ABC):
    """Base class of the monitors: subclasses say which optimizers they understand and what they log.

    Subclasses define :attr:`expected`, :meth:`understands`, :meth:`metric_prefix` and :meth:`collect`, and
    :meth:`prepare_logged_step` when the optimizer must be asked before the step.
    """

    #: The optimizers the monitor reads, for the warning about any other ("a MicroAdam optimizer").
    expected: str = ""

    def __init__(self) -> None:
        # Whether this process logs (rank zero, with a logger): fixed for a run, so looked up once.
        self._active = False
        self._inner: dict[Any, Any] = {}  # each optimizer Lightning steps -> the optimizer inside it
        self._prefixes: dict[Any, str | None] = {}  # each optimizer seen -> its metric prefix, None if not understood
        self._stepped: dict[Any, bool] = {}  # optimizers that stepped in this batch -> whether that step is logged
        self._warned: set[str] = set()  # warnings already given, so that each is given once

    # -- what a monitor defines -----------------------------------------------------------------------

    @abstractmethod
    def understands(self, optimizer: Any) -> bool:
        """Whether this monitor can read ``optimizer`` (already unwrapped)."""

    @abstractmethod
    def metric_prefix(self, optimizer: Any) -> str:
        """The first component of the metric names for ``optimizer`` (``microadam``); repeats get ``-1``, ``-2``."""

    def prepare_logged_step(self, optimizer: Any) -> None:
        """Called just before a step of ``optimizer`` whose metrics will be logged."""

    @abstractmethod
    def collect(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any, prefix: str, logged: bool
    ) -> dict[str, float]:
        """The metrics to log after a step of ``optimizer`` in this batch (``logged``: a logging batch)."""

    # -- Lightning hooks ------------------------------------------------------------------------------

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = trainer.is_global_zero and bool(trainer.loggers)
        self._inner, self._stepped = {}, {}
        if not trainer.loggers:
            self._warn_once(
                "no logger",
                f"{type(self).__name__} has nothing to log to; give the Trainer a logger (e.g. CSVLogger) or remove "
                "the callback.",
            )
        self._find_optimizers(trainer)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        # A batch cut short (skipped step, exception handled elsewhere) must not leave stale work behind.
        self._stepped = {}

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        # Called before every optimizer step: the usual path is two dictionary look-ups.
        if not self._active:
            return
        wrapper = optimizer
        optimizer = self._inner.get(wrapper)
        if optimizer is None:
            optimizer = self._inner[wrapper] = unwrap_optimizer(wrapper)
        if optimizer not in self._prefixes:
            self._find_optimizers(trainer)  # an optimizer that appeared after training started
            if optimizer not in self._prefixes:  # stepped by hand without being returned by configure_optimizers
                self._warn_about(optimizer)
                self._prefixes[optimizer] = None
        if self._prefixes[optimizer] is None:
            return
        logged = will_log_this_batch(trainer)
        if logged and not self._stepped.get(optimizer, False):
            self.prepare_logged_step(optimizer)
        self._stepped[optimizer] = self._stepped.get(optimizer, False) or logged

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        stepped, self._stepped = self._stepped, {}
        for optimizer, logged in stepped.items():
            metrics = self.collect(trainer, pl_module, optimizer, self._prefixes[optimizer], logged)
            if metrics:
                log_metrics(trainer, metrics)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Do not keep the run's optimizers (and their state) alive after it.
        self._inner, self._prefixes, self._stepped = {}, {}, {}

    # -- helpers --------------------------------------------------------------------------------------

    def _find_optimizers(self, trainer: pl.Trainer) -> None:
        """Name every understood optimizer of ``trainer``; warn once about each optimizer class it cannot read."""
        optimizers = [unwrap_optimizer(optimizer) for optimizer in trainer.optimizers]
        understood = [optimizer for optimizer in optimizers if self.understands(optimizer)]
        prefixes = deduplicate([self.metric_prefix(optimizer) for optimizer in understood])
        self._prefixes = dict(zip(understood, prefixes))
        for optimizer in optimizers:
            if optimizer not in self._prefixes:
                self._warn_about(optimizer)
                self._prefixes[optimizer] = None

    def _warn_about(self, optimizer: Any) -> None:
        name = type(optimizer).__name__
        self._warn_once(
            f"optimizer {name}",
            f"{type(self).__name__} reads {self.expected}, but this run's optimizer is {name}, so it logs nothing "
            f"for it; train with one of those or remove {type(self).__name__} from the callbacks.",
        )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)


__all__ = ["OptimizerMonitor", "log_metrics", "logging_step", "will_log_this_batch"]
