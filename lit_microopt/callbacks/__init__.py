"""Lightning callbacks that show what the optimizers are doing, usable in any Lightning project.

Each logs through the trainer's loggers on the steps Lightning logs (``Trainer(log_every_n_steps=...)``) and
costs nothing on the others:

- :class:`CompressionMonitor`: MicroAdam's compression and quantization errors and error-feedback norm;
- :class:`WindowMonitor`: MicroAdam's window occupancy and support;
- :class:`BlockLRMonitor`: Adam-mini's per-block effective learning rates (or Adam's per-element ones);
- :class:`OptimizerMemoryMonitor`: the bytes of optimizer state, against AdamW's.
"""

from lit_microopt.callbacks.block_lr_monitor import BlockLRMonitor
from lit_microopt.callbacks.compression_monitor import CompressionMonitor
from lit_microopt.callbacks.optimizer_memory_monitor import OptimizerMemoryMonitor
from lit_microopt.callbacks.window_monitor import WindowMonitor

__all__ = ["BlockLRMonitor", "CompressionMonitor", "OptimizerMemoryMonitor", "WindowMonitor"]
