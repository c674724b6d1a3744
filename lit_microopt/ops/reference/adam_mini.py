"""The op ``adam_mini_update_``: one Adam-mini step of one parameter tensor, in pure PyTorch.

Adam-mini (``docs/adam_mini.md``) is AdamW whose second moment ``v`` holds one float32 number per *block* of
the parameter. The blocks are given as plain integers (so that a compiled kernel can take the same
arguments): the parameter is read as a matrix whose *rows* are split into blocks,

* ``block_axis=0``: the matrix is ``p.view(n_rows, -1)``, a row is ``p.view(n_rows, -1)[i]``;
* ``block_axis=1``: the matrix is ``p.view(-1, n_rows)``, a "row" is a column (Hugging Face ``Conv1D``);

and ``n_rows = sum(segment_rows)`` rows are cut into consecutive segments, segment ``s`` into blocks of
``rows_per_block[s]`` rows. A ``tensor`` block is one row holding everything; ``element`` blocks are
``numel`` rows of one element each.

Everything is vectorised over blocks and elements: the Python code loops only over the (at most three)
segments of a fused [q; k; v] weight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lit_microopt.ops.reference.random import param_rounding_keys, stochastic_round, stream_key


def _matrix(tensor: torch.Tensor, n_rows: int, block_axis: int) -> torch.Tensor:
    """The 2-D view of ``tensor`` whose rows (``block_axis=0``) or columns (``block_axis=1``) are the block rows."""
    return tensor.view(n_rows, -1) if block_axis == 0 else tensor.view(-1, n_rows)


def _block_sums_to_means(
    row_sums: torch.Tensor, segment_rows: Sequence[int], rows_per_block: Sequence[int], row_numel: int
) -> torch.Tensor:
    """Mean of g^2 over every block, from the per-row sums of g^2 (one reduction per segment, not per block)."""
    means = []
    for rows, height in zip(row_sums.split(list(segment_rows)), rows_per_block):
        block_sums = rows if height == 1 else rows.view(-1, height).sum(dim=1)
        means.append(block_sums.div_(height * row_numel))
    return means[0] if len(means) == 1 else torch.cat(means)


def _rows_from_blocks(
    per_block: torch.Tensor, segment_rows: Sequence[int], rows_per_block: Sequence[int]
) -> torch.Tensor:
    """Spread one value per block to one value per row (a vector of ``n_rows``, small next to the parameter)."""
    if len(rows_per_block) == 1:
        height = rows_per_block[0]
        return per_block if height == 1 else per_block.repeat_interleave(height)
    counts = [rows // height for rows, height in zip(segment_rows, rows_per_block)]
    return torch.cat(
        [block.repeat_interleave(height) for block, height in zip(per_block.split(counts), rows_per_block)]
    )


def block_mean_squares(
    grad: torch.Tensor, *, block_axis: int, segment_rows: Sequence[int], rows_per_block: Sequence[int]
) -> torch.Tensor:
    """The mean of g^2 over every block (float32, one entry per block): the statistic that feeds ``v``.

    One reduction over the gradient; the optimizer computes it for every parameter before changing anything,
    which also tells it at almost no cost whether every gradient is finite (a NaN or an infinity in a block
    makes that block's mean non-finite).
    """
    n_rows = sum(segment_rows)
    if grad.numel() == 0:
        return torch.zeros(0, dtype=torch.float32, device=grad.device)
    matrix = _matrix(grad.contiguous(), n_rows, block_axis)
    row_sums = torch.linalg.vector_norm(matrix, dim=1 - block_axis, dtype=torch.float32).square_()
    return _block_sums_to_means(row_sums, segment_rows, rows_per_block, grad.numel() // n_rows)


def block_denominators_(
    exp_avg_sq: torch.Tensor,
    grad: torch.Tensor,
    *,
    block_axis: int,
    segment_rows: Sequence[int],
    rows_per_block: Sequence[int],
    step: int,
    beta2: float,
    eps: float,
    block_mean_sq: torch.Tensor | None = None,
) -> torch.Tensor:
    """Step 3 and the denominator of step 4: ``v_b`` updated in place, then ``sqrt(v_b / bc2) + eps`` per block.

    ``block_mean_sq`` is :func:`block_mean_squares` of ``grad`` when already computed. When every block has one
    element the arithmetic is AdamW's own, operation for operation, so that the result is AdamW's bit for bit.
    """
    if exp_avg_sq.numel() == grad.numel():
        flat_grad = grad.reshape(-1).float()
        exp_avg_sq.mul_(beta2).addcmul_(flat_grad, flat_grad, value=1 - beta2)
    else:
        if block_mean_sq is None:
            block_mean_sq = block_mean_squares(
                grad, block_axis=block_axis, segment_rows=segment_rows, rows_per_block=rows_per_block
            )
        exp_avg_sq.mul_(beta2).add_(block_mean_sq, alpha=1 - beta2)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5  # written as AdamW writes it, for bit equality
    return (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)


def row_denominators(
    block_denominators: torch.Tensor, segment_rows: Sequence[int], rows_per_block: Sequence[int]
) -> torch.Tensor:
    """One denominator per row of the block matrix (a vector of ``n_rows``, small next to the parameter)."""
    if block_denominators.numel() == sum(segment_rows):
        return block_denominators
    return _rows_from_blocks(block_denominators, segment_rows, rows_per_block)


def apply_moments_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    row_denominator: torch.Tensor,
    *,
    block_axis: int,
    step_size: float,
    beta1: float,
    lr: float,
    weight_decay: float,
    stochastic_key: int | None,
    param_keys: tuple[int, int] | None = None,
) -> None:
    """Steps 1, 2, 4 and 5 for every element: the reference of the compiled op ``adam_mini_update_``.

    ``row_denominator`` holds ``sqrt(v_b / bc2) + eps`` for every row of the block matrix (see the module's
    docstring), ``step_size = lr / bc1``. ``stochastic_key`` selects the random stream that rounds ``m`` when
    its dtype is narrower than the parameter's (``None`` otherwise). ``param_keys`` (``param_rounding="stochastic"``,
    :func:`lit_microopt.ops.reference.random.param_rounding_keys`) are the streams that round a 16-bit parameter
    after the update and after the decay, in place of rounding to nearest (``None``: to nearest; a float32
    parameter has nothing to round and ignores them).
    """
    n_rows = row_denominator.numel()
    # A non-contiguous parameter (channels_last) has no matrix view: work on a copy, write it back at the end.
    target = param if param.is_contiguous() else param.contiguous()
    grad = grad.contiguous()
    if target.dtype == torch.float32:
        param_keys = None

    # 1. Decoupled weight decay: p *= 1 - lr * weight_decay.
    if weight_decay != 0:
        if param_keys is None:
            target.mul_(1 - lr * weight_decay)
        else:
            target.copy_(stochastic_round(target.float() * (1 - lr * weight_decay), target.dtype, param_keys[1]))

    # 2. m = beta1 * m + (1 - beta1) * g, in the parameter's dtype as AdamW does; in float32 when m has
    #    another dtype (written back at step 5, stochastically rounded when narrower than the parameter).
    if exp_avg.dtype == target.dtype:
        exp_avg.lerp_(grad if grad.dtype == exp_avg.dtype else grad.to(exp_avg.dtype), 1 - beta1)
        moment = exp_avg
    elif exp_avg.dtype == torch.float32:
        moment = exp_avg.lerp_(grad.float(), 1 - beta1)
    else:
        moment = exp_avg.float().lerp_(grad.float(), 1 - beta1)

    # 4. p -= lr * (m / bc1) / (sqrt(v_b / bc2) + eps): one denominator per block, spread over its rows.
    rows = row_denominator.view(-1, 1) if block_axis == 0 else row_denominator.view(1, -1)
    if param_keys is None:
        _matrix(target, n_rows, block_axis).addcdiv_(_matrix(moment, n_rows, block_axis), rows, value=-step_size)
    else:
        # The kernels' p - step_size * (m / d) in float32, operation for operation (addcdiv_ may round its
        # intermediate otherwise), then the stochastic rounding, which sees that float32 value.
        updated = _matrix(moment.float(), n_rows, block_axis).div(rows).mul_(step_size)
        updated = torch.sub(_matrix(target.float(), n_rows, block_axis), updated)
        target.copy_(stochastic_round(updated.view_as(target), target.dtype, param_keys[0]))

    # 5. Write m back in its own dtype.
    if moment is not exp_avg:
        if stochastic_key is not None:
            exp_avg.copy_(stochastic_round(moment, exp_avg.dtype, stochastic_key))
        else:
            exp_avg.copy_(moment)
    if target is not param:
        param.copy_(target)


def adam_mini_update_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    block_axis: int,
    segment_rows: Sequence[int],
    rows_per_block: Sequence[int],
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    rounding_seed: int = 0,
    block_mean_sq: torch.Tensor | None = None,
    apply: Callable[..., None] | None = None,
    stochastic_param: bool = False,
) -> None:
    """One Adam-mini step of ``param`` in place (``docs/adam_mini.md``, "One step").

    Args:
        param: the parameter (float32, bfloat16 or float16), updated in place.
        grad: its gradient, same shape.
        exp_avg: the first moment ``m``, same shape, any float dtype (``state_dtype``), updated in place. A
            dtype narrower than ``param``'s is written with unbiased stochastic rounding.
        exp_avg_sq: the second moment ``v``, float32, one entry per block, updated in place.
        block_axis: 0 or 1, see the module docstring.
        segment_rows: rows of each segment along the block axis.
        rows_per_block: block height of each segment.
        step: the parameter's step count ``t`` including this step (1 at the first step).
        lr: learning rate.
        beta1: decay of ``m``.
        beta2: decay of ``v``.
        eps: added to the block denominator.
        weight_decay: decoupled weight decay (the optimizer passes 0 for ``tensor`` and ``element`` roles).
        rounding_seed: this tensor's stochastic-rounding seed; with ``step`` it fixes the random stream.
        block_mean_sq: :func:`block_mean_squares` of ``grad`` when already computed, else ``None``. Ignored
            when every block has one element: those take AdamW's own arithmetic.
        apply: the element-wise pass, :func:`apply_moments_` (default) or a compiled kernel with its signature.
        stochastic_param: ``param_rounding="stochastic"``: a bfloat16 or float16 ``param`` is rounded stochastically
            after the decay and after the update, each with its own stream
            (:func:`lit_microopt.ops.reference.random.param_rounding_keys` of ``rounding_seed`` and ``step``); a
            float32 one is unchanged by it.
    """
    if param.numel() == 0:
        return
    denominators = block_denominators_(
        exp_avg_sq, grad, block_axis=block_axis, segment_rows=segment_rows, rows_per_block=rows_per_block,
        step=step, beta2=beta2, eps=eps, block_mean_sq=block_mean_sq,
    )
    narrower = exp_avg.element_size() < param.element_size()
    (apply or apply_moments_)(
        param, grad, exp_avg, row_denominators(denominators, segment_rows, rows_per_block),
        block_axis=block_axis, step_size=lr / (1 - beta1**step), beta1=beta1, lr=lr, weight_decay=weight_decay,
        stochastic_key=stream_key(rounding_seed, step) if narrower else None,
        param_keys=param_rounding_keys(rounding_seed, step) if stochastic_param and param.dtype != torch.float32
        else None,
    )


__all__ = [
    "adam_mini_update_",
    "apply_moments_",
    "block_denominators_",
    "block_mean_squares",
    "row_denominators",
    "stochastic_round",
]
