"""The optimizers' ops, one function per op of ``docs/kernels.md``.

Each function runs its op through PyTorch's dispatcher, which chooses the compiled kernel of the tensors' device
where one is built and the pure-PyTorch reference of :mod:`lit_microopt.ops.reference` otherwise (see
:mod:`lit_microopt.ops.dispatch` for the rules and the ``LIT_MICROOPT_BACKEND`` override). Arguments are those of
the reference; the Top-K block layout travels as a :class:`TopKLayout`.
"""

from __future__ import annotations

import torch

from lit_microopt.ops import dispatch
from lit_microopt.ops.dispatch import compiled_available, kernels_report
from lit_microopt.ops.reference import adam_mini as _adam_mini_reference
from lit_microopt.ops.reference.adam_mini import block_mean_squares
from lit_microopt.ops.reference.microadam import TopKLayout, dequantize, row_weights, slices, window_positions
from lit_microopt.ops.reference.random import param_rounding_keys, stream_key


def ef_dequant_add_(accumulator, error_feedback, bucket_min, bucket_max, bucket_size: int) -> None:
    """Step 2: ``a += Q^-1(e)`` in place."""
    dispatch.run("ef_dequant_add_", accumulator, error_feedback, bucket_min, bucket_max, bucket_size)


def block_topk(accumulator, indices_row, values_row, layout: TopKLayout) -> None:
    """Step 3: the Top-K of every block into one window row."""
    dispatch.run("block_topk", accumulator, indices_row, values_row, layout.block_size, layout.k_block, layout.k_last)


def ef_quantize_(accumulator, indices_row, error_feedback, bucket_min, bucket_max, bucket_size: int,
                 layout: TopKLayout, stochastic: bool, key: int) -> None:
    """Steps 4 and 5: remove the kept entries, quantize the remainder into the error feedback."""
    dispatch.run("ef_quantize_", accumulator, indices_row, error_feedback, bucket_min, bucket_max, bucket_size,
                 layout.block_size, layout.k_block, stochastic, key)


def ef_compress_(accumulator, indices_row, values_row, error_feedback, bucket_min, bucket_max, bucket_size: int,
                 layout: TopKLayout, stochastic: bool, key: int) -> None:
    """Steps 2 to 5 at once: what :func:`ef_dequant_add_`, :func:`block_topk` and :func:`ef_quantize_` do in turn
    on the gradient in float32 (fused into one pass per block by the CPU kernel). Afterwards ``accumulator``'s
    content is unspecified."""
    dispatch.run("ef_compress_", accumulator, indices_row, values_row, error_feedback, bucket_min, bucket_max,
                 bucket_size, layout.block_size, layout.k_block, layout.k_last, stochastic, key)


def window_adam_update_(param, window_indices, window_values, row_weights1, row_weights2, layout: TopKLayout,
                        c1: float, c2: float, eps: float, lr: float, weight_decay: float,
                        stochastic_param: bool = False, param_key: int = 0, decay_key: int = 0) -> None:
    """Steps 6 and 7: moments from the window, weight decay, the update (a 16-bit parameter rounded stochastically
    with ``stochastic_param``)."""
    dispatch.run("window_adam_update_", param, window_indices, window_values, row_weights1, row_weights2,
                 layout.block_size, layout.k_block, c1, c2, eps, lr, weight_decay, stochastic_param, param_key,
                 decay_key)


def max_magnitudes(tensors) -> torch.Tensor:
    """The largest magnitude of every tensor of a list (float32, bfloat16 or float16, on one device), as a float32
    tensor on that device: a NaN where a tensor holds one (a NaN propagates), 0 for an empty tensor."""
    out = torch.empty(len(tensors), dtype=torch.float32, device=tensors[0].device if tensors else "cpu")
    dispatch.run("max_magnitudes_", out, [tensor.contiguous() for tensor in tensors])  # no copy when contiguous
    return out


