"""Hugging Face models and tokenizers for the LightningModules: where they come from and how they travel.

A model comes from ``pretrained`` (a local folder, a folder shipped inside this package, or a Hub name) or
from ``config`` (a dict with a ``model_type``, for training from scratch). A tokenizer travels inside every
Lightning checkpoint as the files ``save_pretrained`` writes, so a trained model is self-contained.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import torch

#: Where the package lives: ``pretrained: lit_microopt/...`` finds folders shipped inside it from anywhere.
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
#: ``name`` or ``organisation/name``, as on the Hugging Face Hub.
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.txt", "vocab.json")


def resolve_pretrained(name: str) -> str:
    """The folder or Hub name to load ``name`` from.

    An existing folder is used as is; ``lit_microopt/...`` is also looked up inside the installed package
    (the quickstart's base model works from any directory). Any other name that looks like a path (see
    :func:`looks_local`) and is not a folder is an error here, at once, rather than a failed download after
    the Hub client's retries (about a minute without a network).

    Raises:
        FileNotFoundError: ``name`` looks like a path and no such folder exists.

    Example:
        >>> resolve_pretrained("meta-llama/Llama-2-7b-hf")
        'meta-llama/Llama-2-7b-hf'
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    packaged = PACKAGE_ROOT.parent / name
    if name.startswith(f"{PACKAGE_ROOT.name}/") and packaged.is_dir():
        return str(packaged)
    if path.exists() or looks_local(name):
        raise FileNotFoundError(
            f"pretrained folder {name!r} does not exist (relative paths start at {Path.cwd()}); "
            "give an existing model folder or a Hugging Face Hub name such as 'meta-llama/Llama-2-7b-hf'."
        )
    return name


def looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a Hugging Face Hub name.

    Hub names are ``name`` or ``organisation/name`` (letters, digits, ``_``, ``.``, ``-``), so a name is a path
    when it is not of that form (it starts with ``.``, ``/`` or ``~``, has two slashes or a backslash, ...) or
    when its first part is a folder of the current directory: ``runs/base`` where ``runs/`` exists is a
    mistyped or missing folder, not a model to download.

    Example:
        >>> looks_local("meta-llama/Llama-2-7b-hf"), looks_local("./base"), looks_local("models/tiny/v2")
        (False, True, True)
    """
    if not HUB_NAME.match(name):
        return True
    first, _, rest = name.partition("/")
    return bool(rest) and Path(first).is_dir()


def torch_dtype(name: str | None) -> torch.dtype | None:
    """``"bfloat16"`` -> ``torch.bfloat16``; ``None`` keeps the dtype the weights are stored in.

    Example:
        >>> torch_dtype("bfloat16")
        torch.bfloat16
    """
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or null, got {name!r}.")
    return DTYPES[name]


def load_model(
    auto_class: Any, pretrained: str | None, config: dict[str, Any] | None, dtype: str | None, **kwargs: Any
) -> Any:
    """A model of ``auto_class`` (``AutoModelForCausalLM``, ...) from ``pretrained`` or from ``config``.

    Args:
        auto_class: the Hugging Face auto class.
        pretrained: folder or Hub name (see :func:`resolve_pretrained`).
        config: keyword arguments of the model's configuration, with ``model_type`` (e.g. ``"llama"``).
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``None`` (as stored; float32 from a config).
        **kwargs: passed to ``from_pretrained`` / the configuration (e.g. ``num_labels``).

    Raises:
        ValueError: both or neither of ``pretrained`` and ``config`` given, or ``config`` without ``model_type``.
        FileNotFoundError: ``pretrained`` looks like a path and does not exist.
        OSError: ``pretrained`` is neither a folder nor a model the Hub could provide.
    """
    from transformers import AutoConfig

    if (pretrained is None) == (config is None):
        raise ValueError(
            "set exactly one of pretrained (a model folder or Hub name, to fine-tune) and config "
            "(a model configuration with a model_type, to train from scratch)."
        )
    if pretrained is not None:
        source = resolve_pretrained(pretrained)
        try:
            model = auto_class.from_pretrained(source, dtype=torch_dtype(dtype), **kwargs)
        except OSError as error:
            raise OSError(f"could not load pretrained model {pretrained!r}: {error}") from None
        # from_pretrained returns the model in eval mode (dropout off), and Lightning keeps modules in the mode
        # it finds them: fine-tuning must start in train mode.
        return model.train()
    config = dict(config)
    model_type = config.pop("model_type", None)
    if model_type is None:
        raise ValueError("config needs a model_type (e.g. model_type: llama) to know which architecture to build.")
    model_config = AutoConfig.for_model(model_type, **config, **kwargs)
    return auto_class.from_config(model_config, dtype=torch_dtype(dtype) or torch.float32)


def load_tokenizer(name: str) -> Any:
    """The tokenizer saved in folder (or Hub model) ``name``."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_pretrained(name))


def load_tokenizer_if_present(pretrained: str) -> Any | None:
    """The tokenizer next to a pretrained model, or ``None`` when its folder has none."""
    source = resolve_pretrained(pretrained)
    if Path(source).is_dir() and not any((Path(source) / file).exists() for file in TOKENIZER_FILES):
        return None
    return load_tokenizer(source)


def tokenizer_to_files(tokenizer: Any) -> dict[str, bytes]:
    """The files ``tokenizer.save_pretrained`` writes, by name: a checkpoint can hold them."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        return {path.name: path.read_bytes() for path in Path(folder).iterdir() if path.is_file()}


def tokenizer_from_files(files: dict[str, bytes]) -> Any:
    """The tokenizer :func:`tokenizer_to_files` stored.

    Example:
        >>> from lit_microopt.data import build_char_tokenizer
        >>> tokenizer_from_files(tokenizer_to_files(build_char_tokenizer()))("7").input_ids
        [1, 27]
    """
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        for name, content in files.items():
            (Path(folder) / name).write_bytes(content)
        return AutoTokenizer.from_pretrained(folder)


def same_vocabulary(first: Any, second: Any) -> bool:
    """Whether two tokenizers map every token to the same id."""
    return first is second or first.get_vocab() == second.get_vocab()
