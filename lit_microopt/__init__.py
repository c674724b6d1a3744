"""lit_microopt: MicroAdam and Adam-mini for PyTorch and PyTorch Lightning."""

from lit_microopt.optim.adam_mini import AdamMini
from lit_microopt.optim.microadam import MicroAdam

__version__ = "0.1.0"

__all__ = ["AdamMini", "MicroAdam", "__version__"]
