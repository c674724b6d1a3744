"""MicroAdam's ops in pure PyTorch: the definition that the compiled kernels must match.

Each op works on one flattened parameter tensor of ``d`` elements and follows a step of
``docs/microadam.md`` (numbers in the comments). Vectorised throughout; the only Python loops run over
slices of at most :data:`SLICE_ELEMENTS` elements, made of whole Top-K blocks or whole quantization
buckets, which keeps every temporary small whatever the tensor's size (``docs/microadam.md`` allows transients below
4 bytes per element; these stay at a few tens of MB).

Layout reminders:

- Top-K blocks: ``block_size`` contiguous elements; each full block keeps ``k_block`` entries and a last,
  shorter block of ``r`` elements keeps ``ceil(r * density)``. Window columns are block-major, so column
  ``c`` belongs to block ``c // k_block`` (true for the short block too, since it keeps at most ``k_block``).
- Error feedback: 4-bit codes, element ``2j`` in the high nibble of byte ``j``; one bfloat16 (min, max) pair
  per bucket of ``bucket_size`` contiguous elements.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import NamedTuple

import torch

from lit_microopt.ops.reference.random import param_rounding_keys, stochastic_round, stream_key, uniform

#: Largest Top-K block: block-relative positions are stored as int16.
MAX_BLOCK_SIZE = 32768
#: Largest slice processed at once; a multiple of every power-of-two block and bucket size.
SLICE_ELEMENTS = 1 << 22


class TopKLayout(NamedTuple):
    """How a tensor of ``numel`` elements is cut into Top-K blocks and window columns."""

    numel: int
    block_size: int
    k_block: int  # entries kept by a full block
    num_full_blocks: int
    k_last: int  # entries kept by the last, shorter block (0 when there is none)

    @property
    def k(self) -> int:
        """Window columns: entries kept per step over the whole tensor."""
        return self.num_full_blocks * self.k_block + self.k_last

    @staticmethod
    @functools.lru_cache(maxsize=4096)  # asked for every parameter at every step; exact arithmetic is slow
    def of(numel: int, block_size: int, density: float) -> TopKLayout:
        """The layout for ``numel`` elements; ``ceil(length * density)`` is computed exactly (no float error)."""

        def kept(length: int) -> int:
            return math.ceil(length * Fraction(repr(float(density))))

        num_full, last = divmod(numel, block_size)
        return TopKLayout(numel, block_size, kept(block_size), num_full, kept(last) if last else 0)


def slices(length: int, unit: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` pairs covering ``[0, length)``, each a whole number of ``unit``s (but the last)."""
    step = max(unit, SLICE_ELEMENTS // unit * unit)
    for start in range(0, length, step):
        yield start, min(start + step, length)


def _bucket_rows(values: torch.Tensor, bucket_size: int, fill: torch.Tensor) -> torch.Tensor:
    """``values`` as a (buckets, bucket_size) matrix; a shorter last bucket is padded with ``fill``."""
    short = -values.numel() % bucket_size
    if short:
        values = torch.cat((values, fill.expand(short)))
    return values.view(-1, bucket_size)


def _unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte, high nibble first, as float32 (two per byte)."""
    codes = torch.empty(packed.numel(), 2, dtype=torch.float32, device=packed.device)
    codes[:, 0] = packed >> 4
    codes[:, 1] = packed & 0xF
    return codes.view(-1)


def _pack_codes(codes: torch.Tensor, out: torch.Tensor) -> None:
    """The inverse of :func:`_unpack_codes`, from whole-number float codes into ``out`` (uint8); an odd
    count gets a zero low nibble."""
    if codes.numel() % 2:
        codes = torch.cat((codes, codes.new_zeros(1)))
    pairs = codes.view(-1, 2)
    out.copy_(torch.add(pairs[:, 1], pairs[:, 0], alpha=16))


def _bucket_units(bucket_min: torch.Tensor, bucket_max: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per bucket, as float32 columns: ``lo`` and ``u = (hi - lo) / 15`` (step 5)."""
    low = bucket_min.float()
    # Divided by a tensor: on CUDA, PyTorch computes `tensor / python_number` as a product with the number's
    # reciprocal, which can be an ulp away from the exact quotient of docs/microadam.md (which every kernel takes).
    fifteen = torch.full((), 15.0, device=low.device)
    return low.view(-1, 1), ((bucket_max.float() - low) / fifteen).view(-1, 1)


def dequantize(
    error_feedback: torch.Tensor,
    bucket_min: torch.Tensor,
    bucket_max: torch.Tensor,
    bucket_size: int,
    start: int,
    stop: int,
) -> torch.Tensor:
    """``Q^-1(e) = lo + code * u`` in float32 for elements ``start..stop-1`` (``start`` on a bucket boundary)."""
    codes = _unpack_codes(error_feedback[start // 2 : (stop + 1) // 2])[: stop - start]
    low, unit = _bucket_units(
        bucket_min[start // bucket_size : -(-stop // bucket_size)],
        bucket_max[start // bucket_size : -(-stop // bucket_size)],
    )
    values = _bucket_rows(codes, bucket_size, codes.new_zeros(1))
    return values.mul_(unit).add_(low).view(-1)[: stop - start]


def ef_dequant_add_(
    accumulator: torch.Tensor,
    error_feedback: torch.Tensor,
    bucket_min: torch.Tensor,
    bucket_max: torch.Tensor,
    bucket_size: int,
) -> None:
    """Step 2: ``a += Q^-1(e)`` in place, in ``a``'s dtype (the sum is computed in float32, rounded once)."""
    for start, stop in slices(accumulator.numel(), bucket_size):
        accumulator[start:stop] += dequantize(error_feedback, bucket_min, bucket_max, bucket_size, start, stop)


def window_positions(window_indices: torch.Tensor, layout: TopKLayout, first_column: int = 0) -> torch.Tensor:
    """Flat element positions (int64) of window entries whose columns start at ``first_column``."""
    columns = torch.arange(
        first_column, first_column + window_indices.shape[-1], device=window_indices.device
    )
    return (columns // layout.k_block) * layout.block_size + window_indices.long()


def block_topk(
    accumulator: torch.Tensor,
    indices_row: torch.Tensor,
    values_row: torch.Tensor,
    layout: TopKLayout,
) -> None:
    """Step 3: in every block keep the entries of largest ``|a|``; write their block-relative int16 indices and
    ``bf16(a)`` values into one window row, in position order within the block.

    Ties go to the lowest positions (the algorithm allows any choice; this one makes every implementation keep the
    same entries, which matters for bfloat16 gradients, whose values often tie).
    """

    def select(blocks: torch.Tensor, k: int, first_column: int) -> None:
        magnitude = blocks.abs()
        # One more than needed tells whether the k-th largest value ties with an entry left out.
        extra = 1 if k < blocks.shape[1] else 0
        top = magnitude.topk(k + extra, dim=1, sorted=True)
        # Position order: the window's layout, and so its summation order, match the kernels'.
        chosen = top.indices[:, :k].sort(dim=1).values
        kth_largest = top.values[:, k - 1 : k]
        surplus = (top.values[:, k] == top.values[:, k - 1]) if extra else torch.zeros(1, dtype=torch.bool)
        if surplus.any():
            rows = surplus.nonzero().view(-1)
            tied = magnitude[rows] == kth_largest[rows]
            missing = k - (magnitude[rows] > kth_largest[rows]).sum(dim=1, keepdim=True)
            kept = (magnitude[rows] > kth_largest[rows]) | (tied & (tied.cumsum(dim=1) <= missing))
            chosen[rows] = kept.nonzero()[:, 1].view(-1, k)
        columns = slice(first_column, first_column + chosen.numel())
        indices_row[columns] = chosen.view(-1)
        values_row[columns] = blocks.gather(1, chosen).view(-1)  # copy rounds to bfloat16

    full = layout.num_full_blocks * layout.block_size
    for start, stop in slices(full, layout.block_size):
        blocks = accumulator[start:stop].view(-1, layout.block_size)
        select(blocks, layout.k_block, start // layout.block_size * layout.k_block)
    if layout.k_last:
        select(accumulator[full:].view(1, -1), layout.k_last, layout.num_full_blocks * layout.k_block)


def _round_outward_to_bfloat16(values: torch.Tensor, down: bool) -> torch.Tensor:
    """Largest bfloat16 <= ``values`` (``down``) or smallest bfloat16 >= ``values``, from float32."""
    rounded = values.to(torch.bfloat16)
    wrong_side = rounded.float() > values if down else rounded.float() < values
    step_to = torch.full_like(rounded, -math.inf if down else math.inf)
    return torch.where(wrong_side, torch.nextafter(rounded, step_to), rounded)


def ef_quantize_(
    accumulator: torch.Tensor,
    indices_row: torch.Tensor,
    error_feedback: torch.Tensor,
    bucket_min: torch.Tensor,
    bucket_max: torch.Tensor,
    bucket_size: int,
    layout: TopKLayout,
    stochastic: bool,
    key: int,
    first_element: int = 0,
) -> None:
    """Steps 4 and 5: remove what the window kept from ``a``, then quantize the remainder into ``e``.

    ``a`` keeps the remainder afterwards. ``key`` selects the random stream of stochastic rounding
    (:func:`lit_microopt.ops.reference.random.stream_key`); it is ignored for nearest rounding. The stream is
    indexed by element, from ``first_element`` (where ``accumulator`` starts in its tensor).
    """
    # Step 4: a[i] -= float(bf16(a[i])) at the kept positions (exactly zero for a bfloat16 gradient).
    positions = window_positions(indices_row, layout)
    kept = accumulator[positions].float()
    accumulator[positions] = (kept - kept.to(torch.bfloat16).float()).to(accumulator.dtype)

    # Step 5, per slice of whole buckets.
    for start, stop in slices(accumulator.numel(), bucket_size):
        remainder = accumulator[start:stop].float()
        # Padding the last, shorter bucket with one of its own elements leaves its min and max unchanged.
        rows = _bucket_rows(remainder, bucket_size, remainder[-1:])
        buckets = slice(start // bucket_size, start // bucket_size + rows.shape[0])
        bucket_min[buckets] = _round_outward_to_bfloat16(rows.amin(dim=1), down=True)
        bucket_max[buckets] = _round_outward_to_bfloat16(rows.amax(dim=1), down=False)
        low, unit = _bucket_units(bucket_min[buckets], bucket_max[buckets])
        # u == 0 means lo == x == hi: dividing 0 by infinity gives step 5's code 0 without a branch.
        unit = torch.where(unit > 0, unit, math.inf)
        scaled = (rows - low).div_(unit)
        if stochastic:
            random = uniform(key, first_element + start, stop - start, rows.device)
            scaled += _bucket_rows(random, bucket_size, rows.new_zeros(1))
        else:
            scaled += 0.5
        codes = scaled.floor_().clamp_(0, 15).view(-1)[: stop - start]
        _pack_codes(codes, error_feedback[start // 2 : (stop + 1) // 2])


def ef_compress_(
    accumulator: torch.Tensor,
    indices_row: torch.Tensor,
    values_row: torch.Tensor,
    error_feedback: torch.Tensor,
    bucket_min: torch.Tensor,
    bucket_max: torch.Tensor,
    bucket_size: int,
    layout: TopKLayout,
    stochastic: bool,
    key: int,
) -> None:
    """Steps 2 to 5 with the accumulator ``a = g + Q^-1(e)`` in float32, whatever the gradient's dtype: a
    float16 gradient's error feedback, which grows where Top-K keeps skipping a coordinate, would overflow in
    float16. A float32 gradient is its own accumulator; another is taken in float32 slices of whole blocks and
    buckets. Afterwards ``accumulator``'s content is unspecified."""
    if accumulator.dtype == torch.float32:
        ef_dequant_add_(accumulator, error_feedback, bucket_min, bucket_max, bucket_size)
        block_topk(accumulator, indices_row, values_row, layout)
        ef_quantize_(accumulator, indices_row, error_feedback, bucket_min, bucket_max, bucket_size, layout,
                     stochastic, key)
        return
    for start, stop in slices(layout.numel, math.lcm(layout.block_size, bucket_size)):
        last = stop == layout.numel
        part = TopKLayout(stop - start, layout.block_size, layout.k_block, (stop - start) // layout.block_size,
                          layout.k_last if last else 0)
        first_column = start // layout.block_size * layout.k_block
        columns = slice(first_column, first_column + part.k)
        codes = error_feedback[start // 2 : (stop + 1) // 2]
        buckets = slice(start // bucket_size, -(-stop // bucket_size))
        low, high = bucket_min[buckets], bucket_max[buckets]
        a = accumulator[start:stop].float()
        ef_dequant_add_(a, codes, low, high, bucket_size)
        block_topk(a, indices_row[columns], values_row[columns], part)
        ef_quantize_(a, indices_row[columns], codes, low, high, bucket_size, part, stochastic, key, first_element=start)


def _sqrt(values: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 square root (PyTorch's float32 sqrt on CPU may be off by one ulp; through
    float64 the rounding is exact), so that the kernels' ``sqrtf`` gives the same bits."""
    return values.double().sqrt_().float()


def window_adam_update_(
    param: torch.Tensor,
    window_indices: torch.Tensor,
    window_values: torch.Tensor,
    row_weights1: torch.Tensor,
    row_weights2: torch.Tensor,
    layout: TopKLayout,
    c1: float,
    c2: float,
    eps: float,
    lr: float,
    weight_decay: float,
    stochastic_param: bool = False,
    param_key: int = 0,
    decay_key: int = 0,
) -> None:
    """Steps 6 and 7: Adam's moments from the window's filled rows, decoupled weight decay, the update.

    ``window_indices``/``window_values`` hold only the filled rows; ``row_weights1[r] = beta1 ** age(r)`` and
    ``row_weights2[r] = beta2 ** age(r)`` in float32. Only positions with a window entry move (besides decay).

    ``stochastic_param`` (``param_rounding="stochastic"``): a bfloat16 or float16 ``param`` is rounded
    stochastically instead of to nearest, after the decay from the stream ``decay_key`` and after the update from
    the stream ``param_key`` (:func:`lit_microopt.ops.reference.random.param_rounding_keys`), element ``i`` of the
    tensor drawing number ``i``. A float32 ``param`` ignores it.
    """
    stochastic = stochastic_param and param.dtype != torch.float32
    if weight_decay > 0:  # step 7, every element
        if not stochastic:
            param.mul_(1 - lr * weight_decay)
        else:
            for start, stop in slices(param.numel(), 1):
                part = param[start:stop]
                index = torch.arange(start, stop, device=param.device)
                part.copy_(stochastic_round(part.float() * (1 - lr * weight_decay), param.dtype, decay_key, index))
    weights1 = row_weights1.view(-1, 1)
    weights2 = row_weights2.view(-1, 1)
    blocks = layout.num_full_blocks + (1 if layout.k_last else 0)
    blocks_per_slice = max(1, SLICE_ELEMENTS // layout.block_size)
    for block_start in range(0, blocks, blocks_per_slice):
        block_stop = min(block_start + blocks_per_slice, blocks)
        first_column = block_start * layout.k_block
        columns = slice(first_column, min(block_stop * layout.k_block, layout.k))
        offset = block_start * layout.block_size
        length = min(block_stop * layout.block_size, layout.numel) - offset
        # Positions relative to this slice; the same position may appear in several rows.
        positions = window_positions(window_indices[:, columns], layout, first_column) - offset
        flat_positions = positions.reshape(-1)
        values = window_values[:, columns].float()
        # Step 6: S1 = sum beta1^age * v, S2 = sum beta2^age * v^2 per position, float32, each position's
        # entries added in row order (row 0 first): the order of every kernel, so that the sums agree to the bit.
        # (index_add_ adds in index order on the CPU; on CUDA it uses atomics, whose order varies.)
        sum1 = torch.zeros(length, dtype=torch.float32, device=param.device)
        sum2 = torch.zeros(length, dtype=torch.float32, device=param.device)
        sum1.index_add_(0, flat_positions, (values * weights1).reshape(-1))
        sum2.index_add_(0, flat_positions, (values * values * weights2).reshape(-1))
        denominator = _sqrt(c2 * sum2[flat_positions]) + eps
        update = torch.where(denominator > 0, c1 * sum1[flat_positions] / denominator, 0.0)
        # Step 7: p -= lr * u. Duplicated positions compute the same new value, so writing it twice is exact.
        target = param[offset : offset + length]
        updated = target[flat_positions].float() - lr * update
        if stochastic:  # element offset + position draws its own number: duplicates round alike
            target[flat_positions] = stochastic_round(updated, param.dtype, param_key, flat_positions + offset)
        else:
            target[flat_positions] = updated.to(param.dtype)


def max_magnitudes_(out: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    """``out[i] = max |tensors[i]|`` in float32, 0 for an empty tensor: what the checks before a step read (a
    finite gradient, an error feedback in range). A NaN propagates through abs and amax, so an entry is finite
    exactly when its tensor is."""
    if len(tensors) != out.numel():
        raise ValueError(f"lit_microopt: out must hold one entry per tensor ({len(tensors)}), got {out.numel()}")
    for index, tensor in enumerate(tensors):
        out[index] = tensor.abs().amax() if tensor.numel() else 0.0


def row_weights(beta: float, step: int, m: int, device: torch.device) -> torch.Tensor:
    """``beta ** age(r)`` in float32 for the filled rows ``r < min(t, m)`` of the window, ``age(r) = (t - 1 - r) mod m``
    (step 6)."""
    return torch.tensor([beta ** ((step - 1 - row) % m) for row in range(min(step, m))], dtype=torch.float32,
                        device=device)


def microadam_step_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    window_indices: Sequence[torch.Tensor],
    window_values: Sequence[torch.Tensor],
    error_feedback: Sequence[torch.Tensor],
    bucket_min: Sequence[torch.Tensor],
    bucket_max: Sequence[torch.Tensor],
    steps: Sequence[torch.Tensor],
    seeds: Sequence[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    m: int,
    block_size: int,
    k_block: int,
    bucket_size: int,
    stochastic: bool,
    stochastic_param: bool,
) -> None:
    """Steps 1 to 7 for every tensor of the lists, one tensor after the other: the definition of the op
    ``microadam_step_``, which the kernels compute for a whole param group at once.

    Tensor ``i`` is ``params[i]`` (any shape, contiguous), its gradient ``grads[i]`` (the step's working buffer: its
    content is unspecified afterwards), its ``(m, k)`` window, its error feedback and bucket ranges, and its step count
    and seed (CPU int64 tensors of one element): step 1 advances the count to ``t``, which fixes the window row
    ``(t - 1) mod m``, the filled rows ``min(t, m)``, the bias corrections and, with the seed, the random streams
    (:func:`lit_microopt.ops.reference.random.stream_key`, and ``param_rounding_keys`` for ``stochastic_param``).
    """
    for param, grad, indices, values, codes, low, high, step, seed in zip(
        params, grads, window_indices, window_values, error_feedback, bucket_min, bucket_max, steps, seeds
    ):
        # Step 1.
        step += 1
        t, rounding_seed = int(step), int(seed)
        row, filled = (t - 1) % m, min(t, m)
        full_blocks = param.numel() // block_size
        layout = TopKLayout(param.numel(), block_size, k_block, full_blocks, indices.shape[1] - full_blocks * k_block)
        # Steps 2 to 5.
        ef_compress_(grad.view(-1), indices[row], values[row], codes, low, high, bucket_size, layout, stochastic,
                     stream_key(rounding_seed, t))
        # Steps 6 and 7.
        rounds = stochastic_param and param.dtype != torch.float32
        param_key, decay_key = param_rounding_keys(rounding_seed, t) if rounds else (0, 0)
        window_adam_update_(
            param.view(-1), indices[:filled], values[:filled], row_weights(beta1, t, m, param.device),
            row_weights(beta2, t, m, param.device), layout, (1 - beta1) / (1 - beta1**t),
            (1 - beta2) / (1 - beta2**t), eps, lr, weight_decay, rounds, param_key, decay_key,
        )
