"""What do the monitoring callbacks cost? Training step time with and without them, at log_every_n_steps=50.

The callbacks do work only on the steps Lightning logs: MicroAdam computes its statistics on those steps
(CompressionMonitor, WindowMonitor), Adam-mini's effective learning rates are summarised (BlockLRMonitor) and
the state is measured (OptimizerMemoryMonitor). Their cost is therefore the extra time of one step in 50,
spread over the 50, and the target is at most 2 % of the step time.

Each optimizer trains a small Transformer encoder twice per round, without and with the callbacks that read
it, in alternation. A step's time runs from one ``on_train_batch_start`` to the next, so that Lightning's own
logging is included. On a shared machine, other processes change step times from one run to the next by
more than the cost measured, so the cost is measured inside each run:

- extra time of a logged step = (median logged step - median other step) with the callbacks, minus the same
  difference without them (Lightning's own logging);
- time inside the callbacks' hooks on the other steps (median), measured by wrapping the hooks;
- overhead = (extra time of a logged step + 49 hook times) / (time of 50 steps without callbacks).

The ratio of total times with and without callbacks is printed too, as a check that is noisy on a busy machine.

Run:
    python benchmarks/callback_overhead.py [--rounds 3] [--threads 1] [--accelerator cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lit_microopt import AdamMini, MicroAdam
from lit_microopt.callbacks import BlockLRMonitor, CompressionMonitor, OptimizerMemoryMonitor, WindowMonitor

LOG_EVERY_N_STEPS = 50
WARMUP_STEPS = 10
D_MODEL, HEADS, LAYERS, SEQUENCE, BATCH = 64, 4, 2, 16, 16


class StepTimer(pl.Callback):
    """Seconds of every step (from one batch start to the next), and seconds spent in the timed callbacks' hooks."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.hook_seconds: list[float] = []  # per step

    def on_train_batch_start(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())
        self.hook_seconds.append(0.0)

    def on_train_end(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())

    def durations(self) -> list[float]:
        return [end - start for start, end in zip(self.starts, self.starts[1:])]

    def time_hooks(self, callback: pl.Callback) -> None:
        """Count the time of ``callback``'s per-step hooks into the current step's ``hook_seconds``."""
        for name in ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end"):
            hook = getattr(callback, name)

            def timed(*args: Any, _hook: Callable[..., Any] = hook, **kwargs: Any) -> None:
                start = time.perf_counter()
                _hook(*args, **kwargs)
                self.hook_seconds[-1] += time.perf_counter() - start

            setattr(callback, name, timed)  # Lightning looks hooks up on the instance


class Encoder(pl.LightningModule):
    def __init__(self, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]) -> None:
        super().__init__()
        torch.manual_seed(0)
        layer = torch.nn.TransformerEncoderLayer(D_MODEL, HEADS, 4 * D_MODEL, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.head = torch.nn.Linear(D_MODEL, 1)
        self.make_optimizer = make_optimizer

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = torch.nn.functional.mse_loss(self.head(self.encoder(inputs)).squeeze(-1), targets)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self)


@dataclass
class Timings:
    """Seconds of the logged steps and of the other steps, and of the timed hooks on the other steps."""

    logged: list[float] = field(default_factory=list)
    other: list[float] = field(default_factory=list)
    other_hooks: list[float] = field(default_factory=list)

    def extend(self, other: Timings) -> None:
        self.logged += other.logged
        self.other += other.other
        self.other_hooks += other.other_hooks


def time_training(
    make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer], callbacks: list[pl.Callback],
    steps: int, accelerator: str, log_dir: str,
) -> Timings:
    """The timings of ``steps`` training steps after the warm-up."""
    generator = torch.Generator().manual_seed(0)
    samples = BATCH * (WARMUP_STEPS + steps)
    data = TensorDataset(torch.randn(samples, SEQUENCE, D_MODEL, generator=generator),
                         torch.randn(samples, SEQUENCE, generator=generator))
    timer = StepTimer()
    for callback in callbacks:
        timer.time_hooks(callback)
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, max_steps=WARMUP_STEPS + steps, log_every_n_steps=LOG_EVERY_N_STEPS,
        logger=CSVLogger(log_dir), callbacks=[timer, *callbacks], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Encoder(make_optimizer), DataLoader(data, batch_size=BATCH))
    timings = Timings()
    for step, (seconds, hook_seconds) in enumerate(zip(timer.durations(), timer.hook_seconds)):
        if step < WARMUP_STEPS:
            continue
        # Lightning logs step i (counted from 0) when i + 1 is a multiple of log_every_n_steps.
        if (step + 1) % LOG_EVERY_N_STEPS == 0:
            timings.logged.append(seconds)
        else:
            timings.other.append(seconds)
            timings.other_hooks.append(hook_seconds)
    return timings


SCENARIOS: dict[str, tuple[Callable[[torch.nn.Module], torch.optim.Optimizer], Callable[[], list[pl.Callback]]]] = {
    "MicroAdam + CompressionMonitor, WindowMonitor, OptimizerMemoryMonitor": (
        lambda module: MicroAdam(module.named_parameters(), lr=1e-4, m=10, density=0.01),
        lambda: [CompressionMonitor(), WindowMonitor(), OptimizerMemoryMonitor()],
    ),
    "AdamMini + BlockLRMonitor, OptimizerMemoryMonitor": (
        lambda module: AdamMini.from_model(module, lr=1e-4, n_heads=HEADS),
        lambda: [BlockLRMonitor(), OptimizerMemoryMonitor()],
    ),
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Training step time with and without the monitoring callbacks.")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of without / with callbacks")
    parser.add_argument("--periods", type=int, default=2, help="logging periods of 50 steps timed per run")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--accelerator", default="cpu")
    arguments = parser.parse_args(argv)
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    steps = arguments.periods * LOG_EVERY_N_STEPS
    print(f"{steps} timed steps per run (after {WARMUP_STEPS} warm-up steps), log_every_n_steps={LOG_EVERY_N_STEPS}, "
          f"{arguments.rounds} rounds, accelerator={arguments.accelerator}, torch threads={torch.get_num_threads()}")
    median = statistics.median
    with tempfile.TemporaryDirectory() as log_dir:
        for scenario, (make_optimizer, make_callbacks) in SCENARIOS.items():
            without, with_ = Timings(), Timings()
            for _ in range(arguments.rounds):
                without.extend(time_training(make_optimizer, [], steps, arguments.accelerator, log_dir))
                with_.extend(time_training(make_optimizer, make_callbacks(), steps, arguments.accelerator, log_dir))
            step = median(without.other)
            logging_without = median(without.logged) - step
            extra_logged = (median(with_.logged) - median(with_.other)) - logging_without
            hooks = median(with_.other_hooks)
            period = LOG_EVERY_N_STEPS * step + logging_without
            overhead = (extra_logged + (LOG_EVERY_N_STEPS - 1) * hooks) / period
            totals = (sum(with_.logged) + sum(with_.other)) / (sum(without.logged) + sum(without.other))
            print(f"{scenario}:\n"
                  f"  step without callbacks {step * 1e3:.2f} ms (median); a logged step takes "
                  f"{extra_logged * 1e3:.2f} ms more with the callbacks; hooks on other steps {hooks * 1e6:.0f} us\n"
                  f"  overhead {overhead:+.2%} of the step time (total time ratio {totals - 1:+.2%}, noisy)")

if __name__ == "__main__":
    main()
