"""lit_microopt: MicroAdam and Adam-mini for PyTorch and PyTorch Lightning.

Importing the package registers its lm-eval model (``lit_microopt``) and its Lightning strategies
(``microopt_ddp`` and its variants, as soon as Lightning is imported: the optimizers alone never import it).
"""

from typing import Any

from lit_microopt import eval as _eval  # registers the lm-eval model "lit_microopt" (no lm-eval model code is read)
from lit_microopt._lightning_registration import register_when_lightning_loads
from lit_microopt.optim.adam_mini import AdamMini
from lit_microopt.optim.microadam import MicroAdam

__version__ = "0.1.0"

register_when_lightning_loads()


def __getattr__(name: str) -> Any:
    if name == "MicroOptDDPStrategy":  # imported on first use: it needs Lightning
        from lit_microopt.strategies import MicroOptDDPStrategy

        return MicroOptDDPStrategy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AdamMini", "MicroAdam", "MicroOptDDPStrategy", "__version__"]
