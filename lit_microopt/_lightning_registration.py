"""Registering the package's strategies in Lightning without importing Lightning.

``import lit_microopt`` must not make users of the optimizers alone pay for Lightning's import (seconds), yet
``Trainer(strategy="microopt_ddp")`` must find the strategy wherever the package was imported. Lightning's
strategy registry lives in ``lightning.pytorch``: when that is imported already, the strategies register at once;
otherwise they register right after it has been imported, through a finder at the front of ``sys.meta_path``
that lets the usual finders locate the module and then runs the registration after the module's own code.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from importlib.machinery import ModuleSpec
from types import ModuleType

LIGHTNING_MODULE = "lightning.pytorch"


def _register_strategies() -> None:
    try:
        import lit_microopt.strategies  # noqa: F401  (registers the strategies on import)
    except Exception as error:  # a broken registration must not break the user's import of Lightning
        warnings.warn(f"lit_microopt could not register its Lightning strategies: {error!r}", stacklevel=2)


class _RegisterAfterLightning(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for Lightning's module, it wraps the real module's execution once, then leaves."""

    def find_spec(self, fullname: str, path: object = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname != LIGHTNING_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            _register_strategies()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]  (this spec's own loader)
        return spec


def register_when_lightning_loads() -> None:
    """Register the strategies now if Lightning is imported, else as soon as it is."""
    if LIGHTNING_MODULE in sys.modules:
        _register_strategies()
    elif not any(isinstance(finder, _RegisterAfterLightning) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterLightning())
