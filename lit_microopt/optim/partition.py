"""Adam-mini's partition: which elements of a parameter share one second-moment value.

Adam-mini keeps one ``v`` per *block* of a parameter. Every parameter gets one of four roles
(``docs/adam_mini.md``), and the role fixes its blocks:

========= ======================================================================================
role      blocks
========= ======================================================================================
head      one per attention head: ``head_dim`` consecutive output rows (query and key weights)
row       one per output row of ``p.view(p.shape[0], -1)`` (every other parameter of 2 or more dims)
tensor    one for the whole tensor (0-D and 1-D parameters that are not biases: norm scales)
element   one per element, i.e. plain AdamW (biases)
========= ======================================================================================

Everything here is a pure function of a parameter's name, shape, owning module, the attention head
configuration and the user's ``rules``, so a partition can be computed, printed and tested without an
optimizer. The result, a :class:`BlockLayout`, is plain data that the op ``adam_mini_update_`` consumes.

Blocks always run along one axis of a 2-D view of the parameter, the *block axis*: the parameter is read as
``p.view(n_rows, -1)`` (block axis 0, the usual ``[out, in]`` weight) or ``p.view(-1, n_rows)`` (block axis 1,
Hugging Face ``Conv1D``, which stores ``[in, out]``). Along that axis, consecutive *segments* of rows are cut
into blocks of equal height: a fused ``[q; k; v]`` weight is three segments (q per head, k per kv head, v per
row); every other layout is a single segment.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

ROLES = ("head", "row", "tensor", "element")
#: Roles whose parameters receive weight decay: weight matrices, not norms and biases.
DECAYED_ROLES = frozenset({"head", "row"})

# Last name component before ``.weight`` (or before ``_weight``), matched as a whole token, lower-cased.
QUERY_TOKENS = frozenset({"q_proj", "wq", "query", "q", "q_lin"})
KEY_TOKENS = frozenset({"k_proj", "wk", "key", "k", "k_lin"})
FUSED_QKV_TOKENS = frozenset({"c_attn", "qkv_proj", "in_proj", "wqkv"})


@dataclass(frozen=True)
class HeadConfig:
    """The attention geometry the ``head`` role needs; ``None`` where unknown.

    Attributes:
        n_heads: number of query heads.
        n_kv_heads: number of key/value heads (grouped-query attention); ``None`` means ``n_heads``.
        head_dim: rows per head; ``None`` means "rows of the weight / number of heads".
    """

    n_heads: int | None = None
    n_kv_heads: int | None = None
    head_dim: int | None = None

    @property
    def kv_heads(self) -> int | None:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @classmethod
    def from_hf_config(cls, config: Any) -> HeadConfig:
        """The geometry a Hugging Face config gives, ``None`` where it gives none: ``num_attention_heads``,
        ``num_key_value_heads`` (default: the number of heads) and ``head_dim`` (default:
        ``hidden_size // num_attention_heads``). The one place the package reads head counts from a config.
        """

        def integer(key: str) -> int | None:
            value = getattr(config, key, None)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        n_heads = integer("num_attention_heads")
        n_kv_heads = integer("num_key_value_heads") or n_heads
        head_dim, hidden = integer("head_dim"), integer("hidden_size")
        if head_dim is None and n_heads and hidden is not None:
            head_dim = hidden // n_heads
        return cls(n_heads, n_kv_heads, head_dim)

    def as_arguments(self) -> dict[str, int]:
        """The known values as ``AdamMini`` keyword arguments (``n_heads``, ``n_kv_heads``, ``head_dim``)."""
        values = {"n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads, "head_dim": self.head_dim}
        return {key: value for key, value in values.items() if value is not None}


def parameter_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every parameter's owning module, by the parameter's name in ``model.named_parameters()``: what tells a
    Hugging Face ``Conv1D`` or an ``nn.MultiheadAttention`` apart from a plain weight."""
    modules: dict[str, torch.nn.Module] = {}
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            modules.setdefault(f"{module_name}.{name}" if module_name else name, module)
    return modules


@dataclass(frozen=True)
class BlockLayout:
    """Where the blocks of one parameter lie, and why it got its role.

    Attributes:
        role: one of :data:`ROLES`.
        block_axis: 0 when blocks are rows of ``p.view(n_rows, -1)``, 1 when they are columns of
            ``p.view(-1, n_rows)`` (Hugging Face ``Conv1D``).
        segment_rows: rows (along the block axis) of each consecutive segment; they sum to ``n_rows``.
        rows_per_block: block height within each segment.
        reason: what decided the role (``"rule '<pattern>'"``, ``"query"``, ``"key"``, ``"fused qkv"``,
            ``"bias"``, ``"default"``), for the partition summary.
    """

    role: str
    block_axis: int
    segment_rows: tuple[int, ...]
    rows_per_block: tuple[int, ...]
    reason: str = "default"

    @property
    def n_rows(self) -> int:
        return sum(self.segment_rows)

    @property
    def n_blocks(self) -> int:
        return sum(rows // height for rows, height in zip(self.segment_rows, self.rows_per_block))

    @property
    def weight_decay(self) -> bool:
        """Whether the parameter is decayed (``head`` and ``row`` only)."""
        return self.role in DECAYED_ROLES


def _single(role: str, rows: int, height: int = 1, axis: int = 0, reason: str = "default") -> BlockLayout:
    return BlockLayout(role, axis, (rows,), (height,), reason)


def check_head_config(heads: HeadConfig) -> None:
    """Raise ``ValueError`` when a head count or size is not a positive integer or the counts do not fit."""
    for label, value in (("n_heads", heads.n_heads), ("n_kv_heads", heads.n_kv_heads), ("head_dim", heads.head_dim)):
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"AdamMini: {label} must be a positive integer or None, got {value!r}.")
    if heads.n_kv_heads is not None and heads.n_heads is None:
        raise ValueError("AdamMini: n_kv_heads was given without n_heads; pass n_heads too.")
    if heads.n_heads is not None and heads.n_kv_heads is not None and heads.n_heads % heads.n_kv_heads:
        raise ValueError(
            f"AdamMini: n_heads ({heads.n_heads}) must be a multiple of n_kv_heads ({heads.n_kv_heads}); "
            "pass the model's num_attention_heads and num_key_value_heads."
        )


def check_rules(rules: Sequence[tuple[str, str]] | None) -> tuple[tuple[str, str], ...]:
    """The ``rules`` as a tuple of ``(glob pattern, role)`` pairs; ``ValueError`` for a malformed rule."""
    checked = []
    for rule in rules or ():
        if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
            raise ValueError(
                f"AdamMini: every rule must be a (glob pattern, role) pair such as ('*.norm.weight', 'tensor'), "
                f"got {rule!r}."
            )
        if rule[1] not in ROLES:
            raise ValueError(f"AdamMini: the role of rule {tuple(rule)!r} must be one of {ROLES}, got {rule[1]!r}.")
        checked.append((rule[0], rule[1]))
    return tuple(checked)


def name_token(name: str) -> str:
    """The component that names a weight: ``a.b.q_proj.weight`` -> ``q_proj``; ``attn.in_proj_weight`` -> ``in_proj``.

    Whole components only, so ``monkey.weight`` gives ``monkey`` (not a key) and ``network.0.weight`` gives ``0``.
    """
    parts = name.lower().split(".")
    if len(parts) >= 2 and parts[-1] == "weight":
        return parts[-2]
    if parts[-1].endswith("_weight"):
        return parts[-1][: -len("_weight")]
    return ""


def is_bias(name: str) -> bool:
    """``...bias`` or ``..._bias`` (``in_proj_bias``) as the last name component."""
    last = name.lower().rsplit(".", 1)[-1]
    return last == "bias" or last.endswith("_bias")


def module_block_axis(module: torch.nn.Module | None, shape: Sequence[int]) -> int:
    """1 for the 2-D weight of a Hugging Face ``Conv1D`` (stored ``[in, out]``), else 0."""
    return 1 if type(module).__name__ == "Conv1D" and len(shape) == 2 else 0


def module_heads(module: torch.nn.Module | None, heads: HeadConfig) -> HeadConfig:
    """The head configuration of ``module`` when it states its own (``nn.MultiheadAttention``), else ``heads``."""
    if isinstance(module, torch.nn.MultiheadAttention):
        return HeadConfig(module.num_heads, module.num_heads, module.head_dim)
    return heads


def _divide(name: str, rows: int, parts: int, what: str, hint: str) -> int:
    if rows % parts:
        raise ValueError(
            f"AdamMini: {name} has {rows} output rows, which do not split into {what}; {hint}"
        )
    return rows // parts


_CHECK_HEADS = "check n_heads, n_kv_heads and head_dim against the model's config, or build with AdamMini.from_model(model)."


def _attention_layout(name: str, kind: str, rows: int, axis: int, heads: HeadConfig, reason: str) -> BlockLayout:
    """The ``head`` layout of a query (``kind="query"``), key (``"key"``) or fused [q; k; v] (``"fused qkv"``) weight."""
    if heads.n_heads is None and heads.head_dim is None:
        raise ValueError(
            f"AdamMini: {name} is an attention {kind} weight but the number of heads is unknown; pass n_heads "
            f"(and n_kv_heads for grouped-query attention), build with AdamMini.from_model(model), or add a rule "
            f"such as ('{name}', 'row')."
        )
    if kind == "fused qkv":
        if heads.n_heads is None:
            raise ValueError(f"AdamMini: {name} is a fused [q; k; v] weight; pass n_heads to split it into heads.")
        n_q, n_kv = heads.n_heads, heads.kv_heads
        head_dim = heads.head_dim or _divide(
            name, rows, n_q + 2 * n_kv, f"n_heads + 2 * n_kv_heads = {n_q + 2 * n_kv} equal heads",
            "check n_heads and n_kv_heads; a Hugging Face Conv1D weight ([in, out]) needs AdamMini.from_model(model).",
        )
        if rows != (n_q + 2 * n_kv) * head_dim:
            raise ValueError(
                f"AdamMini: {name} has {rows} output rows, not (n_heads + 2 * n_kv_heads) * head_dim = "
                f"({n_q} + 2 * {n_kv}) * {head_dim}; {_CHECK_HEADS}"
            )
        q_rows, kv_rows = n_q * head_dim, n_kv * head_dim
        return BlockLayout("head", axis, (q_rows, kv_rows, kv_rows), (head_dim, head_dim, 1), reason)
    if heads.head_dim is not None:
        _divide(name, rows, heads.head_dim, f"heads of head_dim={heads.head_dim} rows", _CHECK_HEADS)
        return _single("head", rows, heads.head_dim, axis, reason)
    n = heads.kv_heads if kind == "key" else heads.n_heads
    label = "n_kv_heads" if kind == "key" else "n_heads"
    return _single("head", rows, _divide(name, rows, n, f"{label}={n} heads", _CHECK_HEADS), axis, reason)


def _layout_for_role(
    role: str, name: str, shape: Sequence[int], axis: int, heads: HeadConfig, reason: str
) -> BlockLayout:
    numel = 1
    for size in shape:
        numel *= size
    if role == "element":
        return _single("element", numel, reason=reason)
    if role == "tensor":
        return _single("tensor", 1, reason=reason)
    rows = shape[axis] if shape else 1
    if role == "row":
        return _single("row", rows, 1, axis, reason)
    token = name_token(name)
    kind = "key" if token in KEY_TOKENS else "fused qkv" if token in FUSED_QKV_TOKENS else "query"
    return _attention_layout(name, kind, rows, axis, heads, reason)


def partition_parameter(
    name: str,
    shape: Sequence[int],
    *,
    module: torch.nn.Module | None = None,
    heads: HeadConfig = HeadConfig(),
    rules: Sequence[tuple[str, str]] = (),
) -> BlockLayout:
    """The role and blocks of one parameter.

    Order of decision: the first ``rules`` pattern that matches ``name`` (a glob); then biases -> ``element``;
    query, key and fused [q; k; v] weights (by :func:`name_token`, 2 or more dims) -> ``head``; other
    parameters of 2 or more dims -> ``row``; the rest (0-D and 1-D) -> ``tensor``.

    Args:
        name: the parameter's qualified name, as in ``model.named_parameters()``.
        shape: the parameter's shape.
        module: the module that owns the parameter directly, when known: a Hugging Face ``Conv1D`` flips the
            block axis, an ``nn.MultiheadAttention`` gives its own head count.
        heads: the model's attention geometry (used by ``head`` layouts only).
        rules: ordered ``(glob pattern, role)`` overrides, tried before the built-in rules.

    Returns:
        The parameter's :class:`BlockLayout`.

    Raises:
        ValueError: a ``head`` layout that the head configuration cannot split evenly (the message says
            what to pass).

    Example:
        >>> layout = partition_parameter("layers.0.attn.k_proj.weight", (256, 512), heads=HeadConfig(8, 4))
        >>> layout.role, layout.n_blocks
        ('head', 4)
    """
    shape = tuple(shape)
    heads = module_heads(module, heads)
    axis = module_block_axis(module, shape)
    for pattern, role in rules:
        if fnmatch.fnmatchcase(name, pattern):
            return _layout_for_role(role, name, shape, axis, heads, reason=f"rule {pattern!r}")
    if is_bias(name):
        return _layout_for_role("element", name, shape, axis, heads, reason="bias")
    if len(shape) >= 2:
        token = name_token(name)
        for tokens, kind in ((QUERY_TOKENS, "query"), (KEY_TOKENS, "key"), (FUSED_QKV_TOKENS, "fused qkv")):
            if token in tokens:
                return _attention_layout(name, kind, shape[axis], axis, heads, reason=kind)
        return _layout_for_role("row", name, shape, axis, heads, reason="default")
    return _layout_for_role("tensor", name, shape, axis, heads, reason="default")


def shard_layout(layout: BlockLayout, name: str, start: int, stop: int) -> tuple[BlockLayout, int]:
    """The blocks of rows ``[start, stop)`` of a parameter (a shard along the block axis) and the index of its first.

    Rows count along the block axis as in :class:`BlockLayout` (elements for ``element`` blocks). A shard boundary
    must fall between blocks (``docs/adam_mini.md``, "Sharded parameters").

    Args:
        layout: the whole parameter's layout.
        name: the parameter's name, for the error message.
        start: the shard's first row.
        stop: one past its last row.

    Returns:
        The layout of the shard's rows (one empty segment for an empty shard) and the index, among the parameter's
        blocks, of the shard's first block.

    Raises:
        ValueError: ``start`` or ``stop`` falls inside a block.

    Example:
        >>> layout = partition_parameter("layers.0.attn.k_proj.weight", (256, 512), heads=HeadConfig(8, 4))
        >>> local, first = shard_layout(layout, "k_proj.weight", 128, 256)
        >>> local.n_blocks, first
        (2, 2)
    """
    segments, heights, first_block, offset = [], [], 0, 0
    for rows, height in zip(layout.segment_rows, layout.rows_per_block):
        low, high = max(start, offset), min(stop, offset + rows)
        for boundary in {low, high} if low < high else set():
            if (boundary - offset) % height:
                raise ValueError(
                    f"AdamMini: the sharding of {name} cuts a block of {height} rows (a head) at row {boundary}; "
                    "shard it so that every rank holds whole heads (a dim-0 size divisible by the number of ranks "
                    f"times {height}), or add a rule ('{name}', 'row')."
                )
        if low < high:
            segments.append(high - low)
            heights.append(height)
        first_block += (min(max(start, offset), offset + rows) - offset) // height
        offset += rows
    if not segments:
        segments, heights = [0], [1]
    return BlockLayout(layout.role, layout.block_axis, tuple(segments), tuple(heights), layout.reason), first_block


def summarize_partition(partition: dict[str, BlockLayout], max_names: int = 10) -> str:
    """One line: parameters and blocks per role, and the parameters that fell into ``tensor`` by default."""
    counts = {role: [0, 0] for role in ROLES}
    for layout in partition.values():
        counts[layout.role][0] += 1
        counts[layout.role][1] += layout.n_blocks
    text = f"AdamMini partition of {len(partition)} parameters: " + ", ".join(
        f"{role} {tensors} ({blocks} blocks)" for role, (tensors, blocks) in counts.items()
    )
    by_default = [name for name, layout in partition.items() if layout.role == "tensor" and layout.reason == "default"]
    if by_default:
        shown = ", ".join(by_default[:max_names])
        more = f" and {len(by_default) - max_names} more" if len(by_default) > max_names else ""
        text += f"; one block per tensor because nothing else matched (0-D/1-D, not a bias): {shown}{more}"
    return text


__all__ = [
    "DECAYED_ROLES",
    "ROLES",
    "BlockLayout",
    "HeadConfig",
    "check_head_config",
    "check_rules",
    "parameter_modules",
    "partition_parameter",
    "shard_layout",
    "summarize_partition",
]
