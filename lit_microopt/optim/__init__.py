"""The optimizers: plain ``torch.optim.Optimizer`` subclasses, usable without Lightning."""

from lit_microopt.optim.memory import optimizer_state_bytes, state_bytes_per_parameter
from lit_microopt.optim.microadam import MicroAdam

__all__ = ["MicroAdam", "optimizer_state_bytes", "state_bytes_per_parameter"]
