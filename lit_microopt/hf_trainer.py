"""MicroAdam and Adam-mini with Hugging Face's ``transformers.Trainer``.

The Trainer builds its optimizer as ``optimizer_cls(param_groups, **kwargs)`` from two groups of bare tensors
(with and without weight decay). MicroAdam works that way; Adam-mini does not, because it finds attention heads
and biases by parameter name, and bare tensors have none. Since transformers 5, ``optimizer_cls`` may instead
be a *factory*: a class that the Trainer instantiates without arguments and then calls with the model and the
keyword arguments. :class:`AdamMiniForTrainer` and :class:`MicroAdamForTrainer` are such factories::

    from transformers import Trainer
    from lit_microopt.hf_trainer import AdamMiniForTrainer

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      optimizer_cls_and_kwargs=(AdamMiniForTrainer, {"lr": 1e-4, "weight_decay": 0.1}))

A factory is given the whole model, not the Trainer's groups: ``TrainingArguments.weight_decay`` does not reach
it (pass ``weight_decay`` in the keyword arguments; Adam-mini decays only weight matrices anyway), and frozen
parameters are included but never stepped (they get no gradient, hence no state). docs/hf_trainer.md has the
whole recipe, saving and resuming included.
"""

from __future__ import annotations

from typing import Any

import torch

from lit_microopt.optim import AdamMini, MicroAdam

_OLD_TRANSFORMERS = (
    "{name} was called with parameters: this transformers version builds optimizer_cls from bare parameters and "
    "knows no optimizer factories (transformers >= 5 does); pass optimizers=({optimizer}, None) to the Trainer instead."
)


class AdamMiniForTrainer:
    """``optimizer_cls`` for ``transformers.Trainer``: builds :class:`~lit_microopt.optim.AdamMini` from the model.

    The Trainer calls ``AdamMiniForTrainer()(model, **kwargs)``, which is ``AdamMini.from_model(model, **kwargs)``:
    named parameters, and head counts read from ``model.config``.

    Args:
        *unexpected: nothing; an older transformers that passes parameter groups gets an error saying what to do.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
        ...                                      num_hidden_layers=1, num_attention_heads=4))
        >>> optimizer = AdamMiniForTrainer()(model, lr=1e-3, weight_decay=0.1)
        >>> optimizer.partition["model.layers.0.self_attn.q_proj.weight"].n_blocks
        4
    """

    def __init__(self, *unexpected: Any, **unexpected_kwargs: Any) -> None:
        if unexpected or unexpected_kwargs:
            raise TypeError(_OLD_TRANSFORMERS.format(name=type(self).__name__, optimizer="AdamMini.from_model(model)"))

    def __call__(self, model: torch.nn.Module, **kwargs: Any) -> AdamMini:
        return AdamMini.from_model(model, **kwargs)


class MicroAdamForTrainer:
    """``optimizer_cls`` for ``transformers.Trainer``: builds :class:`~lit_microopt.optim.MicroAdam` from the model.

    ``optimizer_cls_and_kwargs=(MicroAdam, {...})`` works too; this factory gives MicroAdam the parameters' names,
    so that its errors (a non-finite gradient) and its telemetry name parameters instead of positions.

    Args:
        *unexpected: nothing; an older transformers that passes parameter groups gets an error saying what to do.

    Example:
        >>> model = torch.nn.Linear(64, 64)
        >>> optimizer = MicroAdamForTrainer()(model, lr=1e-4, m=10, density=0.01)
        >>> optimizer.param_groups[0]["param_names"]
        ['weight', 'bias']
    """

    def __init__(self, *unexpected: Any, **unexpected_kwargs: Any) -> None:
        if unexpected or unexpected_kwargs:
            raise TypeError(_OLD_TRANSFORMERS.format(name=type(self).__name__,
                                                     optimizer="MicroAdam(model.named_parameters())"))

    def __call__(self, model: torch.nn.Module, **kwargs: Any) -> MicroAdam:
        return MicroAdam(model.named_parameters(), **kwargs)
