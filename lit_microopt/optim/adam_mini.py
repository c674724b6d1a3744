"""Adam-mini (Zhang et al., ICLR 2025): AdamW with one second-moment value per block of parameters.

The blocks follow the near-block-diagonal Hessian of Transformers: one per attention head for query and key
weights, one per output row for other matrices, one per tensor for norm scales, one per element for biases
(:mod:`lit_microopt.optim.partition`). State per parameter: ``m`` in ``state_dtype`` plus a few float32
numbers per block, so about 4 bytes per float32 parameter (2 with ``state_dtype=torch.bfloat16``), half of
AdamW's 8.

The algorithm and every detail are fixed by ``docs/adam_mini.md``; the maths of a step lives in the op
``adam_mini_update_`` (:mod:`lit_microopt.ops.reference.adam_mini`), this module owns the constructor, the
partition, the state and the order of the step.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

from lit_microopt.ops import (
    adam_mini_update_,
    block_mean_squares,
    dispatch,
    multi_adam_mini_update_,
    multi_block_mean_squares_,
)
from lit_microopt.optim._common import (
    SUPPORTED_PARAMETER_DTYPES,
    ExactStateOptimizer,
    check_common_hyperparameters,
    rounds_parameter_stochastically,
)
from lit_microopt.optim._dtensor import (
    ShardBlocks,
    check_gradients_finite_everywhere,
    is_dtensor,
    local_state,
    local_tensor,
    shard_blocks,
    share_local_blocks,
    sum_spanning_statistics,
    zeros_like_sharded,
)
from lit_microopt.optim._validation import LoadedStateCheck
from lit_microopt.optim.partition import (
    BlockLayout,
    HeadConfig,
    check_head_config,
    check_rules,
    parameter_modules,
    partition_parameter,
    summarize_partition,
)

logger = logging.getLogger(__name__)

_NAMES_NEEDED = (
    "AdamMini needs parameter names to find attention heads and biases; pass model.named_parameters(), "
    "param groups whose 'params' are (name, tensor) pairs or that carry 'param_names', or use "
    "AdamMini.from_model(model) (with transformers.Trainer, pass optimizer_cls_and_kwargs=(AdamMiniForTrainer, "
    "{...}) from lit_microopt.hf_trainer, see docs/hf_trainer.md)."
)


def _drop_repeated_tensors(param_group: dict[str, Any]) -> dict[str, Any]:
    """``param_group`` with every tensor kept once, under its first name (tied weights).

    A tensor repeated under the same name is a mistake, not a tie: ``ValueError`` naming it.
    """
    params = param_group["params"]
    if isinstance(params, (set, frozenset)):
        return param_group  # PyTorch rejects unordered collections with its own message
    items = [params] if isinstance(params, torch.Tensor) else list(params)
    names = param_group.get("param_names")
    first_names: dict[int, str | None] = {}
    kept, kept_names = [], []
    for index, item in enumerate(items):
        is_named = isinstance(item, tuple) and len(item) == 2
        tensor = item[1] if is_named else item
        name = item[0] if is_named else (names[index] if names is not None and index < len(names) else None)
        if id(tensor) in first_names:
            if name is not None and name == first_names[id(tensor)]:
                raise ValueError(f"AdamMini: {name} is given twice; pass every parameter once.")
            continue
        first_names[id(tensor)] = name
        kept.append(item)
        if names is not None and index < len(names):
            kept_names.append(names[index])
    group = {**param_group, "params": kept}
    if names is not None and len(names) == len(items):
        group["param_names"] = kept_names
    return group


def _check_not_flat_shard(name: str, param: torch.Tensor) -> None:
    """Flattened shards (FSDP1 ``FlatParameter``, DeepSpeed ZeRO) have lost the shape the blocks need."""
    # FSDP1 marks its FlatParameter and, with use_orig_params=True, the flattened views it hands out.
    if type(param).__name__ == "FlatParameter" or getattr(param, "_fsdp_flattened", False) or hasattr(param, "ds_id"):
        raise ValueError(
            f"AdamMini: {name} is a flattened shard (FSDP1 FlatParameter or DeepSpeed ZeRO), which cannot be cut "
            "into heads and rows; shard with FSDP2 (fully_shard, Lightning's ModelParallelStrategy) or train with DDP."
        )


class _BatchLayout(NamedTuple):
    """A parameter's blocks as the multi-tensor ops take them (a parameter one call can step with others)."""

    block_axis: int
    segment_rows: tuple[int, ...]
    rows_per_block: tuple[int, ...]
    n_blocks: int
    weight_decay: bool