def microadam_step_(params, grads, window_indices, window_values, error_feedback, bucket_min, bucket_max, steps, seeds,
                    *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, m: int, block_size: int,
                    k_block: int, bucket_size: int, stochastic: bool, stochastic_param: bool) -> None:
    """Steps 1 to 7 of every tensor of the lists in one call (arguments of
    :func:`lit_microopt.ops.reference.microadam.microadam_step_`): what :func:`ef_compress_` and
    :func:`window_adam_update_` do tensor by tensor, from each tensor's step count and seed, which it advances."""
    dispatch.run("microadam_step_", params, grads, window_indices, window_values, error_feedback, bucket_min,
                 bucket_max, steps, seeds, lr, beta1, beta2, eps, weight_decay, m, block_size, k_block, bucket_size,
                 stochastic, stochastic_param)


def _apply_moments_(param, grad, exp_avg, row_denominator, *, block_axis: int, step_size: float, beta1: float,
                    lr: float, weight_decay: float, stochastic_key: int | None,
                    param_keys: tuple[int, int] | None = None) -> None:
    """:func:`lit_microopt.ops.reference.adam_mini.apply_moments_` as the op ``adam_mini_update_``."""
    update_key, decay_key = param_keys or (0, 0)
    dispatch.run("adam_mini_update_", param, grad.contiguous(), exp_avg, row_denominator, block_axis, step_size,
                 beta1, lr, weight_decay, stochastic_key is not None, stochastic_key or 0, param_keys is not None,
                 update_key, decay_key)


def adam_mini_update_(param, grad, exp_avg, exp_avg_sq, **arguments) -> None:
    """One Adam-mini step (arguments of :func:`lit_microopt.ops.reference.adam_mini.adam_mini_update_`).

    The block statistics (one reduction per tensor) stay in PyTorch; the element-wise pass is the op. Parameters
    whose blocks are single elements (biases) keep AdamW's own arithmetic, bit for bit, and a non-contiguous
    parameter (which the kernels do not take) the reference's.
    """
    as_op = exp_avg_sq.numel() != param.numel() and param.is_contiguous()
    apply = _apply_moments_ if as_op else _adam_mini_reference.apply_moments_
    _adam_mini_reference.adam_mini_update_(param, grad, exp_avg, exp_avg_sq, **arguments, apply=apply)


def multi_block_mean_squares_(block_mean_sqs, grads, *, block_axes, segment_counts, segment_rows,
                              rows_per_block) -> None:
    """:func:`block_mean_squares` of every tensor of ``grads`` (one device), written into ``block_mean_sqs`` (float32,
    the tensors' blocks in order) by one op call; layouts as int lists (see ``multi_adam_mini_update_``)."""
    dispatch.run("multi_block_mean_squares_", block_mean_sqs, grads, block_axes, segment_counts, segment_rows,
                 rows_per_block)


def multi_adam_mini_update_(block_mean_sqs, params, grads, exp_avgs, exp_avg_sqs, *, block_axes, segment_counts,
                            segment_rows, rows_per_block, weight_decays, rounding_seeds, step: int, lr: float,
                            beta1: float, beta2: float, eps: float, stochastic_param: bool = False) -> None:
    """:func:`adam_mini_update_` of every tensor of ``params`` by one op call: tensors of one device, one parameter
    dtype, one first-moment dtype and one step count, with more elements than blocks.

    ``block_mean_sqs`` holds their block statistics in order (:func:`multi_block_mean_squares_`). Tensor ``i`` has
    block axis ``block_axes[i]`` and the next ``segment_counts[i]`` entries of ``segment_rows`` and
    ``rows_per_block``; ``weight_decays[i]`` and ``rounding_seeds[i]`` are its own. The results are those of
    :func:`adam_mini_update_` on each tensor, bit for bit.
    """
    dispatch.run("multi_adam_mini_update_", block_mean_sqs, params, grads, exp_avgs, exp_avg_sqs, block_axes,
                 segment_counts, segment_rows, rows_per_block, weight_decays, rounding_seeds, step, lr, beta1, beta2,
                 eps, stochastic_param)


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
    "max_magnitudes",
    "microadam_step_",
    "multi_adam_mini_update_",
    "multi_block_mean_squares_",
    "param_rounding_keys",
    "row_weights",
    "slices",
    "stream_key",
    "window_adam_update_",
    "window_positions",
]
