"""BlockLRMonitor: the effective learning rates Adam-mini's blocks (or Adam's elements) get."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from typing_extensions import override

from lit_microopt.callbacks._monitor import OptimizerMonitor, logging_step
from lit_microopt.callbacks._optimizers import layer_of, param_group_names
from lit_microopt.optim import AdamMini, parameter_modules, partition_parameter

#: Spreads sample positions over a tensor without following its rows (see :func:`spread_sample`).
GOLDEN_RATIO_FRACTION = (math.sqrt(5) - 1) / 2


def spread_sample(values: torch.Tensor, limit: int) -> torch.Tensor:
    """At most ``limit`` elements of the 1-D tensor ``values``, spread over all of it (all when few enough).

    Position ``i`` of the sample is ``frac(i * 0.618...) * numel``: evenly spread, and unlike a fixed stride it
    cannot line up with the columns of a weight matrix.
    """
    if values.numel() <= limit:
        return values
    fractions = torch.arange(limit, device=values.device, dtype=torch.float64).mul_(GOLDEN_RATIO_FRACTION).frac_()
    return values[(fractions * values.numel()).long()]


def adam_effective_learning_rates(group: dict[str, Any], state: dict[str, Any]) -> torch.Tensor:
    """Per element, the factor that multiplies ``exp_avg`` in ``torch.optim.Adam``/``AdamW``'s update.

    ``lr / (1 - beta1^t) / (sqrt(v / (1 - beta2^t)) + eps)``, with ``v`` the largest ``exp_avg_sq`` so far
    under ``amsgrad``: the same quantity as ``AdamMini.effective_learning_rates()`` gives per block.
    """
    beta1, beta2 = (float(beta) for beta in group["betas"])
    t = float(state["step"])
    v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
    denominator = (v.float().sqrt() / math.sqrt(1 - beta2**t)).add_(float(group["eps"]))
    return denominator.reciprocal_().mul_(float(group["lr"]) / (1 - beta1**t))


class _Summary:
    """Min, median and max of learning rates gathered from several tensors."""

    def __init__(self) -> None:
        self.lows: list[torch.Tensor] = []
        self.highs: list[torch.Tensor] = []
        self.samples: list[torch.Tensor] = []

    def add(self, rates: torch.Tensor, sample: torch.Tensor) -> None:
        if rates.numel() == 0:
            return
        low, high = torch.aminmax(rates)
        self.lows.append(low)
        self.highs.append(high)
        self.samples.append(sample)

    def sample(self) -> torch.Tensor:
        device = self.samples[0].device
        return torch.cat([sample.to(device) for sample in self.samples])

    def statistics(self) -> torch.Tensor:
        """``[min, median, max]`` (the median of the samples: torch's lower median)."""
        device = self.samples[0].device
        low = torch.stack([value.to(device) for value in self.lows]).min()
        high = torch.stack([value.to(device) for value in self.highs]).max()
        return torch.stack([low, self.sample().median(), high])


class BlockLRMonitor(OptimizerMonitor):
    """Log the effective learning rate of Adam-mini's blocks, summarised per role and per layer.

    Adam-mini divides each block's update by one shared ``sqrt(v_b)``, so every block has one effective
    learning rate ``lr / (1 - beta1^t) / (sqrt(v_b / (1 - beta2^t)) + eps)`` (``AdamMini.effective_learning_rates()``).
    On each step whose metrics Lightning logs, after the step, this callback logs their min, median and max, at
    the learning rate that step used (read before the scheduler changes it):

    - ``adam_mini/block_lr/<role>/{min,median,max}`` for each role (``head``, ``row``, ``tensor``, ``element``);
    - ``adam_mini/block_lr/layer/<layer>/{min,median,max}`` for each layer (the parameter name up to its first
      number, ``model.layers.3``; else its module, ``lm_head``), with ``per_layer=True``;
    - ``adam_mini/<group>/block_lr/<role>/{min,median,max}`` per param group when there are several;
    - ``.../without_gradient`` beside each summary: the blocks (elements for Adam) whose ``v`` is still 0, whose
      rate ``lr / eps`` is left out of the summary (it would swamp it: unused embedding rows, frozen paths);
    - with a ``TensorBoardLogger``, histograms of ``log10`` of the rates: ``adam_mini/block_lr/<role>/log10``
      (and ``.../layer/<layer>/log10``), the whole distribution.

    For ``torch.optim.Adam`` and ``AdamW`` it logs the per-element effective learning rates the same way,
    under ``adam/...`` or ``adamw/...``, with each parameter given the role Adam-mini would give it (from its
    name), so the runs of both optimizers compare role by role and layer by layer. Several optimizers of one
    kind are ``adam_mini``, ``adam_mini-1``, ... Other steps cost nothing; any other optimizer gets one warning
    and is ignored.

    Minimum and maximum are exact. The median and the histograms use at most ``max_samples_per_parameter``
    rates of each parameter, spread over it, so that summarising a per-element Adam state does not copy it.

    Args:
        per_layer: also log the summaries of every layer.
        histograms: log histograms when a ``TensorBoardLogger`` is attached.
        max_samples_per_parameter: rates of one parameter that enter the median and histograms.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lit_microopt.callbacks import BlockLRMonitor
        >>> trainer = Trainer(callbacks=[BlockLRMonitor(per_layer=False)], log_every_n_steps=50)

    In a LightningCLI config::

        trainer:
          callbacks:
            - class_path: lit_microopt.callbacks.BlockLRMonitor
              init_args:
                per_layer: false
    """

    expected = "AdamMini (lit_microopt.AdamMini), torch.optim.Adam or torch.optim.AdamW"

    def __init__(self, per_layer: bool = True, histograms: bool = True, max_samples_per_parameter: int = 65536) -> None:
        if max_samples_per_parameter < 1:
            raise ValueError(
                f"BlockLRMonitor: max_samples_per_parameter must be >= 1, got {max_samples_per_parameter}."
            )
        super().__init__()
        self.per_layer = per_layer
        self.histograms = histograms
        self.max_samples_per_parameter = max_samples_per_parameter
        self._step_lrs: dict[Any, list[float]] = {}  # each optimizer -> its groups' learning rates at a logged step

    def understands(self, optimizer: Any) -> bool:
        return isinstance(optimizer, (AdamMini, torch.optim.Adam, torch.optim.AdamW))

    def metric_prefix(self, optimizer: Any) -> str:
        return "adam_mini" if isinstance(optimizer, AdamMini) else type(optimizer).__name__.lower()

    @override
    def prepare_logged_step(self, optimizer: Any) -> None:
        # Lightning steps the schedulers before on_train_batch_end: by then group["lr"] is the next step's.
        self._step_lrs[optimizer] = [float(group["lr"]) for group in optimizer.param_groups]

    def collect(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any, prefix: str, logged: bool
    ) -> dict[str, float]:
        if not logged:
            return {}
        summaries: dict[str, _Summary] = defaultdict(_Summary)
        without_gradient: dict[str, list[torch.Tensor]] = defaultdict(list)
        group_names = param_group_names(optimizer)
        step_lrs = self._step_lrs.pop(optimizer, None)
        for group_index, name, role, rates, received in self._effective_learning_rates(optimizer, pl_module, step_lrs):
            received = received.reshape(-1)
            rates = rates.reshape(-1)[received]
            sample = spread_sample(rates, self.max_samples_per_parameter)
            keys = [f"{prefix}/block_lr/{role}"]
            if self.per_layer:
                keys.append(f"{prefix}/block_lr/layer/{layer_of(name)}")
            if group_names:
                keys.append(f"{prefix}/{group_names[group_index]}/block_lr/{role}")
            missing = (~received).sum()
            for key in keys:
                summaries[key].add(rates, sample)
                without_gradient[key].append(missing)
        if not without_gradient:
            return {}
        summaries = {key: summary for key, summary in summaries.items() if summary.samples}
        # One device synchronisation for all the summaries and counts.
        device = next(iter(without_gradient.values()))[0].device
        counts = torch.stack([torch.stack(values).to(device).sum() for values in without_gradient.values()]).tolist()
        values = torch.stack([summary.statistics() for summary in summaries.values()]).tolist() if summaries else []
        metrics = {f"{key}/without_gradient": float(count) for key, count in zip(without_gradient, counts)}
        for key, (low, median, high) in zip(summaries, values):
            metrics.update({f"{key}/min": low, f"{key}/median": median, f"{key}/max": high})
        if self.histograms:
            self._log_histograms(trainer, summaries)
        return metrics

    def _effective_learning_rates(
        self, optimizer: Any, pl_module: pl.LightningModule, step_lrs: list[float] | None
    ) -> list[tuple[int, str, str, torch.Tensor, torch.Tensor]]:
        """``(param group index, parameter name, role, rates, whether v > 0)`` for every parameter that has taken a
        step, at the learning rates ``step_lrs`` of its param groups (``None``: the groups' current ones)."""
        if isinstance(optimizer, AdamMini):
            current = [group["lr"] for group in optimizer.param_groups]
            try:  # the rates at the learning rate the step used: the optimizer reads it from its groups
                for group, lr in zip(optimizer.param_groups, step_lrs or current):
                    group["lr"] = lr
                rates = optimizer.effective_learning_rates()
            finally:
                for group, lr in zip(optimizer.param_groups, current):
                    group["lr"] = lr
            return [
                (group_index, name, optimizer.partition[name].role, rates[name],
                 optimizer.state[param]["exp_avg_sq"] > 0)
                for group_index, group in enumerate(optimizer.param_groups)
                for name, param in zip(group["param_names"], group["params"])
                if name in rates
            ]
        # Adam keeps no names: take them, and the modules that tell a Hugging Face Conv1D apart, from the model.
        names = {id(param): name for name, param in pl_module.named_parameters()}
        modules = parameter_modules(pl_module)
        found = []
        for group_index, group in enumerate(optimizer.param_groups):
            given = group.get("param_names")
            for index, param in enumerate(group["params"]):
                state = optimizer.state.get(param)
                if not state or "exp_avg_sq" not in state:
                    continue
                name = given[index] if given else names.get(id(param), f"param_groups[{group_index}].params[{index}]")
                role = self._adam_mini_role(name, param, modules.get(name))
                used = group if step_lrs is None else {**group, "lr": step_lrs[group_index]}
                received = (state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]) > 0
                found.append((group_index, name, role, adam_effective_learning_rates(used, state), received))
        return found

    @staticmethod
    def _adam_mini_role(name: str, param: torch.Tensor, module: torch.nn.Module | None) -> str:
        """The role Adam-mini would give a parameter of Adam, from its name, shape and module."""
        try:
            return partition_parameter(name, param.shape, module=module).role
        except ValueError:
            # Only attention weights fail without a head count, and Adam-mini gives them the role "head".
            return "head"

    def _log_histograms(self, trainer: pl.Trainer, summaries: dict[str, _Summary]) -> None:
        tensorboards = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not tensorboards:
            return
        step = logging_step(trainer)
        for key, summary in summaries.items():
            # log10: the rates of one run span several decades. A learning rate of 0 (warm-up) has no log.
            values = summary.sample().log10().cpu()
            values = values[values.isfinite()]
            if values.numel() == 0:
                continue
            for logger in tensorboards:
                logger.experiment.add_histogram(f"{key}/log10", values, global_step=step)


__all__ = ["BlockLRMonitor", "adam_effective_learning_rates", "spread_sample"]