#: The ops of the multi-tensor path: a device without kernels for both steps its tensors one by one.
_MULTI_OPS = ("multi_block_mean_squares_", "multi_adam_mini_update_")


class AdamMini(ExactStateOptimizer):
    """Adam-mini: AdamW with one second moment per block (attention head, output row, tensor or element).

    At every step, for each parameter with a gradient (``t`` its own step count)::

        p   *= 1 - lr * weight_decay                      (head and row parameters only)
        m    = beta1 * m + (1 - beta1) * g
        v_b  = beta2 * v_b + (1 - beta2) * mean_b(g^2)    (float32, one per block b)
        p   -= lr * (m / (1 - beta1^t)) / (sqrt(v_b / (1 - beta2^t)) + eps)

    Each parameter's role and block count are in :attr:`partition`, summarised once in an INFO log.

    Parameters may be DTensors sharded along dim 0 (FSDP2's ``fully_shard``): a shard keeps its ``row`` and ``head``
    blocks local, blocks the sharding cuts (``tensor``, ``Conv1D`` columns) are reduced over the mesh, ``m`` is
    sharded like the parameter and ``v`` is whole on every rank. Flattened FSDP1 / DeepSpeed shards are refused.

    Args:
        params: named parameters: ``model.named_parameters()``, or param groups whose ``params`` are
            ``(name, tensor)`` pairs or that carry ``param_names``. A group may set its own ``lr``, ``betas``,
            ``eps`` and ``weight_decay``.
        lr: learning rate.
        betas: ``(beta1, beta2)``; a scheduler may cycle them (``OneCycleLR``).
        eps: added to the block denominator.
        weight_decay: decoupled weight decay, applied to ``head`` and ``row`` parameters only.
        n_heads: query heads of the model's attention (needed when it has query/key weights).
        n_kv_heads: key/value heads (grouped-query attention); defaults to ``n_heads``.
        head_dim: rows per head; defaults to the weight's rows divided by the number of heads.
        rules: ordered ``(glob pattern, role)`` pairs tried before the built-in partition, e.g.
            ``[("*.router.weight", "tensor")]``. Roles: ``"head"``, ``"row"``, ``"tensor"``, ``"element"``.
        state_dtype: dtype of the first moment ``m``; ``None`` means the parameter's dtype. A narrower dtype
            (``torch.bfloat16`` for float32 parameters) is written with unbiased stochastic rounding.
            ``v`` is always float32.
        param_rounding: ``"nearest"`` or ``"stochastic"`` (unbiased) rounding of a bfloat16 or float16 parameter's
            new values, after the weight decay and after the update (per group). Stochastic rounding keeps updates
            below half a bfloat16 ulp, which rounding to nearest drops: use it for 16-bit weights without a float32
            master copy (Lightning's ``precision="bf16-true"``). Float32 parameters are unaffected.
        check_finite: raise ``FloatingPointError`` before changing anything when a gradient holds a NaN or an
            infinity (one device sync per step). Pass ``False`` when a ``GradScaler`` owns that check.
        modules: the module that owns each parameter, by parameter name (``from_model`` fills it): a Hugging
            Face ``Conv1D`` is stored ``[in, out]``, an ``nn.MultiheadAttention`` knows its head count.

    Raises:
        ValueError: unnamed parameters, an out-of-range hyper-parameter, or attention weights that the head
            configuration cannot split (each message says what to change).
        TypeError: a parameter's dtype is not float32, bfloat16 or float16.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        ...                      num_attention_heads=4, num_key_value_heads=2)
        >>> model = LlamaForCausalLM(config)
        >>> optimizer = AdamMini.from_model(model, lr=1e-3, weight_decay=0.1)
        >>> optimizer.partition["model.layers.0.self_attn.k_proj.weight"].n_blocks
        2
        >>> model(torch.randint(0, 128, (2, 8)), labels=torch.randint(0, 128, (2, 8))).loss.backward()
        >>> optimizer.step()
        >>> optimizer.zero_grad()
    """

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        n_heads: int | None = None,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        rules: Sequence[tuple[str, str]] | None = None,
        state_dtype: torch.dtype | None = None,
        param_rounding: str = "nearest",
        check_finite: bool = True,
        modules: Mapping[str, torch.nn.Module] | None = None,
    ) -> None:
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
                        weight_decay=weight_decay, param_rounding=param_rounding)
        check_common_hyperparameters("AdamMini", defaults)
        if state_dtype is not None and state_dtype not in SUPPORTED_PARAMETER_DTYPES:
            raise ValueError(
                f"AdamMini: state_dtype must be None, torch.float32, torch.bfloat16 or torch.float16, got {state_dtype!r}."
            )
        self.heads = HeadConfig(n_heads, n_kv_heads, head_dim)
        check_head_config(self.heads)
        self.rules = check_rules(rules)
        self.state_dtype = state_dtype
        self.check_finite = check_finite
        self._modules_by_name = dict(modules or {})
        #: Each parameter's role and blocks, by name (a :class:`BlockLayout`: ``.role``, ``.n_blocks``).
        self.partition: dict[str, BlockLayout] = {}
        self._layouts: dict[torch.Tensor, BlockLayout] = {}
        self._shard_blocks: dict[torch.Tensor, ShardBlocks] = {}  # DTensor parameters (FSDP2): their local blocks
        # Parameters the multi-tensor ops can step: whole tensors with more elements than blocks (element blocks
        # keep AdamW's arithmetic, DTensors their shard's blocks and collectives, per tensor).
        self._batch_layouts: dict[torch.Tensor, _BatchLayout] = {}
        #: Whether a step batches its tensors into one op call per param group and step count (False: one by one,
        #: the same results; the tests compare both).
        self._multi_tensor = True
        self._constructed = False
        super().__init__(params, defaults)
        self._constructed = True
        logger.info(summarize_partition(self.partition))
        if self.heads.n_heads is not None and self.partition and not any(
            layout.role == "head" for layout in self.partition.values()
        ):
            # Names outside the known ones (timm's attn.qkv, diffusers' to_q / to_k) would silently get row blocks.
            warnings.warn(
                f"AdamMini: n_heads={self.heads.n_heads} was given, but no parameter was recognised as a query, key "
                "or fused qkv weight (by the last part of its name, e.g. q_proj, k_proj, c_attn), so none has head "
                "blocks; give such weights their role with rules=[(pattern, 'head')], or leave n_heads out.",
                stacklevel=2,
            )

    @classmethod
    def from_model(cls, model: torch.nn.Module, **kwargs: Any) -> AdamMini:
        """An ``AdamMini`` over all of ``model``'s parameters, with names, head counts and module types read from it.

        ``n_heads``, ``n_kv_heads`` and ``head_dim`` come from ``model.config`` when it has them (Hugging Face
        ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, else ``hidden_size // num_attention_heads``),
        unless any of the three is passed: then the config is not read for them. An ``nn.MultiheadAttention``
        gives its own head count. Tied weights are optimised once, under their first name.

        Args:
            model: the model to optimise.
            **kwargs: any constructor argument (``lr``, ``weight_decay``, ``rules``, ...).

        Example:
            >>> layer = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4)
            >>> optimizer = AdamMini.from_model(layer, lr=3e-4, weight_decay=0.1, state_dtype=torch.bfloat16)
            >>> optimizer.partition["self_attn.in_proj_weight"].n_blocks  # 4 q heads, 4 k heads, 64 v rows
            72
        """
        config = getattr(model, "config", None)
        if config is not None and not any(key in kwargs for key in ("n_heads", "n_kv_heads", "head_dim")):
            kwargs.update(HeadConfig.from_hf_config(config).as_arguments())
        kwargs.setdefault("modules", parameter_modules(model))
        return cls(model.named_parameters(), **kwargs)

    # -- parameters and partition ----------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a named param group; its hyper-parameters are checked and its parameters partitioned."""
        where = f" in param group {len(self.param_groups)}"
        check_common_hyperparameters("AdamMini", {**self.defaults, **param_group}, where)
        super().add_param_group(self._reject_repeated_parameters(_drop_repeated_tensors(param_group), where))
        group = self.param_groups[-1]
        try:
            names = group.get("param_names")
            if names is None or len(names) != len(group["params"]):
                raise ValueError(_NAMES_NEEDED)
            added, sharded = {}, {}
            for name, param in zip(names, group["params"]):
                if param.dtype not in SUPPORTED_PARAMETER_DTYPES:
                    raise TypeError(
                        f"AdamMini supports float32, bfloat16 and float16 parameters, but {name} is {param.dtype}; "
                        "convert the model with .float(), .bfloat16() or .half()."
                    )
                if name in self.partition or name in added:
                    raise ValueError(f"AdamMini: two parameters are named {name!r}; give every parameter its own name.")
                _check_not_flat_shard(name, param)
                added[name] = partition_parameter(
                    name, param.shape, module=self._modules_by_name.get(name), heads=self.heads, rules=self.rules
                )
                if is_dtensor(param):
                    sharded[param] = shard_blocks(name, param, added[name])
        except (ValueError, TypeError):
            self.param_groups.pop()
            raise
        self.partition.update(added)
        self._layouts.update(zip(group["params"], added.values()))
        self._batch_layouts.update(
            (param, _BatchLayout(layout.block_axis, layout.segment_rows, layout.rows_per_block, layout.n_blocks,
                                 layout.weight_decay))
            for param, layout in zip(group["params"], added.values())
            if not is_dtensor(param) and layout.n_blocks < param.numel()
        )
        self._shard_blocks.update(sharded)
        if self._constructed:
            logger.info(summarize_partition(added))

    # -- state ---------------------------------------------------------------------------------------

    def _moment_dtype(self, param: torch.Tensor) -> torch.dtype:
        return self.state_dtype or param.dtype

    def _group_of(self, param: torch.Tensor) -> dict[str, Any]:
        """The param group that holds ``param``."""
        return next(group for group in self.param_groups if any(p is param for p in group["params"]))

    def _rounds_stochastically(self, param: torch.Tensor, group: dict[str, Any] | None = None) -> bool:
        """Whether ``param`` needs a random stream (a ``rounding_seed``): its first moment is narrower than it, or
        it is a 16-bit parameter of a group with ``param_rounding="stochastic"``."""
        if self._moment_dtype(param).itemsize < param.dtype.itemsize:
            return True
        return rounds_parameter_stochastically(self._group_of(param) if group is None else group, param)

    def expected_state_shapes(
        self, param: torch.Tensor, group: dict[str, Any] | None = None
    ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Shape and dtype of every state tensor of ``param`` (under ``group``'s settings; default: its own group)."""
        shapes = {
            "step": ((), torch.int64),
            "exp_avg": (tuple(param.shape), self._moment_dtype(param)),
            "exp_avg_sq": ((self._layouts[param].n_blocks,), torch.float32),
        }
        if self._rounds_stochastically(param, group):
            shapes["rounding_seed"] = ((), torch.int64)
        return shapes

    def _expected_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return self.expected_state_shapes(param, group)

    def _completed_saved_state(
        self, param: torch.Tensor, group: dict[str, Any], position: int, saved_state: dict[str, Any]
    ) -> dict[str, Any]:
        """A saved state with its ``rounding_seed`` as ``group`` needs it: a state saved while the parameter was
        rounded to nearest (a checkpoint from before ``param_rounding``, or one saved with ``"nearest"``) gets the
        seed a new state gets, its position; a seed that ``group`` no longer uses is dropped. A state saved with
        another ``state_dtype`` is left as it is, for the checks to refuse."""
        exp_avg = saved_state.get("exp_avg")
        if not isinstance(exp_avg, torch.Tensor) or exp_avg.dtype != self._moment_dtype(param):
            return saved_state
        needs_seed = self._rounds_stochastically(param, group)
        if needs_seed and "rounding_seed" not in saved_state:
            return {**saved_state, "rounding_seed": torch.tensor(position, dtype=torch.int64)}
        if not needs_seed and "rounding_seed" in saved_state:
            return {key: value for key, value in saved_state.items() if key != "rounding_seed"}
        return saved_state

    def _new_state(self, param: torch.Tensor, group: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
        if not is_dtensor(param):
            return super()._new_state(param, group, seed)
        # A DTensor's first moment is sharded like it; v, a few numbers per block, is whole on every rank.
        state = {
            "step": torch.zeros((), dtype=torch.int64),
            "exp_avg": zeros_like_sharded(param, self._moment_dtype(param)),
            "exp_avg_sq": torch.zeros(self._layouts[param].n_blocks, dtype=torch.float32,
                                      device=local_tensor(param).device),
        }
        if self._rounds_stochastically(param, group):
            state["rounding_seed"] = torch.tensor(seed, dtype=torch.int64)
        return state

    def _state_fix(self, param: torch.Tensor, group: dict[str, Any]) -> str:
        layout = self._layouts[param]
        return (f"this parameter has role {layout.role} with {layout.n_blocks} blocks; build the optimizer with the "
                "n_heads, n_kv_heads, head_dim, rules and state_dtype the state was saved with.")

    def _dtype_fix(self, key: str) -> str:
        if key == "exp_avg":
            return "build the optimizer with the state_dtype the state was saved with."
        return super()._dtype_fix(key)

    def _check_loaded_values(self, name: str, param: torch.Tensor, group: dict[str, Any], saved_state: dict[str, Any]) -> None:
        """A non-finite moment, or a negative second moment, turns the next step into NaN parameters."""
        check = LoadedStateCheck("AdamMini", name)
        check.finite("exp_avg", local_tensor(saved_state["exp_avg"]))
        check.finite("exp_avg_sq", saved_state["exp_avg_sq"])
        check.non_negative("exp_avg_sq", saved_state["exp_avg_sq"])

    # -- the step --------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Take one optimization step for every parameter that has a gradient.

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
        """One step of every parameter that has a gradient.

        Under ``torch.compile`` this runs eagerly, behind one graph break: each parameter's step count and bias
        corrections are Python numbers, new at every step, and every parameter shape would be traced anew, so a
        traced step would recompile at every step until dynamo's recompile limit, for no fusion the update's
        kernels do not already have.
        """
        work = [(self.param_groups[index], name, param, position)
                for index, name, param, position in self._parameters_with_gradients()]
        everything = work
        buckets, work = self._buckets(work)
        # The block statistics read only the gradients: computing them first lets a non-finite gradient stop
        # the step before anything changes, and makes the finiteness check nearly free.
        batched_statistics = self._batched_statistics(buckets)
        block_mean_sqs = [self._block_mean_sq(param) for _, _, param, _ in work]
        sum_spanning_statistics([
            (blocks, stat) for (_, _, param, _), stat in zip(work, block_mean_sqs)
            if (blocks := self._shard_blocks.get(param)) is not None and blocks.spans and blocks.group is not None
        ])
        if self.check_finite and (work or buckets):
            self._check_finite([(name, param.grad) for _, name, param, _ in work], block_mean_sqs, [
                ([(name, param.grad) for bucket in device_buckets for _, name, param, _ in bucket], statistics)
                for device_buckets, statistics in batched_statistics
            ])
        # New states in the parameters' order, whichever path steps them (self.state keeps that order).
        for group, _, param, position in everything:
            state = self.state[param]
            if not state:
                state.update(self._new_state(param, group, seed=position))
            elif "rounding_seed" not in state and self._rounds_stochastically(param, group):
                # param_rounding switched to "stochastic" after the first step: the seed a new state gets.
                state["rounding_seed"] = torch.tensor(position, dtype=torch.int64)
        for device_buckets, statistics in batched_statistics:
            self._step_buckets(device_buckets, statistics)

        owned_blocks = []  # (blocks, v) of DTensor parameters whose v entries the other ranks need
        for (group, _, param, _), block_mean_sq in zip(work, block_mean_sqs):
            state = self.state[param]
            state["step"] += 1
            layout = self._layouts[param]
            # A DTensor steps its local shard (its blocks; for local blocks, their slice of v).
            values, blocks = local_state(state), self._shard_blocks.get(param)
            exp_avg_sq, local = values["exp_avg_sq"], self._local_layout(param)
            if blocks is not None and not blocks.spans:
                exp_avg_sq = exp_avg_sq[blocks.first_block : blocks.first_block + local.n_blocks]
                if blocks.group is not None:
                    owned_blocks.append((blocks, state["exp_avg_sq"]))
            if local_tensor(param).numel() == 0:
                continue
            beta1, beta2 = (float(beta) for beta in group["betas"])
            adam_mini_update_(
                local_tensor(param), local_tensor(param.grad), values["exp_avg"], exp_avg_sq,
                block_axis=local.block_axis, segment_rows=local.segment_rows,
                rows_per_block=local.rows_per_block, step=int(state["step"]), lr=float(group["lr"]),
                beta1=beta1, beta2=beta2, eps=float(group["eps"]),
                weight_decay=float(group["weight_decay"]) if layout.weight_decay else 0.0,
                rounding_seed=int(state["rounding_seed"]) if "rounding_seed" in state else 0,
                block_mean_sq=block_mean_sq, stochastic_param=rounds_parameter_stochastically(group, param),
            )
        share_local_blocks(owned_blocks)

    def _buckets(self, work: list[tuple[dict[str, Any], str, torch.Tensor, int]]
                 ) -> tuple[list[list[tuple[dict[str, Any], str, torch.Tensor, int]]], list]:
        """``work`` split into the buckets of the multi-tensor path and the rest, which steps tensor by tensor.

        A bucket is one op call: the parameters of one group, device and dtype whose step counts are equal (all of
        them, normally). The step counts are read with one ``tolist``; nothing changes here.
        """
        if not self._multi_tensor or not work or dispatch.use_reference():
            return [], work
        kernels: dict[str, bool] = {}
        batched, rest = [], []
        for entry in work:
            param = entry[2]
            device_type = param.device.type
            if device_type not in kernels:
                kernels[device_type] = dispatch.compiled_available(device_type, _MULTI_OPS)
            if param in self._batch_layouts and kernels[device_type] and param.is_contiguous():
                batched.append(entry)
            else:
                rest.append(entry)
        steps = [state["step"] for _, _, param, _ in batched if (state := self.state.get(param))]
        counts = iter(torch.stack(steps).tolist() if steps else [])
        buckets: dict[tuple[int, torch.device, torch.dtype, int], list] = {}
        for entry in batched:
            group, param = entry[0], entry[2]
            count = next(counts) if self.state.get(param) else 0
            buckets.setdefault((id(group), param.device, param.dtype, count), []).append(entry)
        return list(buckets.values()), rest

    def _batched_statistics(self, buckets: list[list]) -> list[tuple[list[list], torch.Tensor]]:
        """The block statistics of every bucket, by device: (its buckets, one float32 tensor of their blocks in
        order), one op call per device."""
        by_device: dict[torch.device, list[list]] = {}
        for bucket in buckets:
            by_device.setdefault(bucket[0][2].device, []).append(bucket)
        results = []
        for device, device_buckets in by_device.items():
            params = [param for bucket in device_buckets for _, _, param, _ in bucket]
            layouts = [self._batch_layouts[param] for param in params]
            statistics = torch.empty(sum(layout.n_blocks for layout in layouts), dtype=torch.float32, device=device)
            multi_block_mean_squares_(statistics, [param.grad for param in params], **_layout_lists(layouts))
            results.append((device_buckets, statistics))
        return results

    def _step_buckets(self, buckets: list[list], statistics: torch.Tensor) -> None:
        """Steps 1 to 5 of every bucket of one device, one op call each; the step counts advance with one op."""
        states = [[self.state[param] for _, _, param, _ in bucket] for bucket in buckets]
        torch._foreach_add_([state["step"] for bucket_states in states for state in bucket_states], 1)
        offset = 0
        for bucket, bucket_states in zip(buckets, states):
            group, param = bucket[0][0], bucket[0][2]
            params = [param for _, _, param, _ in bucket]
            layouts = [self._batch_layouts[param] for param in params]
            # One dtype and state_dtype a bucket: whether a stream is needed is the same for all its tensors.
            seeds = (torch.stack([state["rounding_seed"] for state in bucket_states]).tolist()
                     if "rounding_seed" in bucket_states[0] else [0] * len(bucket))
            beta1, beta2 = (float(beta) for beta in group["betas"])
            weight_decay = float(group["weight_decay"])
            blocks = sum(layout.n_blocks for layout in layouts)
            multi_adam_mini_update_(
                statistics.narrow(0, offset, blocks), params, [param.grad for param in params],
                [state["exp_avg"] for state in bucket_states], [state["exp_avg_sq"] for state in bucket_states],
                **_layout_lists(layouts),
                weight_decays=[weight_decay if layout.weight_decay else 0.0 for layout in layouts],
                rounding_seeds=seeds, step=int(bucket_states[0]["step"]), lr=float(group["lr"]), beta1=beta1,
                beta2=beta2, eps=float(group["eps"]), stochastic_param=rounds_parameter_stochastically(group, param),
            )
            offset += blocks

    def _local_layout(self, param: torch.Tensor) -> BlockLayout:
        """The blocks this rank steps: the parameter's, or its local shard's for a DTensor."""
        blocks = self._shard_blocks.get(param)
        return self._layouts[param] if blocks is None else blocks.layout

    def _block_mean_sq(self, param: torch.Tensor) -> torch.Tensor | None:
        """The block means of g^2 of ``param``, or ``None`` when its blocks are single elements (AdamW's path).

        For a DTensor whose blocks the sharding cuts, this rank's share of each block's mean, to be summed over the
        mesh.
        """
        layout, blocks, grad = self._local_layout(param), self._shard_blocks.get(param), local_tensor(param.grad)
        spans = blocks is not None and blocks.spans
        if layout.n_blocks == grad.numel() and not spans:
            return None
        means = block_mean_squares(
            grad, block_axis=layout.block_axis, segment_rows=layout.segment_rows, rows_per_block=layout.rows_per_block
        )
        if spans:
            means = means.mul_(blocks.scale) if grad.numel() else grad.new_zeros(layout.n_blocks, dtype=torch.float32)
        return means

    @staticmethod
    def _check_finite(
        named_gradients: list[tuple[str, torch.Tensor]], block_mean_sqs: list[torch.Tensor | None],
        batched: Sequence[tuple[list[tuple[str, torch.Tensor]], torch.Tensor]] = (),
    ) -> None:
        """Raise ``FloatingPointError`` when a gradient holds a NaN or an infinity.

        A non-finite gradient makes the sum of its block statistics non-finite, so one tiny sum per tensor
        (one device sync) clears all the others; only the suspects (and single-element-block tensors, which
        have no statistic) get the exact element-wise check, whose error names them. A finite gradient so
        large that its squares overflow is a suspect that passes the exact check. ``batched`` holds the
        multi-tensor path's gradients with the one tensor of all their statistics: one sum for all of them,
        whose gradients are all suspects when it is not finite.
        """
        # DTensor gradients are all checked exactly, the verdict shared by the ranks (every rank sees the same list).
        suspects = [(name, grad) for (name, grad), stat in zip(named_gradients, block_mean_sqs)
                    if stat is None or is_dtensor(grad)]
        sums_by_device: dict[torch.device, list[tuple[tuple[str, torch.Tensor], torch.Tensor]]] = {}
        for named_gradient, stat in zip(named_gradients, block_mean_sqs):
            if stat is not None and not is_dtensor(named_gradient[1]):
                sums_by_device.setdefault(stat.device, []).append(([named_gradient], stat.sum()))
        for batch_gradients, statistics in batched:
            sums_by_device.setdefault(statistics.device, []).append((batch_gradients, statistics.sum()))
        for entries in sums_by_device.values():
            finite = torch.isfinite(torch.stack([total for _, total in entries])).tolist()
            suspects.extend(named_gradient for (gradients, _), ok in zip(entries, finite) if not ok
                            for named_gradient in gradients)
        if suspects:
            check_gradients_finite_everywhere("AdamMini", suspects)

    # -- what monitors read ------------------------------------------------------------------------------

    def effective_learning_rates(self) -> dict[str, torch.Tensor]:
        """Per parameter name, the effective learning rate of each block: ``lr / bc1 / (sqrt(v_b / bc2) + eps)``.

        It is the factor that multiplies ``m`` in the update (float32, one entry per block, on the
        parameter's device). Parameters that have not taken a step yet are left out.

        Example:
            >>> layer = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4)
            >>> optimizer = AdamMini.from_model(layer)
            >>> layer(torch.randn(5, 2, 64)).sum().backward()
            >>> optimizer.step()
            >>> optimizer.effective_learning_rates()["self_attn.in_proj_weight"].shape  # one per block
            torch.Size([72])
        """
        rates = {}
        for group in self.param_groups:
            beta1, beta2 = (float(beta) for beta in group["betas"])
            lr, eps = float(group["lr"]), float(group["eps"])
            for name, param in zip(group["param_names"], group["params"]):
                state = self.state.get(param)
                if not state:
                    continue
                t = int(state["step"])
                denominator = (state["exp_avg_sq"].sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
                rates[name] = denominator.reciprocal_().mul_(lr / (1 - beta1**t))
        return rates


def _layout_lists(layouts: Sequence[_BatchLayout]) -> dict[str, list[int]]:
    """The layouts of a multi-tensor op's tensors as its int lists: block axes, segment counts, the segments' rows
    and block heights, concatenated."""
    return dict(
        block_axes=[layout.block_axis for layout in layouts],
        segment_counts=[len(layout.segment_rows) for layout in layouts],
        segment_rows=[rows for layout in layouts for rows in layout.segment_rows],
        rows_per_block=[height for layout in layouts for height in layout.rows_per_block],
    )


__all__ = ["AdamMini"]
