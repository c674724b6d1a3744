"""WindowMonitor on a real Trainer: occupancy fills up in m steps, support is a fraction of the coordinates."""

from __future__ import annotations

import warnings

import pytest
import torch

from lit_microopt.callbacks import WindowMonitor
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


pytestmark = pytest.mark.usefixtures("one_thread")


def test_occupancy_reaches_one_after_m_steps(tmp_path):
    trainer = make_trainer(tmp_path, [WindowMonitor(per_parameter=True)], max_steps=5, log_every_n_steps=1)
    trainer.fit(TinyModule(lambda module: tiny_microadam(module, m=3)))

    metrics = read_metrics(trainer)
    assert steps(metrics["microadam/window_occupancy"]) == [0, 1, 2, 3, 4]
    assert values(metrics["microadam/window_occupancy"]) == pytest.approx([1 / 3, 2 / 3, 1, 1, 1])
    assert values(metrics["microadam/net.0.weight/window_occupancy"]) == pytest.approx([1 / 3, 2 / 3, 1, 1, 1])
    support = values(metrics["microadam/window_support"])
    assert all(0 < value <= 1 for value in support)
    # One step keeps a quarter of each 32-element block (rounded up); the full window up to three quarters.
    assert support[0] == pytest.approx(0.25, abs=0.05)
    assert support[0] < support[2] <= 0.75 + 0.05


def test_logs_only_window_figures_at_logged_steps(tmp_path):
    trainer = make_trainer(tmp_path, [WindowMonitor()])
    trainer.fit(TinyModule(tiny_microadam))

    metrics = read_metrics(trainer)
    assert set(metrics) == {"train_loss", "microadam/window_occupancy", "microadam/window_support"}
    assert steps(metrics["microadam/window_support"]) == steps(metrics["train_loss"]) == [1, 3, 5]


def test_another_optimizer_gets_one_warning(tmp_path):
    trainer = make_trainer(tmp_path, [WindowMonitor()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyModule(lambda module: torch.optim.AdamW(module.parameters())))

    (message,) = warnings_from(caught, "WindowMonitor")
    assert "AdamW" in message and "MicroAdam" in message
    assert set(read_metrics(trainer)) == {"train_loss"}


def test_configurable_from_yaml():
    monitor = callback_from_yaml("  - class_path: lit_microopt.callbacks.WindowMonitor\n")
    assert isinstance(monitor, WindowMonitor) and not monitor.per_parameter
