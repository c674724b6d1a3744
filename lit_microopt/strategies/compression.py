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
    """The 4-bit error feedback of one compressed unit: codes (two per byte) and a bfloat16 range per quantization
    bucket, and the parameters whose gradients, concatenated in this order, the unit is."""

    def __init__(self, parameters: tuple[str, ...], numel: int, quant_bucket_size: int,
                 device: torch.device) -> None:
        self.parameters = parameters
        self.numel = numel
        # MicroAdam's own error feedback, so that its ops run on it.
        shapes = error_feedback_shapes(numel, quant_bucket_size)
        self.codes, self.bucket_min, self.bucket_max = (
            torch.zeros(shape, dtype=dtype, device=device) for shape, dtype in shapes.values()
        )

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.bucket_min, self.bucket_max))

    def to_(self, device: torch.device) -> None:
        self.codes, self.bucket_min, self.bucket_max = (
            t.to(device) for t in (self.codes, self.bucket_min, self.bucket_max))


#: A unit of a bucket: its index, its error feedback, and its gradients' views in the bucket (``None``: all of it).
_Unit = tuple[int, _ErrorFeedback, list[torch.Tensor] | None]


class TopKCompressionState:
    """What :func:`topk_compression_hook` keeps between steps on one rank, and what it has sent.

    The error feedback, the step count, and byte counters: ``bytes_sent`` (what this rank handed to collectives)
    and ``dense_bytes`` (what the same steps would have handed to a dense all-reduce). The first synchronised step
    is all-reduced densely, as DDP reorders its buckets after it.

    The error feedback belongs to *units*, each a list of parameters: a unit is a gradient bucket of DDP as the
    hook first compressed it, and its parameters are what a checkpoint records. A process always starts with other
    buckets (DDP puts every parameter in one bucket until its first backward has shown the order gradients come
    in), so a bucket made of whole units is compressed unit by unit, each as its own flat gradient: a resumed run
    compresses exactly what the uninterrupted one would have. A bucket that cuts a unit starts a new unit, with
    zero error feedback (and a warning).

    Parameters are named by :meth:`name_parameters` (:class:`~lit_microopt.strategies.MicroOptDDPStrategy` calls
    it); without it, by the order the hook first sees them in, which is the same in every process of the same
    model and DDP settings.

    The state pickles without its process group (which cannot be pickled) and parameter names, so that Lightning
    can send it to processes it spawns; an unpickled state uses the default group.

    Args:
        compression: the Top-K and error-feedback settings.
        process_group: the group to average over; ``None`` for the default (whole world).

    Example::

        state = TopKCompressionState(TopKCompression(density=0.01))
        state.name_parameters(model)
        ddp_model.register_comm_hook(state, topk_compression_hook)
    """

    def __init__(self, compression: TopKCompression | None = None, process_group: Any = None) -> None:
        self.compression = compression or TopKCompression()
        self.process_group = process_group
        self.error_feedback: dict[int, _ErrorFeedback] = {}  # by unit index
        self.iteration = 0
        self.bytes_sent = 0
        self.dense_bytes = 0
        self._names: dict[int, str] = {}  # id(parameter) -> name
        self._numels: dict[str, int] = {}  # name -> elements, of the named model
        self._unit_of: dict[str, int] = {}  # parameter name -> unit index

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(process_group=None, _names={}, _numels={})  # ids mean nothing in another process
        return state

    def name_parameters(self, module: torch.nn.Module) -> None:
        """Name the parameters by ``module.named_parameters()``, so that checkpoints name them and are checked."""
        self._names = {id(param): name for name, param in module.named_parameters()}
        self._numels = {name: param.numel() for name, param in module.named_parameters()}

    def _name_of(self, param: torch.Tensor) -> str:
        return self._names.setdefault(id(param), f"parameter {len(self._names)}")

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
                index: {"parameters": list(feedback.parameters), "numel": feedback.numel,
                        "codes": feedback.codes.cpu(), "bucket_min": feedback.bucket_min.cpu(),
                        "bucket_max": feedback.bucket_max.cpu()}
                for index, feedback in self.error_feedback.items()
            },
        }

    def state_dict_problem(self, state_dict: dict[str, Any]) -> str | None:
        """Why :meth:`load_state_dict` would refuse ``state_dict`` (other settings, other parameters), or ``None``.

        Parameters are checked (by name and size) once :meth:`name_parameters` has named them.
        """
        saved = TopKCompression(**state_dict["compression"])
        if saved != self.compression:
            return f"it was saved with {saved}, but this run compresses with {self.compression}"
        for saved_feedback in state_dict["error_feedback"].values():
            if "parameters" not in saved_feedback:
                return "it was saved by an earlier lit_microopt, whose error feedback does not name its parameters"
            if not self._numels:
                continue
            missing = [name for name in saved_feedback["parameters"] if name not in self._numels]
            if missing:
                return f"it holds the error feedback of parameter {missing[0]!r}, which this model does not have"
            if sum(self._numels[name] for name in saved_feedback["parameters"]) != saved_feedback["numel"]:
                return (f"the parameters {saved_feedback['parameters']} hold {saved_feedback['numel']} elements in "
                        f"it, but other sizes in this model")
        return None

    def load_state_dict(self, state_dict: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Take the state :meth:`state_dict` returned, its tensors on ``device`` (where the gradients are).

        Raises:
            ValueError: the state does not fit this run (see :meth:`state_dict_problem`); nothing is loaded.
        """
        problem = self.state_dict_problem(state_dict)
        if problem is not None:
            raise ValueError(f"TopKCompressionState: the state cannot be loaded, as {problem}; resume with the same "
                             f"model and gradient_compression settings.")
        error_feedback = {}
        for index, saved_feedback in state_dict["error_feedback"].items():
            feedback = _ErrorFeedback(tuple(saved_feedback["parameters"]), saved_feedback["numel"],
                                      self.compression.quant_bucket_size, torch.device(device))
            for name in ("codes", "bucket_min", "bucket_max"):
                getattr(feedback, name).copy_(saved_feedback[name])
            error_feedback[int(index)] = feedback
        self.error_feedback = error_feedback
        self._unit_of = {name: index for index, feedback in error_feedback.items() for name in feedback.parameters}
        self.iteration = int(state_dict["iteration"])
        self.bytes_sent, self.dense_bytes = int(state_dict["bytes_sent"]), int(state_dict["dense_bytes"])

    def error_feedback_bytes(self) -> int:
        """Bytes of error feedback this rank holds."""
        return sum(feedback.nbytes() for feedback in self.error_feedback.values())

    def units_of(self, bucket: dist.GradBucket, names: list[str]) -> list[_Unit]:
        """The units bucket ``bucket`` (its parameters named ``names``) is made of: ``(index, error feedback,
        gradient views)`` each, by index.

        The views are the unit's parameters' gradients in the bucket's buffer, in the unit's order; ``None`` when
        the unit is the buffer itself. A bucket that is not made of whole units becomes one new unit (zero error
        feedback), and the units it cut are dropped.
        """
        buffer = bucket.buffer()
        indices = sorted({self._unit_of.get(name, -1) for name in names})
        units = [self.error_feedback[index] for index in indices if index >= 0]
        if indices and indices[0] >= 0 and sum(len(unit.parameters) for unit in units) == len(names):
            # Every parameter is in a unit, and every unit's parameters are here: the bucket is made of whole units.
            for unit in units:
                if unit.codes.device != buffer.device:
                    unit.to_(buffer.device)
            if len(units) == 1 and units[0].parameters == tuple(names):
                return [(indices[0], units[0], None)]
            views = dict(zip(names, bucket.gradients()))
            return [(index, unit, [views[name] for name in unit.parameters]) for index, unit in zip(indices, units)]
        if units:
            log.warning("DDP's gradient bucket %d cuts compression units %s; their error feedback starts again "
                        "from zero.", bucket.index(), [index for index in indices if index >= 0])
        for index in indices:
            if index >= 0:
                for name in self.error_feedback.pop(index).parameters:
                    del self._unit_of[name]
        index = max(self.error_feedback, default=-1) + 1
        self.error_feedback[index] = _ErrorFeedback(tuple(names), buffer.numel(), self.compression.quant_bucket_size,
                                                    buffer.device)
        self._unit_of.update(dict.fromkeys(names, index))
        return [(index, self.error_feedback[index], None)]


def _dense_average(buffer: torch.Tensor, group: Any, world: int) -> torch.futures.Future[torch.Tensor]:
    future = dist.all_reduce(buffer.div_(world), group=group, async_op=True).get_future()
    return future.then(lambda done: done.value()[0])


def topk_compression_hook(state: TopKCompressionState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook: average the ranks' block Top-K gradients, keeping the rest as error feedback.

    For the flat gradient ``g`` of each unit of the bucket (see :class:`TopKCompressionState`; usually the bucket
    itself) on each rank: ``a = g + Q^-1(e)``; the ``k`` entries of largest ``|a|`` of every block are sent (int16
    block-relative index and bfloat16 value); the remainder is quantized to 4 bits into ``e``. Each rank then sums
    every rank's entries, in rank order so that all ranks get the same bits, and divides by the number of ranks.

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
    # Named in every step, the dense first one included: unnamed parameters are numbered in the order a process
    # first sees them, which is then that of DDP's first buckets in every process.
    names = [state._name_of(param) for param in bucket.parameters()]
    step = state.iteration  # the same for every bucket of the step (the stochastic rounding's key)
    if bucket.is_last():
        state.iteration += 1
    if step == 0 or world == 1 or buffer.dtype not in COMPRESSIBLE_DTYPES or buffer.numel() == 0:
        return _dense_average(buffer, group, world)

    compression = state.compression
    stochastic = compression.ef_rounding == "stochastic"
    units = []  # (index, error feedback, flat gradient, its views in the buffer or None, layout, payload offset)
    size = 0
    for index, feedback, views in state.units_of(bucket, names):
        flat = buffer if views is None else torch.cat([view.reshape(-1) for view in views])
        units.append((index, feedback, flat, views, compression.layout(flat.numel()), size))
        size += ENTRY_BYTES * units[-1][4].k
    # One byte tensor holds every unit's entries (the gloo backend has no int16 collectives): indices, then values.
    payload = torch.empty(size, dtype=torch.uint8, device=buffer.device)
    for index, feedback, flat, _, layout, offset in units:
        indices = payload[offset: offset + 2 * layout.k].view(torch.int16)
        values = payload[offset + 2 * layout.k: offset + ENTRY_BYTES * layout.k].view(torch.bfloat16)
        key = ops.stream_key(index, step) if stochastic else 0
        ops.ef_compress_(flat, indices, values, feedback.codes, feedback.bucket_min, feedback.bucket_max,
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
        for _, _, flat, views, layout, offset in units:
            flat.zero_()
            for rank in range(world):  # a rank's positions are distinct: each sum below is a plain, ordered add
                positions = ops.window_positions(rows[rank, offset: offset + 2 * layout.k].view(torch.int16), layout)
                flat[positions] += rows[rank, offset + 2 * layout.k: offset + ENTRY_BYTES * layout.k].view(
                    torch.bfloat16).to(flat.dtype)
            flat.div_(world)
            if views is not None:  # a unit gathered from the bucket goes back to its parameters' places
                for view, part in zip(views, flat.split([view.numel() for view in views])):
                    view.copy_(part.view_as(view))
        return buffer

    return work.get_future().then(average)


__all__ = ["COMPRESSIBLE_DTYPES", "ENTRY_BYTES", "TopKCompression", "TopKCompressionState", "topk_compression_hook"]
