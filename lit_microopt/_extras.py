"""The optional dependencies, and the one error that names the extra to install when one is missing.

The core of the package (the optimizers, the callbacks, the strategies, the command line) needs PyTorch, Lightning,
torchmetrics and jsonargparse. The rest comes with extras of ``pip install 'lit-microopt[EXTRA]'``:

- ``hf``: transformers and datasets, for the models, the data modules and ``export``;
- ``eval``: lm-evaluation-harness, for the ``eval`` command, ``LMEvalCallback`` and the lm-eval model;
- ``plot``: matplotlib and tensorboard, for the ``plot`` command and TensorBoard logs;
- ``all``: everything above.
"""

from __future__ import annotations

import importlib.util

#: The modules each extra provides, as imported.
EXTRAS = {
    "hf": ("transformers", "datasets"),
    "eval": ("lm_eval", "transformers"),
    "plot": ("matplotlib",),
}


def require_extra(extra: str, *modules: str) -> None:
    """Raise ``ModuleNotFoundError`` naming the install command when a module of ``extra`` is missing.

    Args:
        extra: the extra's name, a key of :data:`EXTRAS`.
        *modules: the modules needed (default: all of the extra's). Only looked up, never imported.

    Example:
        >>> require_extra("plot", "matplotlib")  # returns when matplotlib is installed
    """
    for module in modules or EXTRAS[extra]:
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(
                f"{module} is not installed; it comes with lit_microopt's [{extra}] extra: "
                f"pip install 'lit-microopt[{extra}]'",
                name=module,
            )
