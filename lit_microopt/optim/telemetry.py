"""The statistics that monitoring callbacks read from the optimizers, computed only when asked for.

MicroAdam's statistics are kept as sums of squares and counts, so that the figures of several parameters add
up to the global norm ratios ``docs/microadam.md`` defines (``||a - TopK(a)|| / ||a||`` over all parameters, and so on).
:func:`microadam_statistics` computes them in slices, as the reference computes the step: a logged step costs a few
tens of MB more than an ordinary one, whatever the size of the tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from lit_microopt import ops
from lit_microopt.ops.reference.microadam import SLICE_ELEMENTS, TopKLayout, slices


@dataclass(frozen=True)
class MicroAdamStatistics:
    """One step of MicroAdam over one parameter, or summed over several (``a + b``).

    Attributes:
        accumulator_sq: ``||a||^2`` for ``a = g + Q^-1(e)`` before Top-K.
        discarded_sq: ``||a - TopK(a)||^2``.
        remainder_sq: ``||r||^2`` for the remainder ``r`` that is quantized.
        quantization_error_sq: ``||Q^-1(Q(r)) - r||^2``.
        error_feedback_sq: ``||Q^-1(e)||^2`` after the step.
        filled_entries: window entries in use (filled rows times columns).
        window_entries: window capacity (``m`` times columns).
        support: positions holding at least one window entry.
        numel: elements of the parameters.
    """

    accumulator_sq: float = 0.0
    discarded_sq: float = 0.0
    remainder_sq: float = 0.0
    quantization_error_sq: float = 0.0
    error_feedback_sq: float = 0.0
    filled_entries: int = 0
    window_entries: int = 0
    support: int = 0
    numel: int = 0

    def __add__(self, other: MicroAdamStatistics) -> MicroAdamStatistics:
        return MicroAdamStatistics(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def compression_error(self) -> float:
        """``||a - TopK(a)|| / ||a||``, 0 when ``a`` is 0."""
        return math.sqrt(self.discarded_sq / self.accumulator_sq) if self.accumulator_sq > 0 else 0.0

    @property
    def quantization_error(self) -> float:
        """``||Q^-1(Q(r)) - r|| / ||r||``, 0 when ``r`` is 0."""
        return math.sqrt(self.quantization_error_sq / self.remainder_sq) if self.remainder_sq > 0 else 0.0

    @property
    def ef_norm(self) -> float:
        """``||Q^-1(e)||`` after the step."""
        return math.sqrt(self.error_feedback_sq)

    @property
    def window_occupancy(self) -> float:
        """Filled rows over ``m`` (weighted by window columns when summed)."""
        return self.filled_entries / self.window_entries if self.window_entries else 0.0

    @property
    def window_support(self) -> float:
        """Fraction of the positions that hold at least one window entry."""
        return self.support / self.numel if self.numel else 0.0

    def as_dict(self) -> dict[str, float]:
        """The five figures ``docs/microadam.md`` names, by name."""
        return {
            "compression_error": self.compression_error,
            "quantization_error": self.quantization_error,
            "ef_norm": self.ef_norm,
            "window_occupancy": self.window_occupancy,
            "window_support": self.window_support,
        }


@dataclass(frozen=True)
class MicroAdamTelemetry:
    """The statistics of one MicroAdam step, per parameter name, per param group and in total."""

    per_parameter: dict[str, MicroAdamStatistics] = field(default_factory=dict)
    per_group: list[MicroAdamStatistics] = field(default_factory=list)

    @property
    def total(self) -> MicroAdamStatistics:
        """Summed over all parameters that had a gradient."""
        return sum(self.per_group, MicroAdamStatistics())


def microadam_statistics(
    remainder: torch.Tensor,
    state: dict[str, torch.Tensor],
    layout: TopKLayout,
    group: dict[str, Any],
    row: int,
    filled: int,
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """The telemetry (``docs/microadam.md``) of one parameter after its step, from the remainder ``r`` that steps 2
    to 5 left in the accumulator.

    ``a`` itself is gone, but nothing is lost: ``r = a`` outside the kept positions, and at a kept position
    ``r = a - bf16(a)`` with ``bf16(a)`` in the window, so ``a = bf16(a) + r`` there (exactly, in float32).
    Every temporary covers one slice of at most ``SLICE_ELEMENTS`` elements (whole Top-K blocks, or whole
    quantization buckets), never the whole tensor.

    Args:
        remainder: the flat remainder ``r`` (the accumulator after steps 2 to 5).
        state: the parameter's MicroAdam state, after the step.
        layout: the parameter's Top-K layout.
        group: the parameter's param group (for ``m`` and ``quant_bucket_size``).
        row: the window row this step wrote.
        filled: the window rows in use.

    Returns:
        The sums ``(||a||^2, ||a - TopK(a)||^2, ||r||^2, ||Q^-1(Q(r)) - r||^2, ||Q^-1(e)||^2, support)`` as one
        float64 tensor on the parameter's device (read later, once for all parameters), and the counts
        ``(filled entries, window entries, numel)``.

    Example::

        values, counts = microadam_statistics(accumulator, optimizer.state[param], layout, group, row, filled)
    """
    device = remainder.device
    indices, window_values = state["window_indices"], state["window_values"]
    kept_norms, support = [], torch.zeros((), dtype=torch.int64, device=device)
    # Window columns are block-major: the columns of a run of whole blocks hold positions within those blocks.
    blocks = layout.num_full_blocks + (1 if layout.k_last else 0)
    blocks_per_slice = max(1, SLICE_ELEMENTS // layout.block_size)
    for first_block in range(0, blocks, blocks_per_slice):
        last_block = min(first_block + blocks_per_slice, blocks)
        first_column, end_column = first_block * layout.k_block, min(last_block * layout.k_block, layout.k)
        first_element = first_block * layout.block_size
        positions = ops.window_positions(indices[:filled, first_column:end_column], layout, first_column)
        remainder_kept = remainder[positions[row]].float()
        accumulator_kept = window_values[row, first_column:end_column].float() + remainder_kept
        kept_norms.append(torch.stack(torch._foreach_norm([remainder_kept, accumulator_kept])))
        held = torch.zeros(min(last_block * layout.block_size, layout.numel) - first_element, dtype=torch.bool,
                           device=device)
        held.index_fill_(0, positions.view(-1) - first_element, True)  # index_put_ would copy the indices
        support += held.sum()

    bucket_size = group["quant_bucket_size"]
    error_feedback_norms = []
    for start, stop in slices(layout.numel, bucket_size):
        # Q^-1(e) through the step's own op, added to zeros.
        decoded = torch.zeros(stop - start, dtype=torch.float32, device=device)
        buckets = slice(start // bucket_size, -(-stop // bucket_size))
        ops.ef_dequant_add_(decoded, state["error_feedback"][start // 2 : (stop + 1) // 2],
                            state["bucket_min"][buckets], state["bucket_max"][buckets], bucket_size)
        exact = remainder[start:stop].float()
        error_feedback_norms.append(torch.stack(torch._foreach_norm([exact, decoded - exact, decoded])))

    remainder_kept_sq, accumulator_kept_sq = torch.stack(kept_norms).double().square().sum(dim=0)
    remainder_sq, quantization_sq, error_feedback_sq = torch.stack(error_feedback_norms).double().square().sum(dim=0)
    discarded_sq = remainder_sq - remainder_kept_sq  # ||a - TopK(a)||^2: r outside the kept positions
    accumulator_sq = discarded_sq + accumulator_kept_sq
    values = torch.stack([accumulator_sq, discarded_sq, remainder_sq, quantization_sq, error_feedback_sq,
                          support.double()])
    return values, (filled * layout.k, group["m"] * layout.k, layout.numel)
