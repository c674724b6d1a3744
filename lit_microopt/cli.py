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
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningCLI

import lit_microopt.strategies  # noqa: F401  (registers the strategy names: --trainer.strategy microopt_ddp)
from lit_microopt.data.records import DataFormatError
from lit_microopt.models.optimization import OptimizerFromConfig

PROG = "python -m lit_microopt"


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
        super().__init__(args=args, **kwargs)

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
        except (ValueError, TypeError, OSError) as error:
            self.fail(f"{type(error).__name__}: {error}")

    def _run_subcommand(self, subcommand: str) -> None:
        # LightningCLI runs trainer.fit / validate / test / predict here; the data is read inside them.
        try:
            super()._run_subcommand(subcommand)
        except DataFormatError as error:
            self.fail(f"bad data: {error}")
