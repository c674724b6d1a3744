"""What the command line checks once the configuration is built and before the run starts.

Without these checks a mistake shows up as a long traceback, or only after an epoch of training:

- ``--ckpt_path last`` must find a checkpoint (Lightning would warn and train from scratch);
- the checkpoint must exist and be complete (a run killed while copying one can leave it truncated);
- for ``fit``, its optimizer state must be this run's optimizer's, with the same settings: the optimizer's own
  ``load_state_dict`` checks run here, on a throwaway copy, so that their ``ValueError`` is one ``error:`` line;
- every folder the run writes into (loggers, checkpoints) must be writable.

It also warns when a new run is about to write over another run's checkpoints, and skips the validation "before
training" of a resumed run (its model is not the one before training, and its score was logged at the save).
:class:`~lit_microopt.cli.LitMicroOptCLI` calls :func:`check_before_running`.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from lit_microopt.models.optimization import OptimizerFromConfig
from lit_microopt.strategies.checkpoint_io import AtomicCheckpointIO, unreadable_checkpoint_message

#: ``ckpt_path`` values Lightning resolves itself; ``last`` is resolved here, to stop when there is none.
LIGHTNING_CHECKPOINT_NAMES = ("best", "hpc", "registry")
#: Optimizer group entries that are not settings.
GROUP_ENTRIES_NOT_SETTINGS = {"params", "param_names", "initial_lr"}


class RunCannotStart(Exception):
    """A run that cannot start as configured; the message is one sentence naming what is wrong and the fix."""


def write_checkpoints_atomically(trainer: pl.Trainer) -> None:
    """Give ``trainer`` an :class:`~lit_microopt.strategies.checkpoint_io.AtomicCheckpointIO` where it has Lightning's
    plain one; a checkpoint plugin of the user's own is kept."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


def save_monitored_checkpoints_first(trainer: pl.Trainer) -> None:
    """Order ``trainer``'s ``ModelCheckpoint`` callbacks so that those with a ``monitor`` save first.

    A checkpoint holds every callback's state as it is when the file is written. When ``last.ckpt`` is written
    before the epoch's best checkpoint, it records the best callback without that file; resumed from it, the
    callback never deletes the file, and ``best-*.ckpt`` files pile up across resumes despite ``save_top_k: 1``.
    """
    callbacks = trainer.callbacks
    positions = [index for index, callback in enumerate(callbacks) if isinstance(callback, ModelCheckpoint)]
    in_order = sorted((callbacks[index] for index in positions), key=lambda callback: callback.monitor is None)
    for index, callback in zip(positions, in_order):  # a stable sort: each group keeps its order
        callbacks[index] = callback


def check_before_running(subcommand: str, trainer: pl.Trainer, model: pl.LightningModule,
                         ckpt_path: str | Path | None) -> str | None:
    """Check that the run can start; returns the checkpoint to load (``last`` resolved to its file).

    Args:
        subcommand: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.
        trainer: the run's trainer.
        model: the run's model.
        ckpt_path: the ``--ckpt_path`` given, if any.

    Raises:
        RunCannotStart: a folder cannot be written, or the checkpoint is missing, unreadable or does not fit.

    Example::

        ckpt_path = check_before_running("fit", trainer, model, "last")
        trainer.fit(model, ckpt_path=ckpt_path)
    """
    for what, folder in _output_folders(trainer, subcommand):
        _check_writable(folder, what)
    if ckpt_path is None:
        if subcommand == "fit":
            _warn_about_earlier_checkpoints(trainer)
        return None
    if ckpt_path == "last":
        ckpt_path = _last_checkpoint(trainer)
    elif str(ckpt_path) in LIGHTNING_CHECKPOINT_NAMES or str(ckpt_path).startswith("registry:"):
        return str(ckpt_path)
    if not _is_local_file_protocol(ckpt_path):
        return str(ckpt_path)
    problem = unreadable_checkpoint_message(ckpt_path)
    if problem is not None:
        raise RunCannotStart(problem)
    if subcommand == "fit":
        _check_optimizer_state(Path(ckpt_path), model)
        # The model restored is not the one before training, and its validation was logged when it was saved.
        trainer.num_sanity_val_steps = 0
        rank_zero_info(f"Resuming from {ckpt_path}: no validation before training (the checkpoint's was logged).")
    return str(ckpt_path)


def _output_folders(trainer: pl.Trainer, subcommand: str) -> list[tuple[str, str]]:
    folders = []
    for logger in trainer.loggers:
        folder = getattr(logger, "root_dir", None) or logger.save_dir
        if folder:
            folders.append((f"the {type(logger).__name__}'s log", str(folder)))
    if subcommand == "fit":
        for callback in trainer.checkpoint_callbacks:
            folder = getattr(callback, "dirpath", None) or trainer.default_root_dir
            folders.append((f"the {type(callback).__name__}'s checkpoint", str(folder)))
    return folders


