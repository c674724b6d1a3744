"""OptimizerMemoryMonitor on a real Trainer: logged when the state appears and when it changes, not otherwise."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lit_microopt.callbacks import OptimizerMemoryMonitor
from lit_microopt.optim import optimizer_state_bytes
from tests.callbacks.helpers import (
    TinyModule,
    callback_from_yaml,
    make_trainer,
    read_metrics,
    steps,
    tiny_microadam,
    values,
)

METRICS = {"optim/state_bytes", "optim/state_bytes_per_param", "optim/state_ratio_to_adamw"}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_adamw_is_logged_once_at_eight_bytes_per_parameter(tmp_path):
    trainer = make_trainer(tmp_path, [OptimizerMemoryMonitor()])
    module = TinyModule(lambda module: torch.optim.AdamW(module.parameters()))
    trainer.fit(module)

    metrics = read_metrics(trainer)
    assert set(metrics) == {"train_loss"} | METRICS
    assert steps(metrics["optim/state_bytes"]) == [0]  # created by the first step, unchanged afterwards
    assert values(metrics["optim/state_bytes"]) == [optimizer_state_bytes(trainer.optimizers[0])]
    parameters = sum(p.numel() for p in module.parameters())
    assert values(metrics["optim/state_bytes_per_param"])[0] == pytest.approx(
        values(metrics["optim/state_bytes"])[0] / parameters
    )
    # exp_avg and exp_avg_sq in float32, and a 4-byte step count per tensor.
    assert values(metrics["optim/state_ratio_to_adamw"])[0] == pytest.approx(1, abs=0.02)


def test_microadam_holds_less_than_adamw(tmp_path):
    trainer = make_trainer(tmp_path, [OptimizerMemoryMonitor()])
    trainer.fit(TinyModule(tiny_microadam))
    assert 0 < values(read_metrics(trainer)["optim/state_ratio_to_adamw"])[0] < 1


class AddsAParamGroup(pl.Callback):
    """Adds a new parameter to the optimizer before the batch at ``step``: its state appears at that step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.step:
            pl_module.extra = torch.nn.Parameter(torch.zeros(1000))
            trainer.optimizers[0].add_param_group({"params": [pl_module.extra]})

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if hasattr(pl_module, "extra"):
            pl_module.extra.grad = torch.ones_like(pl_module.extra)


def test_logged_again_when_the_state_grows_between_logged_steps(tmp_path):
    trainer = make_trainer(tmp_path, [OptimizerMemoryMonitor(), AddsAParamGroup(step=2)], log_every_n_steps=50)
    trainer.fit(TinyModule(lambda module: torch.optim.AdamW(module.parameters())))

    series = read_metrics(trainer)["optim/state_bytes"]
    assert steps(series) == [0, 2]
    assert values(series)[1] == values(series)[0] + 2 * 4 * 1000 + 4


def test_resumed_run_logs_when_training_starts(tmp_path):
    first = make_trainer(tmp_path, [OptimizerMemoryMonitor()], max_steps=4)
    first.fit(TinyModule(tiny_microadam))
    checkpoint = tmp_path / "four_steps.ckpt"
    first.save_checkpoint(checkpoint)

    second = make_trainer(tmp_path, [OptimizerMemoryMonitor()], max_steps=8)
    second.fit(TinyModule(tiny_microadam), ckpt_path=checkpoint)

    series = read_metrics(second)["optim/state_bytes"]
    assert steps(series) == [4]
    assert values(series) == values(read_metrics(first)["optim/state_bytes"])


def test_configurable_from_yaml():
    monitor = callback_from_yaml("  - class_path: lit_microopt.callbacks.OptimizerMemoryMonitor\n")
    assert isinstance(monitor, OptimizerMemoryMonitor)
