"""The optimizer and learning-rate schedule of a LightningModule, built from what the YAML file describes.

``LightningCLI`` turns ``optimizer: {class_path: ..., init_args: ...}`` into a callable that takes the
parameters (an ``OptimizerCallable``). :func:`build_optimizer` calls it with *named* parameters, so every
optimizer is configured the same way from YAML and still gets what it needs from the model:

- MicroAdam and AdamW get the names (they appear in MicroAdam's error messages and telemetry);
- Adam-mini also gets the attention geometry (``n_heads``, ``n_kv_heads``, ``head_dim``) read from the Hugging
  Face ``model.config``, and each parameter's module, exactly as ``AdamMini.from_model`` reads them, unless the
  YAML file sets them.

:class:`OptimizerFromConfig` is the mixin the package's LightningModules share for ``configure_optimizers``.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable, ReduceLROnPlateau

from lit_microopt.optim.adam_mini import AdamMini
from lit_microopt.optim.partition import HeadConfig, parameter_modules

HEAD_ARGUMENTS = ("n_heads", "n_kv_heads", "head_dim")


def optimizer_class(factory: Any) -> type | None:
    """The class an optimizer factory builds: the class itself, a ``functools.partial`` of it, or
    jsonargparse's ``partial(call, instantiator, class, **init_args)``; ``None`` when it cannot be told.

    Example:
        >>> optimizer_class(partial(torch.optim.AdamW, lr=1e-3)).__name__
        'AdamW'
    """
    while True:
        if inspect.isclass(factory):
            return factory
        if not isinstance(factory, partial):
            return None
        if inspect.isclass(factory.func):
            return factory.func
        built = next((arg for arg in factory.args if inspect.isclass(arg)), None)
        if built is not None:
            return built
        factory = factory.func


def configured_arguments(factory: Any) -> dict[str, Any]:
    """The keyword arguments a factory already holds (the YAML's ``init_args``); empty for a bare class."""
    return dict(factory.keywords) if isinstance(factory, partial) else {}


def adam_mini_model_arguments(model: torch.nn.Module, configured: dict[str, Any]) -> dict[str, Any]:
    """What ``AdamMini`` needs from ``model`` beyond the YAML's arguments: head counts and owning modules.

    Follows ``AdamMini.from_model``: the head counts come from the Hugging Face ``model.config``
    (``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` or ``hidden_size // num_attention_heads``)
    unless the configuration sets any of the three, and each parameter's owning module is passed so that
    Hugging Face ``Conv1D`` weights and ``nn.MultiheadAttention`` are recognised.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64,
        ...     num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
        >>> {key: value for key, value in adam_mini_model_arguments(model, {}).items() if key != "modules"}
        {'n_heads': 4, 'n_kv_heads': 2, 'head_dim': 8}
    """
    arguments: dict[str, Any] = {}
    config = getattr(model, "config", None)
    if config is not None and all(configured.get(key) is None for key in HEAD_ARGUMENTS):
        arguments.update(HeadConfig.from_hf_config(config).as_arguments())
    if configured.get("modules") is None:
        arguments["modules"] = parameter_modules(model)
    return arguments


def build_optimizer(factory: OptimizerCallable, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer over ``model``'s trainable parameters, passed with their names.

    Args:
        factory: what the YAML's ``optimizer`` became (a class, or a callable taking the parameters).
        model: the model to optimise (the Hugging Face model, so that names match its ``config``).

    Example:
        >>> from lit_microopt import MicroAdam
        >>> model = torch.nn.Linear(4, 4)
        >>> build_optimizer(partial(MicroAdam, lr=1e-4, m=4), model).param_groups[0]["param_names"]
        ['weight', 'bias']
    """
    named_parameters = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    if not named_parameters:
        raise ValueError("the model has no trainable parameters; unfreeze some (requires_grad=True) to train it.")
    built = optimizer_class(factory)
    extra = {}
    if built is not None and issubclass(built, AdamMini):
        extra = adam_mini_model_arguments(model, configured_arguments(factory))
    return factory(named_parameters, **extra)


class OptimizerFromConfig:
    """Mixin for LightningModules that hold ``self.optimizer`` / ``self.lr_scheduler`` factories and ``self.model``.

    ``configure_optimizers`` builds the optimizer with :func:`build_optimizer` and steps the scheduler after
    every optimizer step (``ReduceLROnPlateau`` after every validation, on ``val_loss``).
    """

    optimizer: OptimizerCallable
    lr_scheduler: LRSchedulerCallable | None
    model: torch.nn.Module

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.optimizer, self.model)
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self.lr_scheduler(optimizer)
        if isinstance(scheduler, (ReduceLROnPlateau, torch.optim.lr_scheduler.ReduceLROnPlateau)):
            schedule = {"scheduler": scheduler, "monitor": "val_loss", "interval": "epoch"}
        else:
            schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}