def _check_writable(folder: str, what: str) -> None:
    if not _is_local_file_protocol(folder):
        return
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise RunCannotStart(
            f"{what} folder {folder} cannot be written ({error.strerror or error}); choose another folder in the "
            "configuration, or make this one writable."
        ) from None


def _checkpoint_folders(trainer: pl.Trainer) -> list[Path]:
    folders = [
        Path(callback.dirpath) for callback in trainer.checkpoint_callbacks
        if isinstance(callback, ModelCheckpoint) and callback.dirpath and _is_local_file_protocol(callback.dirpath)
    ]
    return list(dict.fromkeys(folders))


def _last_checkpoint(trainer: pl.Trainer) -> Path:
    """The newest ``*last*.ckpt`` in the checkpoint callbacks' folders, the files Lightning's ``"last"`` looks at."""
    folders = _checkpoint_folders(trainer)
    if not folders:
        raise RunCannotStart("--ckpt_path last: no ModelCheckpoint callback has a dirpath to look in; pass the "
                             "checkpoint's path instead.")
    candidates = [path for folder in folders if folder.is_dir() for path in folder.glob("*.ckpt")
                  if ModelCheckpoint.CHECKPOINT_NAME_LAST in path.name]
    if not candidates:
        where = ", ".join(str(folder) for folder in folders)
        raise RunCannotStart(f"--ckpt_path last: there is no last checkpoint in {where}; run without --ckpt_path to "
                             "start a new run.")
    return max(candidates, key=lambda path: path.stat().st_mtime)


def _warn_about_earlier_checkpoints(trainer: pl.Trainer) -> None:
    for folder in _checkpoint_folders(trainer):
        earlier = sorted(path.name for path in folder.glob("*.ckpt")) if folder.is_dir() else []
        if earlier:
            rank_zero_warn(
                f"{folder} already holds checkpoints of another run ({', '.join(earlier)}), which this new run will "
                "write over; pass --ckpt_path last to resume that run instead, or give this run its own folder."
            )


def _optimizers_of(configured: Any) -> list[torch.optim.Optimizer]:
    """The optimizers in what ``configure_optimizers`` returned (an optimizer, a dict, or lists of them)."""
    if isinstance(configured, torch.optim.Optimizer):
        return [configured]
    if isinstance(configured, Mapping):
        return [configured["optimizer"]]
    if isinstance(configured, (list, tuple)):
        if len(configured) == 2 and isinstance(configured[0], (list, tuple)):  # ([optimizers], [schedulers])
            configured = configured[0]
        return [optimizer for item in configured for optimizer in _optimizers_of(item)]
    return []


def _check_optimizer_state(path: Path, model: pl.LightningModule) -> None:
    """Load the checkpoint's optimizer states into throwaway optimizers of this run, so that a misfit stops here."""
    if not isinstance(model, OptimizerFromConfig):
        return
    try:
        # Memory-mapped: the tensors are read when used, not all at once.
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError:
        return  # objects weights_only refuses: Lightning loads the checkpoint its own way, and checks it then
    except (RuntimeError, OSError, EOFError) as error:
        raise RunCannotStart(f"checkpoint {path} cannot be read: {str(error).splitlines()[0]}.") from None
    saved_states = checkpoint.get("optimizer_states")
    if not saved_states:
        raise RunCannotStart(f"checkpoint {path} holds the model's weights only (save_weights_only), not the optimizer "
                             "state fit needs to resume; start a new run from its weights instead.")
    optimizers = _optimizers_of(model.configure_optimizers())
    if len(optimizers) != len(saved_states):
        raise RunCannotStart(f"checkpoint {path} holds {len(saved_states)} optimizer states but this run has "
                             f"{len(optimizers)} optimizers; resume it with the configuration it was saved with.")
    for optimizer, saved in zip(optimizers, saved_states):
        name = type(optimizer).__name__
        own = set(optimizer.param_groups[0]) - GROUP_ENTRIES_NOT_SETTINGS
        theirs = set(saved["param_groups"][0]) - GROUP_ENTRIES_NOT_SETTINGS if saved["param_groups"] else own
        # Settings on both sides that the other lacks: another optimizer (a newer version only adds settings).
        if own - theirs and theirs - own:
            raise RunCannotStart(
                f"checkpoint {path} holds the state of another optimizer than this run's {name} (with settings "
                f"{', '.join(sorted(theirs - own))} that {name} does not have); resume with the optimizer it was "
                "saved with."
            )
        try:
            optimizer.load_state_dict(saved)
        except (ValueError, KeyError, RuntimeError) as error:
            raise RunCannotStart(f"checkpoint {path} does not fit this run's {name}: {error}") from None
