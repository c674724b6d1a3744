"""Every op's one home: its schema, and the pure-PyTorch reference registered as its default kernel.

The ops live in the ``lit_microopt`` namespace of ``torch.library``. This module defines their schemas, registers
the reference (:mod:`lit_microopt.ops.reference`) as each op's ``CompositeExplicitAutograd`` kernel, and an empty
fake kernel for ``torch.compile`` and the meta device. The compiled extension then registers its CPU and CUDA
kernels for the same ops (:mod:`lit_microopt.ops.dispatch`), and PyTorch's dispatcher chooses: a tensor's own
device's kernel where one is registered, the reference everywhere else.

The schemas take plain integers where the reference takes a :class:`TopKLayout`; the adapters below rebuild it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lit_microopt.ops.reference import adam_mini as adam_mini_reference
from lit_microopt.ops.reference import microadam as microadam_reference
from lit_microopt.ops.reference.microadam import TopKLayout

NAMESPACE = "lit_microopt"


@dataclass(frozen=True)
class OpDefinition:
    """One op: its name, the optimizer that uses it, its schema and its reference, called with the op's arguments."""

    name: str
    optimizer: str
    schema: str
    reference: Callable[..., None]

    @property
    def overload(self) -> torch._ops.OpOverload:
        """``torch.ops.lit_microopt.<name>.default``: what the dispatcher runs."""
        return getattr(torch.ops.lit_microopt, self.name).default


#: Every op, in the order of ``docs/kernels.md``.
OPS: dict[str, OpDefinition] = {}

_library = torch.library.Library(NAMESPACE, "FRAGMENT")


