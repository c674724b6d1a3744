"""Learning-rate schedules that a YAML file can describe: linear warm-up, then constant, linear or cosine decay.

PyTorch builds such schedules from lambdas (``LambdaLR``) or from other schedulers (``SequentialLR``), neither
of which a YAML file can write. :class:`WarmupDecayLR` is a plain ``LRScheduler`` with a closed form, so its
state is two integers and a checkpoint resumes it exactly.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler

DECAYS = ("constant", "linear", "cosine")


class WarmupDecayLR(LRScheduler):
    """Linear warm-up from 0 to each group's ``lr`` over ``warmup_steps``, then a decay to ``final_ratio * lr``.

    The factor at optimizer step ``t`` is ``t / warmup_steps`` during warm-up, then, with
    ``p = (t - warmup_steps) / (total_steps - warmup_steps)`` (capped at 1): ``1`` (constant),
    ``1 - (1 - final_ratio) * p`` (linear) or ``final_ratio + (1 - final_ratio) * (1 + cos(pi p)) / 2`` (cosine).

    Args:
        optimizer: the optimizer.
        total_steps: optimizer steps of the whole run (the decay ends there).
        warmup_steps: optimizer steps of the warm-up (0: none).
        decay: ``"constant"``, ``"linear"`` or ``"cosine"``.
        final_ratio: the learning rate at ``total_steps``, as a fraction of the peak.

    Example:
        >>> optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
        >>> schedule = WarmupDecayLR(optimizer, total_steps=4, warmup_steps=2, decay="linear")
        >>> rates = []
        >>> for _ in range(4):
        ...     optimizer.step(); schedule.step(); rates.append(schedule.get_last_lr()[0])
        >>> rates
        [0.5, 1.0, 0.5, 0.0]
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        decay: str = "linear",
        final_ratio: float = 0.0,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"WarmupDecayLR: total_steps must be >= 1, got {total_steps}.")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"WarmupDecayLR: warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}.")
        if decay not in DECAYS:
            raise ValueError(f"WarmupDecayLR: decay must be one of {DECAYS}, got {decay!r}.")
        if not 0.0 <= final_ratio <= 1.0:
            raise ValueError(f"WarmupDecayLR: final_ratio must be in [0, 1], got {final_ratio}.")
        self.total_steps, self.warmup_steps, self.decay, self.final_ratio = total_steps, warmup_steps, decay, final_ratio
        super().__init__(optimizer)

    def factor(self, step: int) -> float:
        """The multiplier of the peak learning rate at optimizer step ``step``."""
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self.decay == "linear":
            return 1.0 - (1.0 - self.final_ratio) * progress
        return self.final_ratio + (1.0 - self.final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        factor = self.factor(self.last_epoch)  # LRScheduler counts its steps in last_epoch
        return [base_lr * factor for base_lr in self.base_lrs]
