"""Self-contained checkpoints: what a model's checkpoint holds besides its weights, so that it loads anywhere.

A Lightning checkpoint rebuilds its module by calling ``__init__`` with the saved hyper-parameters, then loads
the weights. Saved as given, ``pretrained: some/folder`` would read that folder (or the Hub) again, only for the
model's configuration: the weights are all in the checkpoint. So the checkpoint's hyper-parameters name the
trained model's own configuration instead (``config``, ``dtype``), its tokenizer travels as files, and
``CausalLM.load_from_checkpoint(path)``, ``eval`` and ``export`` need neither the base folder nor a network.
The ``pretrained`` and ``tokenizer`` the run was given stay in the checkpoint, under :data:`TRAINED_FROM_KEY`,
for the record.

Resuming with ``fit --ckpt_path`` is not affected: the module is built from the run's YAML, as when it started.
"""

from __future__ import annotations

from typing import Any

from typing_extensions import override

from lit_microopt.models.hf_loading import DTYPES, tokenizer_from_files, tokenizer_to_files

#: The tokenizer, as the files ``save_pretrained`` writes.
TOKENIZER_KEY = "tokenizer_files"
#: The model's generation configuration (a dict), when it has one: decoding settings the base folder had.
GENERATION_CONFIG_KEY = "generation_config"
#: The ``pretrained`` and ``tokenizer`` hyper-parameters the module was built with.
TRAINED_FROM_KEY = "trained_from"


def standalone_hyperparameters(hyperparameters: dict[str, Any], model: Any) -> dict[str, Any]:
    """``hyperparameters`` that rebuild ``model`` (a Hugging Face model) from its configuration, without files.

    ``pretrained`` and ``tokenizer`` become ``None``, ``config`` the model's whole configuration (with its
    ``model_type``), and ``dtype`` the dtype the weights have now, so that loading keeps it.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2))
        >>> saved = standalone_hyperparameters({"pretrained": "base/folder", "dtype": None}, model)
        >>> saved["pretrained"], saved["config"]["model_type"], saved["dtype"]
        (None, 'llama', 'float32')
    """
    dtype_names = {dtype: name for name, dtype in DTYPES.items()}
    return {
        **hyperparameters,
        "pretrained": None,
        "tokenizer": None,
        "config": model.config.to_dict(),
        "dtype": dtype_names.get(model.dtype, hyperparameters.get("dtype")),
    }


class SelfContainedCheckpoint:
    """A mixin for LightningModules that hold a Hugging Face ``self.model`` and ``self.tokenizer`` (or ``None``).

    It makes their checkpoints self-contained (see this module's description): list it before
    ``pl.LightningModule`` among the bases, and give ``__init__`` the arguments ``pretrained``, ``config``,
    ``tokenizer`` and ``dtype``, with the tokenizer left ``None`` when none is given.

    Example:
        >>> import lightning.pytorch as pl
        >>> class MyModel(SelfContainedCheckpoint, pl.LightningModule):
        ...     def __init__(self, pretrained=None, config=None, tokenizer=None, dtype=None):
        ...         super().__init__()
        ...         self.save_hyperparameters()
        ...         self.model = load_model(AutoModelForCausalLM, pretrained, config, dtype)
        ...         self.tokenizer = load_tokenizer(tokenizer) if tokenizer else None
    """

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.tokenizer is not None:
            checkpoint[TOKENIZER_KEY] = tokenizer_to_files(self.tokenizer)
        generation = getattr(self.model, "generation_config", None)
        if generation is not None:
            checkpoint[GENERATION_CONFIG_KEY] = generation.to_dict()
        hyperparameters = checkpoint.get("hyper_parameters")
        if hyperparameters is not None:  # Lightning's copy of self.hparams: changing it leaves the module alone
            checkpoint[TRAINED_FROM_KEY] = {key: hyperparameters.get(key) for key in ("pretrained", "tokenizer")}
            checkpoint["hyper_parameters"] = standalone_hyperparameters(hyperparameters, self.model)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resuming a fit keeps the tokenizer the run's YAML gave; load_from_checkpoint has none and takes the saved one.
        if self.tokenizer is None and TOKENIZER_KEY in checkpoint:
            self.tokenizer = tokenizer_from_files(checkpoint[TOKENIZER_KEY])
        if GENERATION_CONFIG_KEY in checkpoint and getattr(self.model, "generation_config", None) is not None:
            from transformers import GenerationConfig

            self.model.generation_config = GenerationConfig.from_dict(checkpoint[GENERATION_CONFIG_KEY])
