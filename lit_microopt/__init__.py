"""lit_microopt: MicroAdam and Adam-mini for PyTorch and PyTorch Lightning.

``import lit_microopt`` is cheap and has no side effects: the names below are imported on first use (the
optimizers import PyTorch, ``MicroOptDDPStrategy`` imports Lightning), and nothing registers anywhere. Two
registrations happen where their framework is loaded anyway:

- the Lightning strategy names (``microopt_ddp`` and its variants) when :mod:`lit_microopt.strategies` is
  imported, which ``python -m lit_microopt`` does (docs/distributed.md);
- the lm-eval model name ``lit_microopt`` when :mod:`lit_microopt.eval` is imported (docs/evaluation.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public names, each with the module that defines it.
_LAZY_NAMES = {
    "AdamMini": "lit_microopt.optim.adam_mini",
    "MicroAdam": "lit_microopt.optim.microadam",
    "MicroOptDDPStrategy": "lit_microopt.strategies",
}

if TYPE_CHECKING:
    from lit_microopt.optim.adam_mini import AdamMini
    from lit_microopt.optim.microadam import MicroAdam
    from lit_microopt.strategies import MicroOptDDPStrategy


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_NAMES])


__all__ = ["AdamMini", "MicroAdam", "MicroOptDDPStrategy", "__version__"]
