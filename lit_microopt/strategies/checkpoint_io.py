"""Checkpoint files that a kill cannot truncate, and a plain account of a checkpoint that cannot be read.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction: the checkpoint goes to a temporary file in
``TMPDIR``, which is then moved over the target. When ``TMPDIR`` is on another filesystem the move is a copy into the
target, in place, so a kill during the copy leaves a truncated ``last.ckpt`` where the previous epoch's was.
:class:`AtomicCheckpointIO` writes the temporary file beside the target and renames it: the target is the old
checkpoint or the new one, never a part of either. The package's command line uses it by default
(:class:`~lit_microopt.cli.LitMicroOptCLI`), and so does :class:`~lit_microopt.strategies.MicroOptDDPStrategy`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic: write a temporary file beside the target, then rename.

    Remote paths (``s3://`` and the like) are written as ``TorchCheckpointIO`` writes them.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(plugins=[AtomicCheckpointIO()])  # doctest: +SKIP

    In a LightningCLI config::

        trainer:
          plugins: [lit_microopt.strategies.AtomicCheckpointIO]
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A hidden name without the .ckpt suffix: neither ModelCheckpoint nor --ckpt_path last takes it for a
        # checkpoint if a kill leaves it behind.
        descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
        try:
            with os.fdopen(descriptor, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(temporary)
            raise
        _sync_folder(target.parent)  # the rename itself survives a power cut


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened or synced
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def checkpoint_file_problem(path: str | os.PathLike) -> str | None:
    """What makes the checkpoint file at ``path`` unreadable (missing, empty, truncated), or ``None`` if it reads.

    Checks the file's structure (``torch.save`` writes a zip archive whose index is at the end, so a truncated
    file has none) without loading its tensors.

    Example:
        >>> checkpoint_file_problem("no/such/file.ckpt")
        'there is no such file'
    """
    path = Path(path)
    if not path.exists():
        return "there is no such file"
    if path.is_dir():
        return None  # a distributed checkpoint (a folder): its reader checks it
    try:
        size = path.stat().st_size
        if size == 0:
            return "it is empty (0 bytes), probably cut short while it was written"
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except zipfile.BadZipFile:
        return f"it is truncated or not a checkpoint ({size} bytes, no complete torch.save archive)"
    except OSError as error:
        return f"it cannot be read ({error.strerror or error})"
    return None


def newest_readable_checkpoint(folder: str | os.PathLike, besides: str | os.PathLike | None = None) -> Path | None:
    """The most recently written readable ``*.ckpt`` file in ``folder`` other than ``besides``, or ``None``.

    Example:
        >>> newest_readable_checkpoint("no/such/folder") is None
        True
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    excluded = Path(besides).resolve() if besides is not None else None
    candidates = [path for path in folder.glob("*.ckpt") if path.is_file() and path.resolve() != excluded]
    for path in sorted(candidates, key=lambda candidate: candidate.stat().st_mtime, reverse=True):
        if checkpoint_file_problem(path) is None:
            return path
    return None


def unreadable_checkpoint_message(path: str | os.PathLike) -> str | None:
    """A one-sentence error for a checkpoint that cannot be read, naming a readable one beside it; ``None`` if it reads.

    Example:
        >>> unreadable_checkpoint_message("runs/none/last.ckpt")
        'checkpoint runs/none/last.ckpt cannot be used: there is no such file.'
    """
    problem = checkpoint_file_problem(path)
    if problem is None:
        return None
    message = f"checkpoint {path} cannot be used: {problem}"
    previous = newest_readable_checkpoint(Path(path).parent, besides=path)
    if previous is not None:
        return f"{message}; the newest readable checkpoint beside it is {previous}: pass it to --ckpt_path."
    return f"{message}."


__all__ = ["AtomicCheckpointIO", "checkpoint_file_problem", "newest_readable_checkpoint",
           "unreadable_checkpoint_message"]
