"""Checks of a loaded state's values: what no step writes, and what the kernels would act on unchecked.

``load_state_dict`` checks shapes and dtypes first; these checks look inside the tensors, once, at load time.
A corrupted checkpoint (a flipped bit, a hand-edited dict) then fails with a ``ValueError`` naming the parameter
and the entry, before anything is loaded, instead of a crash or NaN parameters steps later.
"""

from __future__ import annotations

import torch

from lit_microopt.ops.reference.microadam import TopKLayout


class LoadedStateCheck:
    """The value checks of one parameter's saved state; each raises ``ValueError`` naming the first bad entry.

    Args:
        owner: the optimizer's class name, for the message.
        name: the parameter's name, for the message.
    """

    def __init__(self, owner: str, name: str) -> None:
        self.owner = owner
        self.name = name

    def _fail(self, entry: str, value: object, why: str) -> None:
        raise ValueError(
            f"{self.owner}: the saved {entry} of {self.name} is {value}, {why}; the checkpoint is corrupted: load "
            "an intact state dict saved by this optimizer."
        )

    @staticmethod
    def _first(mask: torch.Tensor) -> tuple[int, ...]:
        """The index of the first ``True`` entry of ``mask``."""
        return tuple(int(i) for i in mask.nonzero()[0].tolist())

    def finite(self, key: str, values: torch.Tensor) -> None:
        """Every entry of ``values`` is finite."""
        bad = ~torch.isfinite(values)
        if bad.any():
            where = self._first(bad)
            self._fail(f"{key}[{', '.join(map(str, where))}]", values[where].item(), "but it must be finite")

    def non_negative(self, key: str, values: torch.Tensor) -> None:
        """Every entry of ``values`` is >= 0 (a second moment)."""
        bad = values < 0
        if bad.any():
            where = self._first(bad)
            self._fail(f"{key}[{', '.join(map(str, where))}]", values[where].item(), "but it must be >= 0")

    def window_indices(self, indices: torch.Tensor, layout: TopKLayout) -> None:
        """The filled rows of a MicroAdam window: every index within its block (``0 <= index < block length``),
        and strictly rising within each block of a row, as ``block_topk`` writes them.

        Args:
            indices: the filled rows, ``(filled, k)`` int16.
            layout: the parameter's Top-K layout (block-major columns: block ``b`` owns a run of ``k_block``).
        """
        if indices.numel() == 0:
            return
        columns = torch.arange(indices.shape[1], device=indices.device)
        # k_last <= k_block, so a column's block is column // k_block, the last (shorter) block included.
        block = columns // layout.k_block
        last_length = layout.numel - layout.num_full_blocks * layout.block_size
        length = torch.where(block < layout.num_full_blocks, layout.block_size, last_length)
        values = indices.long()
        outside = (values < 0) | (values >= length)
        if outside.any():
            row, column = self._first(outside)
            self._fail(f"window_indices[{row}, {column}]", int(values[row, column]),
                       f"outside its block of {int(length[column])} elements (0 <= index < {int(length[column])})")
        same_block = block[1:] == block[:-1]
        not_rising = same_block & (values[:, 1:] <= values[:, :-1])
        if not_rising.any():
            row, column = self._first(not_rising)
            self._fail(f"window_indices[{row}, {column + 1}]", int(values[row, column + 1]),
                       f"not above the index before it in its block ({int(values[row, column])}); each block's "
                       "indices rise strictly")


__all__ = ["LoadedStateCheck"]
