"""lit_microopt: MicroAdam and Adam-mini for PyTorch and PyTorch Lightning."""

from lit_microopt import eval as _eval  # registers the lm-eval model "lit_microopt" (no lm-eval model code is read)
from lit_microopt.optim.adam_mini import AdamMini
from lit_microopt.optim.microadam import MicroAdam
from lit_microopt.strategies import MicroOptDDPStrategy  # registers "microopt_ddp" in Lightning's StrategyRegistry

__version__ = "0.1.0"

__all__ = ["AdamMini", "MicroAdam", "MicroOptDDPStrategy", "__version__"]
