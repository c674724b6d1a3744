"""Optimizers built from YAML-style factories with named parameters; the warm-up / decay schedule."""

from functools import partial

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lit_microopt import MicroAdam
from lit_microopt.models import WarmupDecayLR, build_optimizer
from lit_microopt.models.optimization import optimizer_class
from lit_microopt.optim.adam_mini import AdamMini


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config)


def jsonargparse_factory(cls, **init_args):
    """What LightningCLI makes of a class_path / init_args block (parsed for real, not imitated)."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch.cli import OptimizerCallable

    parser = ArgumentParser()
    parser.add_argument("--optimizer", type=OptimizerCallable)
    config = parser.parse_object({"optimizer": {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": init_args}})
    return parser.instantiate(config).optimizer


def test_adam_mini_gets_head_counts_from_the_model_config():
    model = tiny_llama()
    optimizer = build_optimizer(jsonargparse_factory(AdamMini, lr=1e-3), model)
    assert isinstance(optimizer, AdamMini)
    assert optimizer.partition["model.layers.0.self_attn.q_proj.weight"].n_blocks == 4
    assert optimizer.partition["model.layers.0.self_attn.k_proj.weight"].n_blocks == 2


def test_head_counts_written_in_the_configuration_win():
    optimizer = build_optimizer(jsonargparse_factory(AdamMini, lr=1e-3, n_heads=2, n_kv_heads=1), tiny_llama())
    assert optimizer.partition["model.layers.0.self_attn.q_proj.weight"].n_blocks == 2


@pytest.mark.parametrize("cls", [MicroAdam, torch.optim.AdamW])
def test_other_optimizers_get_named_trainable_parameters(cls):
    model = tiny_llama()
    model.model.embed_tokens.weight.requires_grad_(False)
    factory = jsonargparse_factory(cls, lr=1e-3)
    assert optimizer_class(factory) is cls
    optimizer = build_optimizer(factory, model)
    names = optimizer.param_groups[0]["param_names"]
    assert "model.embed_tokens.weight" not in names and "model.layers.0.self_attn.q_proj.weight" in names


def test_out_of_range_arguments_fail_when_the_optimizer_is_built():
    with pytest.raises(ValueError, match="density"):
        build_optimizer(jsonargparse_factory(MicroAdam, lr=1e-3, density=2.0), tiny_llama())


def test_schedule_warms_up_decays_and_resumes_exactly():
    def make():
        optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=2.0)
        return optimizer, WarmupDecayLR(optimizer, total_steps=10, warmup_steps=4, decay="cosine", final_ratio=0.1)

    optimizer, schedule = make()
    rates = []
    for _ in range(10):
        optimizer.step()
        schedule.step()
        rates.append(schedule.get_last_lr()[0])
    assert rates[:4] == [0.5, 1.0, 1.5, 2.0] and rates[-1] == pytest.approx(0.2)
    resumed_optimizer, resumed = make()
    resumed.load_state_dict(make_after(6))
    resumed_optimizer.step()
    resumed.step()
    assert resumed.get_last_lr()[0] == pytest.approx(rates[6])


def make_after(steps):
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=2.0)
    schedule = WarmupDecayLR(optimizer, total_steps=10, warmup_steps=4, decay="cosine", final_ratio=0.1)
    for _ in range(steps):
        optimizer.step()
        schedule.step()
    return schedule.state_dict()


def test_schedule_arguments_are_checked():
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    with pytest.raises(ValueError, match="warmup_steps must be in"):
        WarmupDecayLR(optimizer, total_steps=5, warmup_steps=6)


@pytest.mark.parametrize("cls", [MicroAdam, AdamMini])
def test_param_rounding_from_the_configuration_reaches_every_param_group(cls):
    optimizer = build_optimizer(jsonargparse_factory(cls, lr=1e-3, param_rounding="stochastic"), tiny_llama())
    assert {group["param_rounding"] for group in optimizer.param_groups} == {"stochastic"}


@pytest.mark.parametrize("overlay", [None, "quickstart_adam_mini.yaml"])
def test_param_rounding_stochastic_in_a_config_file_reaches_the_optimizer(overlay, tmp_path, monkeypatch):
    """``param_rounding: stochastic`` in a YAML file given to the command line (here an overlay of the quickstart)
    is what the optimizer of the LightningModule rounds with."""
    import sys
    from pathlib import Path

    from lit_microopt.cli import LitMicroOptCLI

    configs = Path(__file__).resolve().parents[2] / "configs"
    settings = tmp_path / "bf16_stochastic.yaml"
    settings.write_text("model:\n  init_args:\n    dtype: bfloat16\n    optimizer:\n      init_args:\n"
                        "        param_rounding: stochastic\n")
    files = [configs / "quickstart.yaml"] + ([configs / overlay] if overlay else []) + [settings]
    monkeypatch.setattr(sys, "argv", ["lit_microopt"])
    monkeypatch.chdir(tmp_path)
    cli = LitMicroOptCLI([argument for path in files for argument in ("--config", str(path))]
                         + ["--trainer.logger", "false", "--trainer.callbacks", "[]"], run=False)
    optimizer = build_optimizer(cli.model.optimizer, cli.model.model)
    assert isinstance(optimizer, AdamMini if overlay else MicroAdam)
    assert {group["param_rounding"] for group in optimizer.param_groups} == {"stochastic"}
    assert {p.dtype for group in optimizer.param_groups for p in group["params"]} == {torch.bfloat16}
