"""CompressionMonitor: how much of the gradient MicroAdam's Top-K and 4-bit error feedback lose."""

from __future__ import annotations

from lit_microopt.callbacks._microadam_telemetry import MicroAdamTelemetryMonitor


class CompressionMonitor(MicroAdamTelemetryMonitor):
    r"""Log MicroAdam's compression and quantization errors and the size of its error feedback.

    On each step whose metrics Lightning logs (every ``log_every_n_steps`` optimizer steps), the callback asks
    MicroAdam before the step to compute its statistics, and logs them after it at the same step as the
    metrics of ``self.log``. Other steps cost nothing. Figures are global norm ratios over all parameters:

    - ``microadam/compression_error``: :math:`\|a - \mathrm{TopK}(a)\| / \|a\|`, the share of the
      error-corrected gradient :math:`a` that Top-K leaves out of the window (in [0, 1]);
    - ``microadam/quantization_error``: :math:`\|Q^{-1}(Q(r)) - r\| / \|r\|`, the relative error of storing
      that remainder :math:`r` in 4 bits;
    - ``microadam/ef_norm``: :math:`\|Q^{-1}(e)\|`, the norm of the error feedback after the step.

    With several param groups, each also gets ``microadam/<group>/<figure>`` (its ``"name"`` entry, else
    ``pg1``, ``pg2``, ...); several MicroAdam optimizers are ``microadam``, ``microadam-1``, ... Statistics
    are logged on rank zero; with ``ZeroRedundancyOptimizer`` they cover rank zero's shard of the parameters.
    An optimizer other than MicroAdam gets one warning and is otherwise ignored.

    Args:
        per_parameter: also log the three figures of every parameter as ``microadam/<parameter name>/<figure>``
            (names come from ``MicroAdam(model.named_parameters())``, else ``param_groups[g].params[i]``).

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lit_microopt.callbacks import CompressionMonitor
        >>> trainer = Trainer(callbacks=[CompressionMonitor()], log_every_n_steps=50)

    In a LightningCLI config::

        trainer:
          callbacks:
            - class_path: lit_microopt.callbacks.CompressionMonitor
              init_args:
                per_parameter: true
    """

    figures = ("compression_error", "quantization_error", "ef_norm")


__all__ = ["CompressionMonitor"]
