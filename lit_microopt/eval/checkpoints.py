"""Reading a trained :class:`~lit_microopt.models.CausalLM` back from a Lightning checkpoint, for evaluation."""

from __future__ import annotations

from pathlib import Path

import torch

from lit_microopt.models import CausalLM


def load_causal_lm(checkpoint: str | Path, device: str | torch.device = "cpu") -> CausalLM:
    """The ``CausalLM`` saved in ``checkpoint``, with its tokenizer, in evaluation mode on ``device``.

    The checkpoint holds all it needs: the model is built from the configuration saved in it and given the trained
    weights, and the tokenizer comes from it too, so neither the ``pretrained`` folder nor a network is needed
    (checkpoints written before lit_microopt saved the configuration read their ``pretrained`` folder again).

    Args:
        checkpoint: a ``.ckpt`` file written by Lightning while training a ``CausalLM``.
        device: where to put the model (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    Raises:
        FileNotFoundError: ``checkpoint`` is not a file.
        ValueError: the file is not a ``CausalLM`` checkpoint, or it holds no tokenizer.

    Example:
        >>> module = load_causal_lm("runs/quickstart/checkpoints/last.ckpt")  # doctest: +SKIP
        >>> module.tokenizer.decode(module.tokenizer("7+5=").input_ids, skip_special_tokens=True)  # doctest: +SKIP
        '7+5='
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(checkpoint)!r} is not a file (relative paths start at {Path.cwd()}); give a .ckpt file "
            "that training wrote, e.g. runs/quickstart/checkpoints/last.ckpt."
        )
    try:
        module = CausalLM.load_from_checkpoint(path, map_location="cpu")
    except (KeyError, TypeError, RuntimeError) as error:
        # What Lightning raises for a file of another module (unknown hyper-parameters, other weights) or none.
        raise ValueError(
            f"{path} is not a checkpoint of lit_microopt's CausalLM ({type(error).__name__}: {error}); give a "
            "checkpoint written while training a CausalLM."
        ) from None
    if module.tokenizer is None:
        raise ValueError(
            f"{path} holds no tokenizer; evaluate a checkpoint written by this version of lit_microopt (CausalLM "
            "saves its tokenizer in every checkpoint)."
        )
    return module.to(device).eval()
