"""The optimizers: plain ``torch.optim.Optimizer`` subclasses, usable without Lightning."""

from lit_microopt.optim._common import check_gradients_finite, parameter_names
from lit_microopt.optim.adam_mini import AdamMini
from lit_microopt.optim.memory import optimizer_state_bytes, state_bytes_per_parameter
from lit_microopt.optim.microadam import MicroAdam
from lit_microopt.optim.partition import BlockLayout, HeadConfig, parameter_modules, partition_parameter

__all__ = [
    "AdamMini",
    "BlockLayout",
    "HeadConfig",
    "MicroAdam",
    "check_gradients_finite",
    "optimizer_state_bytes",
    "parameter_modules",
    "parameter_names",
    "partition_parameter",
    "state_bytes_per_parameter",
]
