"""The command line: ``python -m lit_microopt COMMAND [options]``.

``fit``, ``validate``, ``test`` and ``predict`` run a YAML configuration through LightningCLI
(:mod:`lit_microopt.cli`). The package's other commands are listed in :data:`PACKAGE_COMMANDS`; each is a
function taking its own command line, imported only when it runs, so ``--help`` stays fast.

Add a command by adding a line to :data:`PACKAGE_COMMANDS`, e.g.
``"export": Command("export a checkpoint to a Hugging Face folder", "lit_microopt.eval.export:main")``,
where ``main(argv: list[str]) -> int | None`` parses ``argv`` (the words after the command) itself.
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    """A command of the package: one line of help and the ``"module:function"`` that runs it."""

    help: str
    target: str


#: Lightning's commands, run by LightningCLI on a YAML configuration.
LIGHTNING_COMMANDS = {
    "fit": "train a model (and validate it) from a YAML configuration: --config FILE",
    "validate": "compute the validation metrics of a model: --config FILE [--ckpt_path CHECKPOINT]",
    "test": "compute the test metrics of a model: --config FILE [--ckpt_path CHECKPOINT]",
    "predict": "generate predictions with a model: --config FILE [--ckpt_path CHECKPOINT]",
}

#: The package's other commands, by name.
PACKAGE_COMMANDS: dict[str, Command] = {
    "kernels": Command("print which compiled kernels are built and what each optimizer uses", "lit_microopt.ops.report:main"),
    "plot": Command("draw a run's logged metrics as PNG figures: RUN_DIR [--out DIR]", "lit_microopt.plot:main"),
    "eval": Command("evaluate a checkpoint on lm-eval tasks: --checkpoint PATH --tasks T1,T2 [--include_path DIR]",
                    "lit_microopt.eval.evaluate:main"),
    "export": Command("export a checkpoint to a Hugging Face folder: --checkpoint PATH --out FOLDER",
                      "lit_microopt.eval.export:main"),
}


def usage() -> str:
    """The overview ``--help`` prints: every command with its line of help."""
    width = max(map(len, [*LIGHTNING_COMMANDS, *PACKAGE_COMMANDS]))
    lines = ["usage: python -m lit_microopt COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += [f"  {name:<{width}}  {command.help}" for name, command in PACKAGE_COMMANDS.items()]
    lines += ["", "Run 'python -m lit_microopt COMMAND --help' for a command's options, e.g.",
              "  python -m lit_microopt fit --config configs/quickstart.yaml"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the command named by ``argv[0]`` (default ``sys.argv[1:]``); returns the exit status.

    Example:
        >>> main(["--help"])  # doctest: +ELLIPSIS
        usage: python -m lit_microopt COMMAND [options]
        ...
        0
    """
    from_command_line = argv is None
    argv = sys.argv[1:] if from_command_line else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from lit_microopt import __version__

        print(__version__)
        return 0
    name = argv[0]
    if name in PACKAGE_COMMANDS:
        module, function = PACKAGE_COMMANDS[name].target.split(":")
        return getattr(importlib.import_module(module), function)(argv[1:]) or 0
    if name in LIGHTNING_COMMANDS:
        from lit_microopt.cli import LitMicroOptCLI

        # LightningCLI reads sys.argv itself and warns when handed a copy of it.
        LitMicroOptCLI(None if from_command_line else argv)
        return 0
    print(f"{usage()}\n\nerror: unknown command {name!r}; choose one of the commands above.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