def _define(optimizer: str, schema: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Define the op ``schema`` with the decorated function as its reference kernel."""

    def register(reference: Callable[..., None]) -> Callable[..., None]:
        name = schema.split("(", 1)[0]

        def default_kernel(*arguments) -> None:
            # The dispatcher comes here only where no kernel is registered for the device: the dispatch policy
            # warns once, or refuses when compiled kernels are required. (Imported here: it imports this module.)
            from lit_microopt.ops.dispatch import reference_fallback

            first = arguments[0][0] if isinstance(arguments[0], (list, tuple)) else arguments[0]  # a list op's
            reference_fallback(first.device.type)
            reference(*arguments)

        _library.define(schema)
        _library.impl(name, default_kernel, "CompositeExplicitAutograd")
        # Every op mutates its arguments and returns nothing: the fake kernel has nothing to compute.
        torch.library.register_fake(f"{NAMESPACE}::{name}", lambda *arguments: None, lib=_library)
        OPS[name] = OpDefinition(name, optimizer, schema, reference)
        return reference

    return register


def _layout(numel: int, block_size: int, k_block: int, columns: int) -> TopKLayout:
    """The Top-K layout of ``numel`` elements whose window rows have ``columns`` entries."""
    full_blocks = numel // block_size
    return TopKLayout(numel, block_size, k_block, full_blocks, columns - full_blocks * k_block)


@_define("MicroAdam", "ef_dequant_add_(Tensor(a!) accumulator, Tensor error_feedback, Tensor bucket_min, "
                      "Tensor bucket_max, int bucket_size) -> ()")
def ef_dequant_add_(accumulator, error_feedback, bucket_min, bucket_max, bucket_size):
    microadam_reference.ef_dequant_add_(accumulator, error_feedback, bucket_min, bucket_max, bucket_size)


@_define("MicroAdam", "block_topk(Tensor accumulator, Tensor(a!) indices_row, Tensor(b!) values_row, "
                      "int block_size, int k_block, int k_last) -> ()")
def block_topk(accumulator, indices_row, values_row, block_size, k_block, k_last):
    layout = TopKLayout(accumulator.numel(), block_size, k_block, accumulator.numel() // block_size, k_last)
    microadam_reference.block_topk(accumulator, indices_row, values_row, layout)


@_define("MicroAdam", "ef_quantize_(Tensor(a!) accumulator, Tensor indices_row, Tensor(b!) error_feedback, "
                      "Tensor(c!) bucket_min, Tensor(d!) bucket_max, int bucket_size, int block_size, int k_block, "
                      "bool stochastic, int key) -> ()")
def ef_quantize_(accumulator, indices_row, error_feedback, bucket_min, bucket_max, bucket_size, block_size, k_block,
                 stochastic, key):
    layout = _layout(accumulator.numel(), block_size, k_block, indices_row.numel())
    microadam_reference.ef_quantize_(accumulator, indices_row, error_feedback, bucket_min, bucket_max, bucket_size,
                                     layout, stochastic, key)


# Steps 2 to 5 fused: what the three ops above do in turn, in one pass per block in the CPU kernel.
@_define("MicroAdam", "ef_compress_(Tensor(a!) accumulator, Tensor(b!) indices_row, Tensor(c!) values_row, "
                      "Tensor(d!) error_feedback, Tensor(e!) bucket_min, Tensor(f!) bucket_max, int bucket_size, "
                      "int block_size, int k_block, int k_last, bool stochastic, int key) -> ()")
def ef_compress_(accumulator, indices_row, values_row, error_feedback, bucket_min, bucket_max, bucket_size,
                 block_size, k_block, k_last, stochastic, key):
    layout = TopKLayout(accumulator.numel(), block_size, k_block, accumulator.numel() // block_size, k_last)
    microadam_reference.ef_compress_(accumulator, indices_row, values_row, error_feedback, bucket_min, bucket_max,
                                     bucket_size, layout, stochastic, key)


# stochastic_param: param_rounding="stochastic", a 16-bit parameter rounded stochastically after the weight decay
# (stream decay_key) and after the update (stream param_key); float32 parameters ignore it.
@_define("MicroAdam", "window_adam_update_(Tensor(a!) param, Tensor window_indices, Tensor window_values, "
                      "Tensor row_weights1, Tensor row_weights2, int block_size, int k_block, float c1, float c2, "
                      "float eps, float lr, float weight_decay, bool stochastic_param=False, int param_key=0, "
                      "int decay_key=0) -> ()")
def window_adam_update_(param, window_indices, window_values, row_weights1, row_weights2, block_size, k_block,
                        c1, c2, eps, lr, weight_decay, stochastic_param=False, param_key=0, decay_key=0):
    layout = _layout(param.numel(), block_size, k_block, window_indices.shape[-1])
    microadam_reference.window_adam_update_(param, window_indices, window_values, row_weights1, row_weights2,
                                            layout, c1, c2, eps, lr, weight_decay, stochastic_param, param_key,
                                            decay_key)


# Steps 1 to 7 of every tensor of a param group in one call: what the optimizer would do tensor by tensor with the
# two ops above, from each tensor's step count and seed (advanced here) to its parameter.
@_define("MicroAdam", "microadam_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] window_indices, "
                      "Tensor(d!)[] window_values, Tensor(e!)[] error_feedback, Tensor(f!)[] bucket_min, "
                      "Tensor(g!)[] bucket_max, Tensor(h!)[] steps, Tensor[] seeds, float lr, float beta1, float beta2, "
                      "float eps, float weight_decay, int m, int block_size, int k_block, int bucket_size, "
                      "bool stochastic, bool stochastic_param) -> ()")
def microadam_step_(params, grads, window_indices, window_values, error_feedback, bucket_min, bucket_max, steps, seeds,
                    lr, beta1, beta2, eps, weight_decay, m, block_size, k_block, bucket_size, stochastic,
                    stochastic_param):
    microadam_reference.microadam_step_(
        params, grads, window_indices, window_values, error_feedback, bucket_min, bucket_max, steps, seeds, lr=lr,
        beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, m=m, block_size=block_size, k_block=k_block,
        bucket_size=bucket_size, stochastic=stochastic, stochastic_param=stochastic_param,
    )


# The checks before a step (finite gradients, an error feedback in range) read the largest magnitude of many tensors:
# one call per device, whatever their number and dtypes.
@_define("MicroAdam", "max_magnitudes_(Tensor(a!) out, Tensor[] tensors) -> ()")
def max_magnitudes_(out, tensors):
    microadam_reference.max_magnitudes_(out, tensors)


@_define("AdamMini", "adam_mini_update_(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor row_denominator, "
                     "int block_axis, float step_size, float beta1, float lr, float weight_decay, bool stochastic, "
                     "int key, bool stochastic_param=False, int param_key=0, int decay_key=0) -> ()")
def adam_mini_update_(param, grad, exp_avg, row_denominator, block_axis, step_size, beta1, lr, weight_decay,
                      stochastic, key, stochastic_param=False, param_key=0, decay_key=0):
    adam_mini_reference.apply_moments_(param, grad, exp_avg, row_denominator, block_axis=block_axis,
                                       step_size=step_size, beta1=beta1, lr=lr, weight_decay=weight_decay,
                                       stochastic_key=key if stochastic else None,
                                       param_keys=(param_key, decay_key) if stochastic_param else None)


# One call per param group instead of one per tensor: the block statistics of every tensor of one device into one
# float32 buffer (block_mean_sqs, the tensors' blocks in order), then steps 1 to 5 of the tensors that share a
# device, a dtype, a step count and their group's settings. Their layouts are int lists: tensor i has
# segment_counts[i] consecutive entries of segment_rows and rows_per_block. Only tensors with more elements than
# blocks (not AdamW's element blocks), contiguous, with elements. The references loop over the per-tensor one,
# which stays the definition.
@_define("AdamMini", "multi_block_mean_squares_(Tensor(a!) block_mean_sqs, Tensor[] grads, int[] block_axes, "
                     "int[] segment_counts, int[] segment_rows, int[] rows_per_block) -> ()")
def multi_block_mean_squares_(block_mean_sqs, grads, block_axes, segment_counts, segment_rows, rows_per_block):
    _check_lengths("multi_block_mean_squares_", grads, block_axes=block_axes, segment_counts=segment_counts)
    for grad, (block_axis, rows, heights), out in zip(
        grads, _multi_layouts(block_axes, segment_counts, segment_rows, rows_per_block), _split(block_mean_sqs, grads,
        segment_counts, segment_rows, rows_per_block)
    ):
        out.copy_(adam_mini_reference.block_mean_squares(grad, block_axis=block_axis, segment_rows=rows,
                                                         rows_per_block=heights))


@_define("AdamMini", "multi_adam_mini_update_(Tensor block_mean_sqs, Tensor(a!)[] params, Tensor[] grads, "
                     "Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, int[] block_axes, int[] segment_counts, "
                     "int[] segment_rows, int[] rows_per_block, float[] weight_decays, int[] rounding_seeds, int step, "
                     "float lr, float beta1, float beta2, float eps, bool stochastic_param=False) -> ()")
def multi_adam_mini_update_(block_mean_sqs, params, grads, exp_avgs, exp_avg_sqs, block_axes, segment_counts,
                            segment_rows, rows_per_block, weight_decays, rounding_seeds, step, lr, beta1, beta2, eps,
                            stochastic_param=False):
    _check_lengths("multi_adam_mini_update_", params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs,
                   block_axes=block_axes, segment_counts=segment_counts, weight_decays=weight_decays,
                   rounding_seeds=rounding_seeds)
    layouts = _multi_layouts(block_axes, segment_counts, segment_rows, rows_per_block)
    statistics = _split(block_mean_sqs, grads, segment_counts, segment_rows, rows_per_block)
    for param, grad, exp_avg, exp_avg_sq, (block_axis, rows, heights), weight_decay, seed, statistic in zip(
        params, grads, exp_avgs, exp_avg_sqs, layouts, weight_decays, rounding_seeds, statistics
    ):
        adam_mini_reference.adam_mini_update_(
            param, grad, exp_avg, exp_avg_sq, block_axis=block_axis, segment_rows=rows, rows_per_block=heights,
            step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, rounding_seed=seed,
            block_mean_sq=statistic, stochastic_param=stochastic_param,
        )


def _check_lengths(op: str, first, **lists) -> None:
    """The kernels' check of a multi-tensor op's list lengths, for its reference: one entry per tensor in each."""
    for name, values in lists.items():
        if len(values) != len(first):
            raise ValueError(f"lit_microopt: {op} got {len(first)} tensors but {len(values)} {name}; pass one entry "
                             "per tensor in every list")


def _multi_layouts(block_axes, segment_counts, segment_rows, rows_per_block) -> list[tuple[int, list[int], list[int]]]:
    """(block_axis, segment_rows, rows_per_block) of every tensor of a multi-tensor op, from its int lists."""
    layouts, start = [], 0
    for block_axis, count in zip(block_axes, segment_counts):
        layouts.append((block_axis, list(segment_rows[start : start + count]),
                        list(rows_per_block[start : start + count])))
        start += count
    return layouts


def _split(block_mean_sqs, grads, segment_counts, segment_rows, rows_per_block) -> list:
    """``block_mean_sqs`` cut into every tensor's statistics (one entry per block)."""
    layouts = _multi_layouts([0] * len(grads), segment_counts, segment_rows, rows_per_block)
    counts = [sum(rows // height for rows, height in zip(rows_list, heights)) for _, rows_list, heights in layouts]
    return list(block_mean_sqs.split(counts)) if counts else []


def op_names(optimizer: str | None = None) -> tuple[str, ...]:
    """The names of every op, or of those ``optimizer`` (``"MicroAdam"``, ``"AdamMini"``) uses."""
    return tuple(name for name, op in OPS.items() if optimizer in (None, op.optimizer))


__all__ = ["NAMESPACE", "OPS", "OpDefinition", "op_names"]
