"""WindowMonitor: how full MicroAdam's sliding window is, and how many coordinates it covers."""

from __future__ import annotations

from lit_microopt.callbacks._microadam_telemetry import MicroAdamTelemetryMonitor


class WindowMonitor(MicroAdamTelemetryMonitor):
    r"""Log the occupancy and the support of MicroAdam's window of sparse gradients.

    On each step whose metrics Lightning logs, the callback asks MicroAdam before the step to compute its
    statistics and logs after it, at the same step as the metrics of ``self.log``; other steps cost nothing.

    - ``microadam/window_occupancy``: filled window rows over ``m``; it reaches 1 after ``m`` steps (from
      then on Adam's moments are rebuilt from a full window);
    - ``microadam/window_support``: the fraction of coordinates that hold at least one entry of the window,
      i.e. that Adam's moments are non-zero for; at most ``m * density``.

    With several param groups, each also gets ``microadam/<group>/<figure>``; several MicroAdam optimizers are
    ``microadam``, ``microadam-1``, ... An optimizer other than MicroAdam gets one warning and is ignored.

    Args:
        per_parameter: also log both figures of every parameter as ``microadam/<parameter name>/<figure>``.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lit_microopt.callbacks import WindowMonitor
        >>> trainer = Trainer(callbacks=[WindowMonitor()], log_every_n_steps=50)

    In a LightningCLI config::

        trainer:
          callbacks:
            - class_path: lit_microopt.callbacks.WindowMonitor
    """

    figures = ("window_occupancy", "window_support")


__all__ = ["WindowMonitor"]
