"""``python -m lit_microopt export``: a trained checkpoint as a Hugging Face model folder.

The folder holds what ``save_pretrained`` writes for the model (configuration, generation configuration,
safetensors weights) and for its tokenizer, so that any Hugging Face tool loads it offline, e.g. lm-eval's own
model::

    python -m lit_microopt export --checkpoint runs/quickstart/checkpoints/last.ckpt --out exported/quickstart
    lm_eval --model hf --model_args pretrained=exported/quickstart --device cpu \\
        --tasks lit_microopt_arithmetic --include_path configs/tasks
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from lit_microopt.eval.checkpoints import load_causal_lm

#: Token ids the generation configuration needs, each filled from the tokenizer when the model has none.
SPECIAL_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def export_checkpoint(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the model and tokenizer of a ``CausalLM`` checkpoint into folder ``out``; returns ``out``.

    The weights keep the dtype they were trained in. Token ids the model's generation configuration lacks
    (a model trained from a bare configuration) are taken from the tokenizer, so that ``generate`` stops at
    its ``<eos>``.

    Args:
        checkpoint: a ``.ckpt`` file of a ``CausalLM``.
        out: the folder to write; it must not exist or be empty, unless ``overwrite``.
        overwrite: write into a folder that already holds files (files of the same names are replaced).

    Raises:
        FileExistsError: ``out`` holds files and ``overwrite`` is false.
        FileNotFoundError, ValueError: see :func:`~lit_microopt.eval.load_causal_lm`.

    Example:
        >>> export_checkpoint("runs/quickstart/checkpoints/last.ckpt", "exported/quickstart")  # doctest: +SKIP
        PosixPath('exported/quickstart')
    """
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise FileExistsError(
            f"{out} already exists and is not an empty folder; choose a new folder or pass --overwrite (overwrite=True)."
        )
    module = load_causal_lm(checkpoint, device="cpu")
    generation = module.model.generation_config
    for name in SPECIAL_TOKEN_IDS:
        if getattr(generation, name, None) is None and getattr(module.tokenizer, name, None) is not None:
            setattr(generation, name, getattr(module.tokenizer, name))
    out.mkdir(parents=True, exist_ok=True)
    module.model.save_pretrained(out)
    module.tokenizer.save_pretrained(out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The ``export`` command: ``--checkpoint PATH --out FOLDER [--overwrite]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m lit_microopt export",
        description="Export a CausalLM checkpoint to a Hugging Face folder (model and tokenizer, save_pretrained).",
    )
    parser.add_argument("--checkpoint", required=True, help="the .ckpt file, e.g. runs/quickstart/checkpoints/last.ckpt")
    parser.add_argument("--out", required=True, help="the folder to write (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="write into a folder that already holds files")
    arguments = parser.parse_args(argv)
    try:
        out = export_checkpoint(arguments.checkpoint, arguments.out, overwrite=arguments.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        parser.error(str(error))
    print(f"exported {arguments.checkpoint} to {out}")
    return 0
