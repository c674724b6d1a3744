"""BlockLRMonitor on a real Trainer: Adam-mini's per-block rates, Adam's per-element rates, histograms."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_microopt import AdamMini
from lit_microopt.callbacks import BlockLRMonitor
from lit_microopt.callbacks.block_lr_monitor import spread_sample
from tests.callbacks.helpers import (
    TinyModule,
    callback_from_yaml,
    make_trainer,
    read_metrics,
    steps,
    tiny_microadam,
    transformer_net,
    values,
    warnings_from,
)

ROLES = ("head", "row", "tensor", "element")
LAYERS = ("net.0", "net.1", "net.2")  # Linear, TransformerEncoderLayer, Linear


pytestmark = pytest.mark.usefixtures("one_thread")


def summary(rates: list[torch.Tensor]) -> tuple[float, float, float]:
    """Min, median (torch's lower median) and max of all the rates."""
    every = torch.cat([rate.reshape(-1) for rate in rates])
    return every.min().item(), every.median().item(), every.max().item()


def logged_summary(metrics, key: str) -> tuple[float, float, float]:
    return tuple(values(metrics[f"{key}/{statistic}"])[-1] for statistic in ("min", "median", "max"))


def test_adam_mini_rates_per_role_and_layer_equal_the_optimizer_s(tmp_path):
    trainer = make_trainer(tmp_path, [BlockLRMonitor()])
    trainer.fit(TinyModule(lambda module: AdamMini.from_model(module, lr=1e-2), transformer_net()))

    metrics = read_metrics(trainer)
    optimizer = trainer.optimizers[0]
    rates = optimizer.effective_learning_rates()  # the last step was logged: these are the logged rates
    for role in ROLES:
        key = f"adam_mini/block_lr/{role}"
        assert steps(metrics[f"{key}/median"]) == steps(metrics["train_loss"]) == [1, 3, 5]
        expected = summary([rate for name, rate in rates.items() if optimizer.partition[name].role == role])
        assert logged_summary(metrics, key) == pytest.approx(expected, rel=1e-6)
        assert 0 < expected[0] <= expected[1] <= expected[2]
    for layer in LAYERS:
        expected = summary([rate for name, rate in rates.items() if name.startswith(layer + ".")])
        assert logged_summary(metrics, f"adam_mini/block_lr/layer/{layer}") == pytest.approx(expected, rel=1e-6)


def test_adam_rates_per_element_with_adam_mini_s_roles(tmp_path):
    trainer = make_trainer(tmp_path, [BlockLRMonitor(per_layer=False)])
    module = TinyModule(lambda module: torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=0.1),
                        transformer_net())
    trainer.fit(module)

    metrics = read_metrics(trainer)
    optimizer = trainer.optimizers[0]
    beta1, beta2 = optimizer.defaults["betas"]
    eps = optimizer.defaults["eps"]

    def rates(name: str) -> torch.Tensor:
        state = optimizer.state[dict(module.named_parameters())[name]]
        t = state["step"].item()
        return 1e-2 / (1 - beta1**t) / ((state["exp_avg_sq"] / (1 - beta2**t)).sqrt() + eps)

    roles = {
        "head": ["net.1.self_attn.in_proj_weight"],
        "row": ["net.0.weight", "net.1.self_attn.out_proj.weight", "net.1.linear1.weight", "net.1.linear2.weight",
                "net.2.weight"],
        "tensor": ["net.1.norm1.weight", "net.1.norm2.weight"],
    }
    roles["element"] = [name for name, _ in module.named_parameters() if not any(name in n for n in roles.values())]
    assert set(metrics) == {"train_loss"} | {
        f"adamw/block_lr/{role}/{statistic}" for role in ROLES
        for statistic in ("min", "median", "max", "without_gradient")
    }
    for role, names in roles.items():
        expected = summary([rates(name) for name in names])
        assert logged_summary(metrics, f"adamw/block_lr/{role}") == pytest.approx(expected, rel=1e-5)


def test_reads_the_optimizer_only_on_logged_steps(tmp_path, monkeypatch):
    read_at = []
    effective_learning_rates = AdamMini.effective_learning_rates

    def spy(optimizer):
        read_at.append(trainer.global_step)
        return effective_learning_rates(optimizer)

    monkeypatch.setattr(AdamMini, "effective_learning_rates", spy)
    trainer = make_trainer(tmp_path, [BlockLRMonitor()], max_steps=8, log_every_n_steps=4)
    trainer.fit(TinyModule(lambda module: AdamMini.from_model(module)))
    assert read_at == [4, 8]  # read after the 4th and 8th steps


def test_param_groups_get_their_own_names(tmp_path):
    def two_groups(module):
        decay = [p for name, p in module.named_parameters() if name.endswith("weight")]
        no_decay = [p for name, p in module.named_parameters() if name.endswith("bias")]
        return torch.optim.AdamW([{"params": decay, "name": "decay"}, {"params": no_decay, "weight_decay": 0.0}])

    trainer = make_trainer(tmp_path, [BlockLRMonitor(per_layer=False)], max_steps=2)
    trainer.fit(TinyModule(two_groups))

    names = set(read_metrics(trainer))
    assert {"adamw/decay/block_lr/row/median", "adamw/pg2/block_lr/element/median",
            "adamw/block_lr/row/median", "adamw/block_lr/element/median"} <= names


def test_histograms_go_to_tensorboard(tmp_path):
    loggers = [CSVLogger(tmp_path, name="run"), TensorBoardLogger(tmp_path, name="tensorboard")]
    trainer = make_trainer(tmp_path, [BlockLRMonitor()], logger=loggers, max_steps=2)
    trainer.fit(TinyModule(lambda module: AdamMini.from_model(module), transformer_net()))

    events = EventAccumulator(loggers[1].log_dir, size_guidance={"histograms": 0})
    events.Reload()
    histograms = set(events.Tags()["histograms"])
    assert {f"adam_mini/block_lr/{role}/log10" for role in ROLES} <= histograms
    assert "adam_mini/block_lr/layer/net.1/log10" in histograms
    assert "adam_mini/block_lr/row/median" in events.Tags()["scalars"]


def test_another_optimizer_gets_one_warning(tmp_path):
    trainer = make_trainer(tmp_path, [BlockLRMonitor()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyModule(tiny_microadam))

    (message,) = warnings_from(caught, "BlockLRMonitor")
    assert "MicroAdam" in message and "AdamMini" in message
    assert set(read_metrics(trainer)) == {"train_loss"}


def test_spread_sample_keeps_small_tensors_and_spreads_large_ones():
    small = torch.arange(10.0)
    assert spread_sample(small, 10) is small
    sample = spread_sample(torch.arange(1000.0), 100)
    assert sample.numel() == 100 and sample.unique().numel() == 100
    # Spread over the whole tensor: every tenth of it is represented.
    assert torch.histc(sample, bins=10, min=0, max=1000).min() >= 5
    # No alignment with the columns of a 10-column matrix.
    assert (sample % 10).unique().numel() == 10
    assert math.isclose(sample.mean().item(), 500, rel_tol=0.1)


def test_configurable_from_yaml():
    monitor = callback_from_yaml(
        "  - class_path: lit_microopt.callbacks.BlockLRMonitor\n    init_args:\n      per_layer: false\n"
    )
    assert isinstance(monitor, BlockLRMonitor) and not monitor.per_layer and monitor.histograms
