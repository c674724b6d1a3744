"""Compressed gradient communication: a DDP communication hook that sends a block Top-K with 4-bit error feedback.

Plain DDP all-reduces every gradient element. This hook sends, for each of DDP's gradient buckets, only the
``density`` largest entries of every block of ``block_size`` elements, as int16 block-relative indices and bfloat16
values (4 bytes an entry). What Top-K leaves out is kept on the sending rank as a 4-bit error feedback and added to
the next step's gradient, exactly as MicroAdam compresses its gradients (``docs/microadam.md``, steps 2 to 5). Every
rank gathers the others' entries and averages them, so all ranks end the step with the same sparse gradient.

At density 0.01 a float32 bucket of ``d`` elements costs each rank ``0.04 d`` bytes to send instead of ``4 d``;
an all-gather's traffic grows with the number of ranks where a ring all-reduce's does not, so the saving shrinks
from about 100x on 2 ranks to 10x on 20 (see ``benchmarks/compression_bytes.py``).
"""

# No ``from __future__ import annotations``: DDP checks the hook's annotations as objects.
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lit_microopt import ops
from lit_microopt.ops import TopKLayout
from lit_microopt.optim.microadam import check_compression_settings, error_feedback_shapes

log = logging.getLogger(__name__)

#: Gradient dtypes the compression kernels take; other buckets are all-reduced as they are.
COMPRESSIBLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Bytes of one sent entry: an int16 block-relative index and a bfloat16 value.
ENTRY_BYTES = 4

# all_gather_single is all_gather_into_tensor's newer name (PyTorch 2.10+), which deprecates the old one.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclass(frozen=True)
class TopKCompression:
    """How :func:`topk_compression_hook` compresses gradients: MicroAdam's Top-K and error-feedback settings.

    Args:
        density: fraction of each block sent per step, in (0, 1].
        block_size: Top-K block length, 1 to 32768 (indices travel as int16).
        quant_bucket_size: elements per 4-bit error-feedback bucket (even, >= 2).
        ef_rounding: ``"nearest"`` or ``"stochastic"`` (unbiased) rounding of the error feedback.

    Raises:
        ValueError: a setting is out of range (the message names it and the range).

    Example:
        >>> TopKCompression(density=0.01).ratio_to_dense(torch.float32)  # of a float32 all-reduce's bytes
        0.010009765625
    """

    density: float = 0.01
    block_size: int = 8192
    quant_bucket_size: int = 64
    ef_rounding: str = "nearest"

    def __post_init__(self) -> None:
        check_compression_settings("TopKCompression", vars(self))

    def layout(self, numel: int) -> TopKLayout:
        """The Top-K blocks of a bucket of ``numel`` elements."""
        return TopKLayout.of(numel, self.block_size, self.density)

    def bytes_per_element(self) -> float:
        """Bytes a rank sends per gradient element of a large bucket (index and value of the kept entries).

        Example:
            >>> TopKCompression(density=0.01).bytes_per_element()  # 82 entries of 4 bytes per 8192 elements
            0.0400390625
        """
        return self.layout(self.block_size).k * ENTRY_BYTES / self.block_size

    def ratio_to_dense(self, dtype: torch.dtype = torch.float32) -> float:
        """What a rank sends over what it hands to a dense all-reduce of ``dtype`` gradients, for a large bucket.

        Example:
            >>> TopKCompression(density=0.01).ratio_to_dense(torch.bfloat16)
            0.02001953125
        """
        return self.bytes_per_element() / torch.empty((), dtype=dtype).element_size()


class _ErrorFeedback:
    """The 4-bit error feedback of one bucket: codes (two per byte) and a bfloat16 range per quantization bucket."""

    def __init__(self, numel: int, quant_bucket_size: int, device: torch.device) -> None:
        self.numel = numel
        # MicroAdam's own error feedback, so that its ops run on it.
        shapes = error_feedback_shapes(numel, quant_bucket_size)
        self.codes, self.bucket_min, self.bucket_max = (
            torch.zeros(shape, dtype=dtype, device=device) for shape, dtype in shapes.values()
        )

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.bucket_min, self.bucket_max))


