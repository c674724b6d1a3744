"""The optimizers' ops: one function per op of ``spec/kernels.md``.

Today every op is its pure-PyTorch reference (:mod:`lit_microopt.ops.reference`); the compiled kernels
register under the same names and this module will choose per tensor device.
"""

from lit_microopt.ops.reference.microadam import (
    TopKLayout,
    block_topk,
    dequantize,
    ef_dequant_add_,
    ef_quantize_,
    window_adam_update_,
    window_positions,
)
from lit_microopt.ops.reference.random import stream_key

__all__ = [
    "TopKLayout",
    "block_topk",
    "dequantize",
    "ef_dequant_add_",
    "ef_quantize_",
    "stream_key",
    "window_adam_update_",
    "window_positions",
]
