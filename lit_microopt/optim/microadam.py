"""MicroAdam (Modoranu et al., NeurIPS 2024): Adam statistics rebuilt at every step from a sliding window
of Top-K sparse gradients, with the discarded part kept as 4-bit error feedback.

The algorithm, every detail of its state and its step order are fixed by ``docs/microadam.md``; the maths of
each step lives in :mod:`lit_microopt.ops`, this module owns the constructor, the state and the order.
"""

from __future__ import annotations

import math

from collections.abc import Mapping
from typing import Any

import torch

from lit_microopt import ops
from lit_microopt.ops.reference.microadam import MAX_BLOCK_SIZE, TopKLayout
from lit_microopt.optim._common import (
    SUPPORTED_PARAMETER_DTYPES,
    ExactStateOptimizer,
    check_common_hyperparameters,
    rounds_parameter_stochastically,
)
from lit_microopt.optim._dtensor import (
    FlatShard,
    check_gradients_finite_everywhere,
    is_dtensor,
    local_state,
    local_tensor,
    new_sharded_state,
    padded_local_numel,
    sharded_state_shapes,
)
from lit_microopt.optim._validation import LoadedStateCheck
from lit_microopt.optim.telemetry import MicroAdamStatistics, MicroAdamTelemetry, microadam_statistics

#: Hyper-parameters that shape the state: a saved state only fits an optimizer with the same values.
LAYOUT_HYPERPARAMETERS = ("m", "density", "block_size", "quant_bucket_size")
EF_ROUNDING_MODES = ("nearest", "stochastic")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_compression_settings(owner: str, settings: Mapping[str, Any], where: str = "") -> None:
    """Raise ``ValueError`` naming the first out-of-range Top-K or error-feedback setting of ``settings``.

    The settings are ``density``, ``block_size``, ``quant_bucket_size`` and ``ef_rounding``: MicroAdam's, and those
    of the gradient compression of :mod:`lit_microopt.strategies`, which runs MicroAdam's ops.

    Args:
        owner: the class whose settings they are, for the message (``"MicroAdam"``).
        settings: a mapping holding the four settings.
        where: text naming the param group (``" in param group 1"``), empty otherwise.
    """
    density, block_size = settings["density"], settings["block_size"]
    bucket_size, rounding = settings["quant_bucket_size"], settings["ef_rounding"]
    if not (isinstance(density, (int, float)) and not isinstance(density, bool) and 0 < density <= 1):
        raise ValueError(f"{owner}: density{where} must be in (0, 1], got {density!r}.")
    if not (_is_int(block_size) and 1 <= block_size <= MAX_BLOCK_SIZE):
        raise ValueError(
            f"{owner}: block_size{where} must be an integer in [1, {MAX_BLOCK_SIZE}] "
            f"(block-relative indices are int16), got {block_size!r}."
        )
    if not (_is_int(bucket_size) and bucket_size >= 2 and bucket_size % 2 == 0):
        raise ValueError(f"{owner}: quant_bucket_size{where} must be an even integer >= 2, got {bucket_size!r}.")
    if rounding not in EF_ROUNDING_MODES:
        raise ValueError(f"{owner}: ef_rounding{where} must be 'nearest' or 'stochastic', got {rounding!r}.")


