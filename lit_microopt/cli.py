"""The ``fit`` / ``validate`` / ``test`` / ``predict`` commands: LightningCLI, set up for this package.

Any LightningModule and LightningDataModule can be named in the YAML file (``class_path``); the package's
own are :class:`~lit_microopt.models.CausalLM`, :class:`~lit_microopt.models.SequenceClassifier` and the data
modules of :mod:`lit_microopt.data`. The models build their optimizer themselves, from named parameters
(``auto_configure_optimizers=False``), and the resolved configuration is saved as ``config.yaml`` in each
run's log folder.

A mistake in the configuration ends the command with its usage and an ``error:`` message (exit status 2)
rather than a traceback: what jsonargparse finds while parsing (unknown key, wrong type), what the classes
raise while being built (a ``pretrained`` folder that does not exist), what building the optimizer raises
(an out-of-range argument: checked before the run starts), and bad records found while the data loads.
Before the run starts, :mod:`lit_microopt.cli_checks` checks the ``--ckpt_path`` checkpoint (found, complete, of
this run's optimizer and settings) and that every output folder can be written. Options are taken by their whole
names only, checkpoints are written atomically, and the checkpoint callbacks with a ``monitor`` save first.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_only

import lit_microopt.strategies  # noqa: F401  (registers the strategy names: --trainer.strategy microopt_ddp)
from lit_microopt.data.records import DataFormatError
from lit_microopt.models.optimization import OptimizerFromConfig
from lit_microopt.cli_checks import (
    RunCannotStart,
    check_before_running,
    save_monitored_checkpoints_first,
    write_checkpoints_atomically,
)
from lit_microopt.strategies.checkpoint_io import unreadable_checkpoint_message

PROG = "python -m lit_microopt"


class RankZeroStderrHandler(logging.StreamHandler):
    """Writes records to the current ``sys.stderr`` (looked up at each record), from the process of rank zero only."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))  # as Lightning shows its own
        self.addFilter(lambda record: rank_zero_only.rank == 0)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the current stderr, so that a replaced one (a test's capture) is followed


def show_package_logs() -> None:
    """Show the package's INFO records on stderr, once per run (rank zero): Adam-mini's partition summary, the sizes of
    the data sets, the checks before a run. Nothing changes where the application set the level or a handler itself.
    """
    package_logger = logging.getLogger("lit_microopt")
    if package_logger.level == logging.NOTSET:
        package_logger.setLevel(logging.INFO)
    if not package_logger.handlers:
        package_logger.addHandler(RankZeroStderrHandler())


class LitMicroOptCLI(LightningCLI):
    """``LightningCLI`` with the package's settings and its clear errors for bad configurations.

    Args:
        args: the command line after the program name (``None``: ``sys.argv[1:]``), e.g.
            ``["fit", "--config", "configs/quickstart.yaml"]``.
        **kwargs: any other ``LightningCLI`` argument.

    Example:
        >>> LitMicroOptCLI(["fit", "--config", "configs/quickstart.yaml"])  # doctest: +SKIP
    """

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        kwargs = {
            "subclass_mode_model": True,
            "subclass_mode_data": True,
            "auto_configure_optimizers": False,
            # A run with a fixed logger version writes into the same folder again: replace its config.yaml.
            "save_config_kwargs": {"overwrite": True},
            "parser_kwargs": {"prog": PROG},
            **kwargs,
        }
        show_package_logs()
        super().__init__(args=args, **kwargs)

    def init_parser(self, **kwargs: Any) -> Any:
        """The parser of the command and of each subcommand; it takes options only by their whole names."""
        # argparse's default would take --trainer.max_epoch for --trainer.max_epochs, and a typo for a setting.
        return super().init_parser(**{"allow_abbrev": False, **kwargs})

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the hyper-parameters of a --ckpt_path file while parsing: a truncated file would end
        # the command there with torch.load's traceback.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            problem = unreadable_checkpoint_message(ckpt_path)
            if problem is not None:
                self.fail(problem)
        super()._parse_ckpt_path()

    def fail(self, message: str) -> NoReturn:
        """Print ``message`` as the command line's error (usage line, then ``error: ...``) and exit with status 2."""
        self.parser.error(message)
        sys.exit(2)  # parser.error exits already; this keeps the promise when a parser is built not to

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; then build the optimizer once, so that a bad argument stops here."""
        try:
            super().instantiate_classes()
            if isinstance(self.model, OptimizerFromConfig):
                self.model.configure_optimizers()  # thrown away: the trainer builds its own when the run starts
        except (ValueError, TypeError, OSError, MisconfigurationException) as error:  # e.g. --trainer.devices 0
            self.fail(f"{type(error).__name__}: {error}")
        write_checkpoints_atomically(self.trainer)
        save_monitored_checkpoints_first(self.trainer)

    def _run_subcommand(self, subcommand: str) -> None:
        # LightningCLI runs trainer.fit / validate / test / predict here; the data is read inside them.
        try:
            # What would otherwise fail mid-run, or with a traceback: the checkpoint to resume, the output folders.
            arguments = self.config_init[subcommand]
            if "ckpt_path" in arguments:
                arguments["ckpt_path"] = check_before_running(subcommand, self.trainer, self.model,
                                                              arguments["ckpt_path"])
            super()._run_subcommand(subcommand)
        except RunCannotStart as error:
            self.fail(str(error))
        except DataFormatError as error:
            self.fail(f"bad data: {error}")
