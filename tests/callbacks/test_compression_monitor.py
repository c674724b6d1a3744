"""CompressionMonitor on a real Trainer: names, values, cadence, accumulation, wrappers, resume, warnings."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer

from lit_microopt import MicroAdam
from lit_microopt.callbacks import CompressionMonitor, WindowMonitor
from tests.callbacks.helpers import (
    TinyModule,
    callback_from_yaml,
    make_trainer,
    read_metrics,
    steps,
    tiny_microadam,
    values,
    warnings_from,
)

FIGURES = ("compression_error", "quantization_error", "ef_norm")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_logs_the_global_figures_at_the_steps_lightning_logs(tmp_path):
    trainer = make_trainer(tmp_path, [CompressionMonitor()])
    trainer.fit(TinyModule(tiny_microadam))

    metrics = read_metrics(trainer)
    assert set(metrics) == {"train_loss"} | {f"microadam/{figure}" for figure in FIGURES}
    for figure in FIGURES:
        assert steps(metrics[f"microadam/{figure}"]) == steps(metrics["train_loss"]) == [1, 3, 5]
    assert all(0 < value < 1 for value in values(metrics["microadam/compression_error"]))
    assert all(0 < value < 1 for value in values(metrics["microadam/quantization_error"]))
    assert all(value > 0 for value in values(metrics["microadam/ef_norm"]))
    # The last logged step is the last step: its figures are the optimizer's last telemetry.
    total = trainer.optimizers[0].telemetry.total
    assert values(metrics["microadam/compression_error"])[-1] == pytest.approx(total.compression_error)
    assert values(metrics["microadam/ef_norm"])[-1] == pytest.approx(total.ef_norm)


def test_asks_for_statistics_only_before_logged_steps(tmp_path, monkeypatch):
    asked_at = []
    request = MicroAdam.request_telemetry

    def spy(optimizer):
        asked_at.append(trainer.global_step)  # optimizer steps taken before the one that computes
        request(optimizer)

    monkeypatch.setattr(MicroAdam, "request_telemetry", spy)
    trainer = make_trainer(tmp_path, [CompressionMonitor()], max_steps=10, log_every_n_steps=4)
    trainer.fit(TinyModule(tiny_microadam))

    assert asked_at == [3, 7]
    assert steps(read_metrics(trainer)["microadam/compression_error"]) == [3, 7]


def test_two_monitors_share_one_computation_per_logged_step(tmp_path):
    computed = []

    class RecordTelemetry(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            telemetry = trainer.optimizers[0].telemetry
            if telemetry is not None and all(telemetry is not seen for seen in computed):
                computed.append(telemetry)

    trainer = make_trainer(tmp_path, [CompressionMonitor(), WindowMonitor(), RecordTelemetry()])
    trainer.fit(TinyModule(tiny_microadam))
    assert len(computed) == 3


def test_gradient_accumulation_logs_once_per_logged_optimizer_step(tmp_path, monkeypatch):
    requests = []
    request = MicroAdam.request_telemetry
    monkeypatch.setattr(MicroAdam, "request_telemetry", lambda optimizer: (requests.append(1), request(optimizer)))
    trainer = make_trainer(tmp_path, [CompressionMonitor()], max_steps=4, accumulate_grad_batches=2)
    trainer.fit(TinyModule(tiny_microadam))

    metrics = read_metrics(trainer)
    assert len(requests) == 2
    assert steps(metrics["microadam/compression_error"]) == steps(metrics["train_loss"]) == [1, 3]


def test_param_groups_and_parameters_get_their_own_names(tmp_path):
    def two_groups(module):
        first, second = module.net[0], module.net[2]
        return MicroAdam(
            [{"params": list(first.named_parameters(prefix="net.0")), "name": "encoder"},
             {"params": list(second.named_parameters(prefix="net.2"))}],
            lr=1e-2, m=3, density=0.25, block_size=32, quant_bucket_size=8,
        )

    trainer = make_trainer(tmp_path, [CompressionMonitor(per_parameter=True)], max_steps=2)
    trainer.fit(TinyModule(two_groups))

    names = set(read_metrics(trainer))
    for prefix in ("microadam", "microadam/encoder", "microadam/pg2", "microadam/net.0.weight", "microadam/net.2.bias"):
        assert {f"{prefix}/{figure}" for figure in FIGURES} <= names


class TwoOptimizers(TinyModule):
    """Manual optimization with one MicroAdam per layer."""

    def __init__(self):
        super().__init__(make_optimizer=None)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        loss = torch.nn.functional.mse_loss(self(inputs), targets)
        self.log("train_loss", loss)
        for optimizer in self.optimizers():
            optimizer.zero_grad()
        self.manual_backward(loss)
        for optimizer in self.optimizers():
            optimizer.step()

    def configure_optimizers(self):
        options = dict(lr=1e-2, m=3, density=0.25, block_size=32, quant_bucket_size=8)
        return [MicroAdam(self.net[0].named_parameters(), **options),
                MicroAdam(self.net[2].named_parameters(), **options)]


def test_several_optimizers_get_distinct_names(tmp_path):
    # Each optimizer's step counts towards max_steps: 8 steps are 4 batches, logged after batches 2 and 4.
    trainer = make_trainer(tmp_path, [CompressionMonitor()], max_steps=8)
    trainer.fit(TwoOptimizers())

    metrics = read_metrics(trainer)
    assert steps(metrics["microadam/compression_error"]) == steps(metrics["train_loss"]) == [1, 3]
    assert steps(metrics["microadam-1/compression_error"]) == [1, 3]
    assert metrics["microadam/ef_norm"] != metrics["microadam-1/ef_norm"]


def test_another_optimizer_gets_one_warning_and_nothing_else(tmp_path):
    trainer = make_trainer(tmp_path, [CompressionMonitor()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyModule(lambda module: torch.optim.SGD(module.parameters(), lr=0.1)))

    (message,) = warnings_from(caught, "CompressionMonitor")
    assert "SGD" in message and "MicroAdam" in message
    assert set(read_metrics(trainer)) == {"train_loss"}


def test_reads_the_optimizer_inside_zero_redundancy_optimizer(tmp_path):
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        trainer = make_trainer(tmp_path, [CompressionMonitor()], max_steps=2)
        trainer.fit(TinyModule(lambda module: ZeroRedundancyOptimizer(
            module.parameters(), optimizer_class=MicroAdam, lr=1e-2, m=3, density=0.25, block_size=32,
            quant_bucket_size=8,
        )))
    finally:
        dist.destroy_process_group()
    assert steps(read_metrics(trainer)["microadam/compression_error"]) == [1]


def test_resumed_run_logs_at_the_resumed_steps(tmp_path):
    module = TinyModule(tiny_microadam)
    first = make_trainer(tmp_path, [CompressionMonitor()], max_steps=4)
    first.fit(module)
    checkpoint = tmp_path / "four_steps.ckpt"
    first.save_checkpoint(checkpoint)

    monitor = CompressionMonitor()
    second = make_trainer(tmp_path, [monitor], max_steps=8)
    second.fit(TinyModule(tiny_microadam), ckpt_path=checkpoint)

    metrics = read_metrics(second)
    assert steps(metrics["microadam/compression_error"]) == steps(metrics["train_loss"]) == [5, 7]


def test_configurable_from_yaml():
    monitor = callback_from_yaml(
        "  - class_path: lit_microopt.callbacks.CompressionMonitor\n    init_args:\n      per_parameter: true\n"
    )
    assert isinstance(monitor, CompressionMonitor) and monitor.per_parameter