class TopKCompressionState:
    """What :func:`topk_compression_hook` keeps between steps on one rank, and what it has sent.

    The error feedback of every DDP bucket (by bucket index), the step count, and byte counters: ``bytes_sent``
    (what this rank handed to collectives) and ``dense_bytes`` (what the same steps would have handed to a dense
    all-reduce). The first synchronised step is all-reduced densely, as DDP reorders its buckets after it.

    The state pickles without its process group (which cannot be pickled), so that Lightning can send it to
    processes it spawns; an unpickled state uses the default group.

    Args:
        compression: the Top-K and error-feedback settings.
        process_group: the group to average over; ``None`` for the default (whole world).

    Example::

        state = TopKCompressionState(TopKCompression(density=0.01))
        ddp_model.register_comm_hook(state, topk_compression_hook)
    """

    def __init__(self, compression: TopKCompression | None = None, process_group: Any = None) -> None:
        self.compression = compression or TopKCompression()
        self.process_group = process_group
        self.error_feedback: dict[int, _ErrorFeedback] = {}
        self.iteration = 0
        self.bytes_sent = 0
        self.dense_bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["process_group"] = None
        return state

    @property
    def compression_ratio(self) -> float:
        """Bytes sent over the bytes a dense all-reduce would have sent, over the compressed steps so far."""
        return self.bytes_sent / self.dense_bytes if self.dense_bytes else 0.0

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to go on as this one would: the error feedback (on the CPU), step and counters.

        Example:
            >>> TopKCompressionState().state_dict()["iteration"]
            0
        """
        return {
            "compression": dataclasses.asdict(self.compression),
            "iteration": self.iteration,
            "bytes_sent": self.bytes_sent,
            "dense_bytes": self.dense_bytes,
            "error_feedback": {
                index: {"numel": feedback.numel, "codes": feedback.codes.cpu(), "bucket_min": feedback.bucket_min.cpu(),
                        "bucket_max": feedback.bucket_max.cpu()}
                for index, feedback in self.error_feedback.items()
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Take the state :meth:`state_dict` returned, its tensors on ``device`` (where the gradients are).

        Raises:
            ValueError: the state was saved with other compression settings; nothing is loaded.
        """
        saved = TopKCompression(**state_dict["compression"])
        if saved != self.compression:
            raise ValueError(
                f"TopKCompressionState: the state was saved with {saved}, but this run compresses with "
                f"{self.compression}; resume with the same gradient_compression settings."
            )
        error_feedback = {}
        for index, saved_feedback in state_dict["error_feedback"].items():
            feedback = _ErrorFeedback(saved_feedback["numel"], self.compression.quant_bucket_size, torch.device(device))
            for name in ("codes", "bucket_min", "bucket_max"):
                getattr(feedback, name).copy_(saved_feedback[name])
            error_feedback[int(index)] = feedback
        self.error_feedback = error_feedback
        self.iteration = int(state_dict["iteration"])
        self.bytes_sent, self.dense_bytes = int(state_dict["bytes_sent"]), int(state_dict["dense_bytes"])

    def error_feedback_bytes(self) -> int:
        """Bytes of error feedback this rank holds."""
        return sum(feedback.nbytes() for feedback in self.error_feedback.values())

    def feedback_for(self, index: int, buffer: torch.Tensor) -> _ErrorFeedback:
        """The error feedback of bucket ``index``, new (zero) when the bucket is new or has changed size."""
        feedback = self.error_feedback.get(index)
        if feedback is None or feedback.numel != buffer.numel() or feedback.codes.device != buffer.device:
            if feedback is not None:
                log.warning("DDP changed gradient bucket %d; its compression error feedback starts again from zero.",
                            index)
            feedback = _ErrorFeedback(buffer.numel(), self.compression.quant_bucket_size, buffer.device)
            self.error_feedback[index] = feedback
        return feedback


def _dense_average(buffer: torch.Tensor, group: Any, world: int) -> torch.futures.Future[torch.Tensor]:
    future = dist.all_reduce(buffer.div_(world), group=group, async_op=True).get_future()
    return future.then(lambda done: done.value()[0])


def topk_compression_hook(state: TopKCompressionState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook: average the ranks' block Top-K gradients, keeping the rest as error feedback.

    For the bucket's flat gradient ``g`` on each rank: ``a = g + Q^-1(e)``; the ``k`` entries of largest ``|a|``
    of every block are sent (int16 block-relative index and bfloat16 value); the remainder is quantized to 4 bits
    into ``e``. Each rank then sums every rank's entries, in rank order so that all ranks get the same bits, and
    divides by the number of ranks.

    Register it with ``ddp_model.register_comm_hook(TopKCompressionState(...), topk_compression_hook)``, or let
    :class:`~lit_microopt.strategies.MicroOptDDPStrategy` do it.

    Args:
        state: the per-rank :class:`TopKCompressionState`.
        bucket: the gradient bucket DDP hands over.

    Returns:
        A future of the averaged gradient, written into the bucket's buffer.
    """
    group = state.process_group
    world = dist.get_world_size(group)
    buffer = bucket.buffer()
    first_step = state.iteration == 0
    if bucket.is_last():
        state.iteration += 1
    if first_step or world == 1 or buffer.dtype not in COMPRESSIBLE_DTYPES or buffer.numel() == 0:
        return _dense_average(buffer, group, world)

    compression = state.compression
    layout = compression.layout(buffer.numel())
    feedback = state.feedback_for(bucket.index(), buffer)
    # One byte tensor holds both halves (the gloo backend has no int16 collectives): indices, then values.
    payload = torch.empty(ENTRY_BYTES * layout.k, dtype=torch.uint8, device=buffer.device)
    indices = payload[: 2 * layout.k].view(torch.int16)
    values = payload[2 * layout.k:].view(torch.bfloat16)
    stochastic = compression.ef_rounding == "stochastic"
    key = ops.stream_key(bucket.index(), state.iteration) if stochastic else 0
    ops.ef_compress_(buffer, indices, values, feedback.codes, feedback.bucket_min, feedback.bucket_max,
                     compression.quant_bucket_size, layout, stochastic, key)
    state.bytes_sent += payload.numel()
    state.dense_bytes += buffer.numel() * buffer.element_size()

    gathered = torch.empty(world * payload.numel(), dtype=torch.uint8, device=buffer.device)
    work = _all_gather_single(gathered, payload, group=group, async_op=True)

    def average(done: torch.futures.Future) -> torch.Tensor:
        # value() raises the all-gather's error (a peer died or left): ``gathered`` was never written, and
        # decoding it would index with, or add, whatever the memory held.
        done.value()
        rows = gathered.view(world, -1)
        buffer.zero_()
        for rank in range(world):  # a rank's positions are distinct: each sum below is a plain, ordered add
            positions = ops.window_positions(rows[rank, : 2 * layout.k].view(torch.int16), layout)
            buffer[positions] += rows[rank, 2 * layout.k:].view(torch.bfloat16).to(buffer.dtype)
        return buffer.div_(world)

    return work.get_future().then(average)


__all__ = ["COMPRESSIBLE_DTYPES", "ENTRY_BYTES", "TopKCompression", "TopKCompressionState", "topk_compression_hook"]