def error_feedback_shapes(numel: int, quant_bucket_size: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shape and dtype of the 4-bit error feedback of ``numel`` elements: two codes per byte, and a bfloat16
    range per bucket of ``quant_bucket_size`` elements (``docs/microadam.md``, step 5)."""
    buckets = -(-numel // quant_bucket_size)
    return {
        "error_feedback": ((-(-numel // 2),), torch.uint8),
        "bucket_min": ((buckets,), torch.bfloat16),
        "bucket_max": ((buckets,), torch.bfloat16),
    }


def _check_microadam_hyperparameters(group: dict[str, Any], where: str = "") -> None:
    """Raise ``ValueError`` naming the first out-of-range hyper-parameter of ``group``."""
    check_common_hyperparameters("MicroAdam", group, where)
    m = group["m"]
    if not (_is_int(m) and m >= 1):
        raise ValueError(f"MicroAdam: m{where} (window length) must be an integer >= 1, got {m!r}.")
    check_compression_settings("MicroAdam", group, where)


#: The op ``microadam_step_``'s tensor lists, in its schema's order, and those that come from a parameter's state.
_STEP_LISTS = ("params", "grads", "window_indices", "window_values", "error_feedback", "bucket_min", "bucket_max",
               "step", "rounding_seed")
_STATE_LISTS = _STEP_LISTS[2:]


class MicroAdam(ExactStateOptimizer):
    """MicroAdam: Adam with about 0.9 bytes of state per parameter, for fine-tuning.

    Each step keeps the ``density`` largest entries (by magnitude) of every block of ``block_size`` elements
    of the error-corrected gradient in a window of the last ``m`` steps, from which Adam's first and second
    moments are rebuilt. What Top-K discards goes into a 4-bit error feedback (one bfloat16 min/max pair per
    ``quant_bucket_size`` elements) and is added back at the next step. Weight decay is decoupled (AdamW's).

    State per parameter of ``d`` elements: ``4 * m * density + 0.5 + 4 / quant_bucket_size`` bytes per element
    (0.9625 at the defaults), plus an int64 step count and an int64 rounding seed.

    .. note:: ``p.grad`` is used as the working buffer of the step: after ``step()`` its content is
       unspecified. Read or clip gradients before calling ``step()``.

    Parameters may be DTensors (FSDP2's ``fully_shard``): each rank compresses its own shard, and the state is
    sized for the largest shard and sharded like the parameter (it resumes on the same number of ranks).

    Args:
        params: parameters or param groups, as for any ``torch.optim.Optimizer`` (named parameters too:
            names then appear in error messages and telemetry).
        lr: learning rate (per group).
        betas: ``(beta1, beta2)`` of Adam (per group; an LR scheduler may cycle them).
        eps: added to the denominator (per group).
        weight_decay: decoupled weight decay, applied to every element (per group).
        m: window length in steps.
        density: fraction of each block kept per step, in (0, 1].
        block_size: Top-K block length, 1 to 32768.
        quant_bucket_size: elements per quantization bucket (even, >= 2).
        ef_rounding: ``"nearest"`` or ``"stochastic"`` (unbiased) rounding of the error feedback.
        param_rounding: ``"nearest"`` or ``"stochastic"`` (unbiased) rounding of a bfloat16 or float16 parameter's
            new values, after the weight decay and after the update (per group). Stochastic rounding keeps updates
            below half a bfloat16 ulp, which rounding to nearest drops: use it for 16-bit weights without a float32
            master copy (Lightning's ``precision="bf16-true"``). Float32 parameters are unaffected.
        check_finite: raise ``FloatingPointError`` before changing anything when a gradient holds a NaN or an
            infinity (one device sync per step). Pass ``False`` when a ``GradScaler`` owns that check.

    Raises:
        ValueError: a hyper-parameter is out of range (the message names it and the range), or a parameter is
            given twice.
        TypeError: a parameter's dtype is not float32, bfloat16 or float16.

    Example:
        >>> model = torch.nn.Linear(64, 64)
        >>> optimizer = MicroAdam(model.parameters(), lr=1e-4, m=10, density=0.01)
        >>> model(torch.randn(8, 64)).square().mean().backward()
        >>> optimizer.step()
        >>> optimizer.zero_grad()
    """

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        m: int = 10,
        density: float = 0.01,
        block_size: int = 8192,
        quant_bucket_size: int = 64,
        ef_rounding: str = "nearest",
        param_rounding: str = "nearest",
        check_finite: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
            weight_decay=weight_decay, m=m, density=density, block_size=block_size,
            quant_bucket_size=quant_bucket_size, ef_rounding=ef_rounding, param_rounding=param_rounding,
        )
        _check_microadam_hyperparameters(defaults)
        self.check_finite = check_finite
        self._telemetry_requested = False
        self.telemetry: MicroAdamTelemetry | None = None
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its own hyper-parameters are checked like the constructor's."""
        where = f" in param group {len(self.param_groups)}"
        _check_microadam_hyperparameters({**self.defaults, **param_group}, where)
        param_group = self._reject_repeated_parameters(param_group, where)
        super().add_param_group(param_group)
        for param in self.param_groups[-1]["params"]:
            if param.dtype not in SUPPORTED_PARAMETER_DTYPES:
                self.param_groups.pop()
                raise TypeError(
                    f"MicroAdam supports float32, bfloat16 and float16 parameters, got a {param.dtype} "
                    f"parameter{where}; convert the model with .float(), .bfloat16() or .half()."
                )

    def request_telemetry(self) -> None:
        """Compute statistics during the next ``step()``; they appear in :attr:`telemetry` afterwards.

        Statistics cost extra passes over the gradients, so they are only computed on request (a callback
        asks before the step it will log).
        """
        self._telemetry_requested = True

    # -- state ---------------------------------------------------------------------------------------

    @staticmethod
    def layout(numel: int, group: dict[str, Any]) -> TopKLayout:
        """The Top-K block layout of a tensor of ``numel`` elements under ``group``'s hyper-parameters."""
        return TopKLayout.of(numel, group["block_size"], group["density"])

    @staticmethod
    def expected_state_shapes(numel: int, group: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Shape and dtype of every state tensor of a parameter with ``numel`` elements (``docs/microadam.md``)."""
        k = TopKLayout.of(numel, group["block_size"], group["density"]).k
        return {
            "step": ((), torch.int64),
            "rounding_seed": ((), torch.int64),
            "window_indices": ((group["m"], k), torch.int16),
            "window_values": ((group["m"], k), torch.bfloat16),
            **error_feedback_shapes(numel, group["quant_bucket_size"]),
        }

    def _expected_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        # A DTensor (FSDP2) keeps the state of its largest local shard on every rank, sharded like the parameter.
        shapes = self.expected_state_shapes(padded_local_numel(param), group)
        return sharded_state_shapes(param, shapes, self.host_state_keys)

    def _new_state(self, param: torch.Tensor, group: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
        if not is_dtensor(param):
            return super()._new_state(param, group, seed)
        shapes = self.expected_state_shapes(padded_local_numel(param), group)
        return new_sharded_state(param, shapes, self.host_state_keys, seed)

    def _state_fix(self, param: torch.Tensor, group: dict[str, Any]) -> str:
        return (f"this parameter has {padded_local_numel(param)} elements (per rank when sharded); load a state dict "
                "saved for the same model with the "
                "same m, density, block_size and quant_bucket_size.")

    def _check_loaded_state(self, state_dict: dict[str, Any]) -> None:
        for index, (group, saved_group) in enumerate(zip(self.param_groups, state_dict["param_groups"])):
            for key in LAYOUT_HYPERPARAMETERS:
                if key in saved_group and saved_group[key] != group[key]:
                    raise ValueError(
                        f"MicroAdam: the state dict was saved with {key}={saved_group[key]!r} in param group "
                        f"{index}, but this optimizer has {key}={group[key]!r}; build the optimizer with "
                        f"{key}={saved_group[key]!r} to load it."
                    )
        super()._check_loaded_state(state_dict)

    def _check_loaded_values(self, name: str, param: torch.Tensor, group: dict[str, Any], saved_state: dict[str, Any]) -> None:
        """The kernels trust the window: an index outside its block writes outside the parameter, and the CUDA
        kernels also rely on each block's indices rising strictly (``block_topk`` writes them in position order).
        A non-finite window value or bucket range turns the next step into NaN parameters."""
        check = LoadedStateCheck("MicroAdam", name)
        for key in ("window_values", "bucket_min", "bucket_max"):
            check.finite(key, local_tensor(saved_state[key]))
        step = saved_state["step"]
        filled = min(int(step.item() if isinstance(step, torch.Tensor) else step), group["m"])
        layout = self.layout(padded_local_numel(param), group)
        check.window_indices(local_tensor(saved_state["window_indices"])[:filled], layout)

    # -- the step --------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Take one optimization step (steps 1 to 7 of ``docs/microadam.md`` for every parameter that has a gradient).

        Args:
            closure: re-evaluates the model and returns the loss (optional).

        Raises:
            FloatingPointError: a gradient holds a NaN or an infinity (with ``check_finite``); nothing changed.
            TypeError: a gradient is sparse, complex or of an unsupported dtype; nothing changed.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._update_parameters()
        return loss

    @torch.compiler.disable
    def _update_parameters(self) -> None:
        """Steps 1 to 7 for every parameter that has a gradient.

        Under ``torch.compile`` this runs eagerly, behind one graph break: its work is the extension's kernels,
        which a graph cannot fuse, and its per-step Python numbers (the window row, the bias corrections) would be
        new constants, and so a recompile, at every step.
        """
        # Zero-size parameters are skipped: they have nothing to compress and keep no state.
        work = [entry for entry in self._parameters_with_gradients() if entry[2].numel() > 0]
        named_gradients = [(name, param.grad) for _, name, param, _ in work]
        if self.check_finite and named_gradients:
            magnitudes = check_gradients_finite_everywhere("MicroAdam", named_gradients)
            self._check_accumulator_range(work, magnitudes)

        collect = self._telemetry_requested
        self._telemetry_requested = False
        # Tensors stepped in place go in one call per param group; copies (a padded shard, a non-contiguous tensor)
        # step one at a time, so that at most one is alive, and so does every tensor of a telemetry step.
        in_place: list[tuple[tuple, FlatShard]] = []
        pending = []  # (group index, name, statistics as a tensor, counts) of every parameter, when collecting
        for entry in work:
            group_index, name, param, position = entry
            state = self.state[param]
            if not state:
                state.update(self._new_state(param, self.param_groups[group_index], seed=position))
            # A DTensor steps its local shard, flat and padded to the size its state was made for.
            shard = FlatShard(param)
            if collect:
                statistics = self._step_parameter(shard.param, self.param_groups[group_index], local_state(state),
                                                  shard.grad)
                pending.append((group_index, name, *statistics))
                shard.write_back()
            elif shard.is_copy:
                self._step_groups([(entry, shard)])
                shard.write_back()
            else:
                in_place.append((entry, shard))
        if collect:
            self.telemetry = self._gather_telemetry(pending, len(self.param_groups))
        else:
            self._step_groups(in_place)

    def _step_groups(self, entries: list[tuple[tuple, FlatShard]]) -> None:
        """Steps 1 to 7 of every parameter of ``entries`` (its work entry and the tensors to step), one op call for
        each param group's tensors of one device and dtypes."""
        calls: dict[tuple, dict[str, list[torch.Tensor]]] = {}
        for (group_index, _, param, _), shard in entries:
            key = (group_index, shard.param.device, shard.param.dtype, shard.grad.dtype)
            lists = calls.get(key)
            if lists is None:
                lists = calls[key] = {name: [] for name in _STEP_LISTS}
            state = local_state(self.state[param]) if is_dtensor(param) else self.state[param]
            lists["params"].append(shard.param)
            lists["grads"].append(shard.grad)
            for name in _STATE_LISTS:
                lists[name].append(state[name])
        for (group_index, *_), lists in calls.items():
            group = self.param_groups[group_index]
            beta1, beta2 = (float(beta) for beta in group["betas"])
            ops.microadam_step_(
                *lists.values(), lr=float(group["lr"]), beta1=beta1, beta2=beta2, eps=float(group["eps"]),
                weight_decay=float(group["weight_decay"]), m=group["m"], block_size=group["block_size"],
                k_block=self.layout(group["block_size"], group).k_block, bucket_size=group["quant_bucket_size"],
                stochastic=group["ef_rounding"] == "stochastic",
                stochastic_param=group["param_rounding"] == "stochastic",
            )

    def _check_accumulator_range(self, work: list, gradient_magnitudes: dict[str, float]) -> None:
        """Raise ``FloatingPointError``, before anything changes, where this step's accumulator could overflow
        the window's float32 statistics: ``S2`` adds up to ``m`` squares of window values, so every
        ``|a| <= max|g| + max|Q^-1(e)|`` must stay below ``sqrt(float32 max / m)`` (about 5.8e18 for m = 10).

        Sharded (DTensor) parameters are not checked here: their gradient magnitudes are per shard.
        """
        entries = [(name, param, self.param_groups[group_index]["m"]) for group_index, name, param, _ in work
                   if name in gradient_magnitudes]
        # The error feedback's largest magnitude is in its bucket ranges (d / q values each): one small reduction
        # per device. A parameter's first step has no error feedback yet.
        ranges = [(name, self.state[param][key]) for name, param, _ in entries if self.state.get(param)
                  for key in ("bucket_min", "bucket_max")]
        by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
        for name, tensor in ranges:
            by_device.setdefault(tensor.device, []).append((name, tensor))
        feedback: dict[str, float] = {}
        for labelled in by_device.values():
            for (name, _), value in zip(labelled, ops.max_magnitudes([tensor for _, tensor in labelled]).tolist()):
                feedback[name] = max(feedback.get(name, 0.0), value)
        too_large = []
        for name, _, m in entries:
            bound = gradient_magnitudes[name] + feedback.get(name, 0.0)
            limit = math.sqrt(torch.finfo(torch.float32).max / m)
            if not bound < limit:
                too_large.append(f"{name} ({bound:.3g} > {limit:.3g})")
        if too_large:
            raise FloatingPointError(
                "MicroAdam: gradient plus error feedback too large for the window's float32 statistics in "
                f"{', '.join(too_large)}; nothing was updated. Scale the loss down or clip gradients."
            )

    def _step_parameter(
        self, param: torch.Tensor, group: dict[str, Any], state: dict[str, torch.Tensor], grad: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Steps 1 to 7 of one (contiguous) parameter, step by step, so that the remainder ``r`` is left in the
        accumulator for the statistics: the same step as :meth:`_step_groups` takes."""
        beta1, beta2 = (float(beta) for beta in group["betas"])
        m, bucket_size = group["m"], group["quant_bucket_size"]
        layout = self.layout(param.numel(), group)
        indices, values = state["window_indices"], state["window_values"]
        error_feedback, bucket_min, bucket_max = state["error_feedback"], state["bucket_min"], state["bucket_max"]

        # Step 1.
        state["step"] += 1
        t = int(state["step"])
        row = (t - 1) % m
        seed = int(state["rounding_seed"])

        # Steps 2 to 5, in float32 as the step of a whole group computes them (for a bfloat16 or float16 gradient, a
        # float32 copy of it lives during this step).
        accumulator = grad.view(-1).float()
        ops.ef_dequant_add_(accumulator, error_feedback, bucket_min, bucket_max, bucket_size)
        ops.block_topk(accumulator, indices[row], values[row], layout)
        ops.ef_quantize_(accumulator, indices[row], error_feedback, bucket_min, bucket_max, bucket_size, layout,
                         group["ef_rounding"] == "stochastic", ops.stream_key(seed, t))

        # Steps 6 and 7, over the filled rows.
        filled = min(t, m)
        # param_rounding="stochastic": the two roundings of a 16-bit parameter draw from streams of their own.
        stochastic_param = rounds_parameter_stochastically(group, param)
        param_key, decay_key = ops.param_rounding_keys(seed, t) if stochastic_param else (0, 0)
        ops.window_adam_update_(
            param.view(-1), indices[:filled], values[:filled], ops.row_weights(beta1, t, m, param.device),
            ops.row_weights(beta2, t, m, param.device), layout, (1 - beta1) / (1 - beta1**t),
            (1 - beta2) / (1 - beta2**t), float(group["eps"]), float(group["lr"]), float(group["weight_decay"]),
            stochastic_param, param_key, decay_key,
        )
        return microadam_statistics(accumulator, state, layout, group, row, filled)

    @staticmethod
    def _gather_telemetry(pending: list, groups: int) -> MicroAdamTelemetry:
        """Read every parameter's statistics with one transfer per device and sum them per param group."""
        by_device: dict[torch.device, list[int]] = {}
        for index, entry in enumerate(pending):
            by_device.setdefault(entry[2].device, []).append(index)
        values: list[list[float]] = [[] for _ in pending]
        for device, indices in by_device.items():
            for index, row in zip(indices, torch.stack([pending[i][2] for i in indices]).tolist()):
                values[index] = row
        telemetry = MicroAdamTelemetry(per_group=[MicroAdamStatistics() for _ in range(groups)])
        for (group_index, name, _, (filled_entries, window_entries, numel)), row in zip(pending, values):
            accumulator_sq, discarded_sq, remainder_sq, quantization_sq, error_feedback_sq, support = row
            statistics = MicroAdamStatistics(
                accumulator_sq=accumulator_sq, discarded_sq=max(discarded_sq, 0.0), remainder_sq=remainder_sq,
                quantization_error_sq=quantization_sq, error_feedback_sq=error_feedback_sq,
                filled_entries=filled_entries, window_entries=window_entries, support=int(support), numel=numel,
            )
            telemetry.per_parameter[name] = statistics
            telemetry.per_group[group_index] = telemetry.per_group[group_index] + statistics
        return telemetry

    def bytes_per_element(self, group_index: int = 0) -> float:
        """The state size (``docs/microadam.md``) of large tensors under a group's settings: ``4*m*density + 0.5 + 4/q``."""
        group = self.param_groups[group_index]
        return 4 * group["m"] * group["density"] + 0.5 + 4 / group["quant_bucket_size"]


__all__ = ["MAX_BLOCK_SIZE", "MicroAdam", "check_compression_settings", "error_feedback_shapes"]
