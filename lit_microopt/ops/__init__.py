"""The optimizers' ops, one function per op of ``docs/kernels.md``.

Each function runs the compiled kernel for its tensors' device when it is built, else the pure-PyTorch
reference of :mod:`lit_microopt.ops.reference` (see :mod:`lit_microopt.ops.dispatch` for the rules and the
``LIT_MICROOPT_BACKEND`` override). Arguments are those of the reference; the Top-K block layout travels as
a :class:`TopKLayout`.
"""

from __future__ import annotations

import torch

from lit_microopt.ops.dispatch import compiled_available, kernels_report, use_compiled
from lit_microopt.ops.reference import adam_mini as _adam_mini_reference
from lit_microopt.ops.reference import microadam as _reference
from lit_microopt.ops.reference.adam_mini import block_mean_squares
from lit_microopt.ops.reference.microadam import TopKLayout, dequantize, slices, window_positions
from lit_microopt.ops.reference.random import param_rounding_keys, stream_key

_compiled = torch.ops.lit_microopt


def ef_dequant_add_(accumulator, error_feedback, bucket_min, bucket_max, bucket_size: int) -> None:
    """Step 2: ``a += Q^-1(e)`` in place."""
    if use_compiled(accumulator, "ef_dequant_add_"):
        _compiled.ef_dequant_add_(accumulator, error_feedback, bucket_min, bucket_max, bucket_size)
    else:
        _reference.ef_dequant_add_(accumulator, error_feedback, bucket_min, bucket_max, bucket_size)


def block_topk(accumulator, indices_row, values_row, layout: TopKLayout) -> None:
    """Step 3: the Top-K of every block into one window row."""
    if use_compiled(accumulator, "block_topk"):
        _compiled.block_topk(accumulator, indices_row, values_row, layout.block_size, layout.k_block, layout.k_last)
    else:
        _reference.block_topk(accumulator, indices_row, values_row, layout)


def ef_quantize_(accumulator, indices_row, error_feedback, bucket_min, bucket_max, bucket_size: int,
                 layout: TopKLayout, stochastic: bool, key: int) -> None:
    """Steps 4 and 5: remove the kept entries, quantize the remainder into the error feedback."""
    if use_compiled(accumulator, "ef_quantize_"):
        _compiled.ef_quantize_(accumulator, indices_row, error_feedback, bucket_min, bucket_max, bucket_size,
                               layout.block_size, layout.k_block, stochastic, key)
    else:
        _reference.ef_quantize_(accumulator, indices_row, error_feedback, bucket_min, bucket_max, bucket_size,
                                layout, stochastic, key)


def ef_compress_(accumulator, indices_row, values_row, error_feedback, bucket_min, bucket_max, bucket_size: int,
                 layout: TopKLayout, stochastic: bool, key: int) -> None:
    """Steps 2 to 5 at once: what :func:`ef_dequant_add_`, :func:`block_topk` and :func:`ef_quantize_` do in turn
    on the gradient in float32 (fused into one pass per block by the CPU kernel). Afterwards ``accumulator``'s
    content is unspecified."""
    if use_compiled(accumulator, "ef_compress_"):
        _compiled.ef_compress_(accumulator, indices_row, values_row, error_feedback, bucket_min, bucket_max,
                               bucket_size, layout.block_size, layout.k_block, layout.k_last, stochastic, key)
    else:
        _reference.ef_compress_(accumulator, indices_row, values_row, error_feedback, bucket_min, bucket_max,
                                bucket_size, layout, stochastic, key)


def window_adam_update_(param, window_indices, window_values, row_weights1, row_weights2, layout: TopKLayout,
                        c1: float, c2: float, eps: float, lr: float, weight_decay: float,
                        stochastic_param: bool = False, param_key: int = 0, decay_key: int = 0) -> None:
    """Steps 6 and 7: moments from the window, weight decay, the update (a 16-bit parameter rounded stochastically
    with ``stochastic_param``)."""
    if use_compiled(param, "window_adam_update_"):
        _compiled.window_adam_update_(param, window_indices, window_values, row_weights1, row_weights2,
                                      layout.block_size, layout.k_block, c1, c2, eps, lr, weight_decay,
                                      stochastic_param, param_key, decay_key)
    else:
        _reference.window_adam_update_(param, window_indices, window_values, row_weights1, row_weights2, layout,
                                       c1, c2, eps, lr, weight_decay, stochastic_param, param_key, decay_key)


def _compiled_apply_moments_(param, grad, exp_avg, row_denominator, *, block_axis: int, step_size: float,
                             beta1: float, lr: float, weight_decay: float, stochastic_key: int | None,
                             param_keys: tuple[int, int] | None = None) -> None:
    """The compiled twin of :func:`lit_microopt.ops.reference.adam_mini.apply_moments_`."""
    update_key, decay_key = param_keys or (0, 0)
    _compiled.adam_mini_update_(param, grad.contiguous(), exp_avg, row_denominator, block_axis, step_size, beta1, lr,
                                weight_decay, stochastic_key is not None, stochastic_key or 0, param_keys is not None,
                                update_key, decay_key)


def adam_mini_update_(param, grad, exp_avg, exp_avg_sq, **arguments) -> None:
    """One Adam-mini step (arguments of :func:`lit_microopt.ops.reference.adam_mini.adam_mini_update_`).

    The block statistics (one reduction per tensor) stay in PyTorch; the element-wise pass runs compiled where
    built. Parameters whose blocks are single elements (biases) keep AdamW's own arithmetic, bit for bit.
    """
    compiled = (
        exp_avg_sq.numel() != param.numel() and param.is_contiguous() and use_compiled(param, "adam_mini_update_")
    )
    apply = _compiled_apply_moments_ if compiled else _adam_mini_reference.apply_moments_
    _adam_mini_reference.adam_mini_update_(param, grad, exp_avg, exp_avg_sq, **arguments, apply=apply)


__all__ = [
    "TopKLayout",
    "adam_mini_update_",
    "block_mean_squares",
    "block_topk",
    "compiled_available",
    "dequantize",
    "ef_compress_",
    "ef_dequant_add_",
    "ef_quantize_",
    "kernels_report",
    "param_rounding_keys",
    "slices",
    "stream_key",
    "use_compiled",
    "window_adam_update_",
    "window_positions",
]
