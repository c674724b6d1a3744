"""BlockLRMonitor logs the learning rate each logged step used, and leaves blocks that never had a gradient out."""

from __future__ import annotations

import pytest
import torch

from lit_microopt.callbacks import BlockLRMonitor
from lit_microopt.optim import AdamMini
from tests.callbacks.helpers import TinyModule, make_trainer, read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def values(metric: list[tuple[int, float]]) -> list[float]:
    return [value for _, value in metric]


def adam_mini_with_a_schedule_to_zero(module):
    optimizer = AdamMini.from_model(module, lr=1e-2)
    schedule = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=6)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def test_the_rates_are_at_the_learning_rate_the_step_used(tmp_path):
    trainer = make_trainer(tmp_path, [BlockLRMonitor(per_layer=False, histograms=False)])
    trainer.fit(TinyModule(adam_mini_with_a_schedule_to_zero))
    optimizer = trainer.optimizers[0]
    assert optimizer.param_groups[0]["lr"] == 0.0  # after the sixth step
    # The sixth step used lr = 1e-2 / 6; the optimizer's rates at that rate are what was logged for it.
    optimizer.param_groups[0]["lr"] = 1e-2 / 6
    rates = torch.cat([rate.reshape(-1) for name, rate in optimizer.effective_learning_rates().items()
                       if optimizer.partition[name].role == "row"])
    metrics = read_metrics(trainer)
    logged = [values(metrics[f"adam_mini/block_lr/row/{statistic}"])[-1] for statistic in ("min", "median", "max")]
    assert logged == pytest.approx([rates.min().item(), rates.median().item(), rates.max().item()], rel=1e-6)
    assert logged[0] > 0


class HalfUsedOutput(TinyModule):
    """The last layer has 6 outputs but the loss reads 4: two rows of its weight and bias never get a gradient."""

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        loss = torch.nn.functional.mse_loss(self(inputs)[:, :4], targets)
        self.log("train_loss", loss)
        return loss


def test_blocks_without_a_gradient_are_counted_not_summarised(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 6))
    trainer = make_trainer(tmp_path, [BlockLRMonitor(per_layer=False, histograms=False)])
    trainer.fit(HalfUsedOutput(lambda module: AdamMini.from_model(module, lr=1e-2), net))
    metrics = read_metrics(trainer)
    # Row blocks: one per output row of a weight; element blocks: one per bias element.
    assert values(metrics["adam_mini/block_lr/row/without_gradient"]) == [2.0, 2.0, 2.0]
    assert values(metrics["adam_mini/block_lr/element/without_gradient"]) == [2.0, 2.0, 2.0]
    lr_over_eps = 1e-2 / 1e-8
    assert max(values(metrics["adam_mini/block_lr/row/max"])) < 1e-3 * lr_over_eps
    assert max(values(metrics["adam_mini/block_lr/element/max"])) < 1e-3 * lr_over_eps
