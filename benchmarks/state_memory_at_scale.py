"""How much optimizer state do Llama-2 7B and 13B need? The optimizers' real state layouts, on the meta device.

Each model is built from its Hugging Face ``LlamaConfig`` on the meta device (no download, nothing allocated:
a tensor there has a shape and a dtype but no storage). Each optimizer is constructed over its parameters and
its state is created as its first step would create it (``lit_microopt.optim.memory.initialize_state``), then
counted by ``optimizer_state_bytes``: every state tensor, step counters and quantization scales included.

Assumptions, those of the papers' figures:

- every parameter is trained, the input embedding and the (untied) output layer included: 6,738,415,616
  parameters for Llama-2-7B, 13,015,864,320 for 13B;
- "AdamW, bf16 states" is ``torch.optim.AdamW`` over bfloat16 parameters (PyTorch keeps the moments in the
  parameters' dtype); "fp32 states" over float32 parameters;
- 8-bit AdamW is bitsandbytes' ``AdamW8bit``, the paper's "Adam-8b" (blocks of 256 with one float32 scale
  each, and a 256-entry code map per moment; tensors under 4096 elements stay in float32). The MicroAdam
  paper counts one byte per moment and element, the 8-bit codes alone: that figure is printed as "codes only";
- MicroAdam with density 0.01, Top-K blocks of 8192 and the paper's ``quant_bucket_size=100_000``
  (the package's default of 64 is shown too);
- Adam-mini with the package's partition (one ``v`` per head for queries and keys, per row elsewhere).

GiB are 2**30 bytes, GB 10**9. The MicroAdam paper's "GB" are GiB (its AdamW figure, 25.10, is
4 bytes x 6.74e9 / 2**30); the Adam-mini paper's are 10**9 bytes.

Run:
    python benchmarks/state_memory_at_scale.py [--models 7B 13B]
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lit_microopt import AdamMini, MicroAdam
from lit_microopt.optim.memory import initialize_state, optimizer_state_bytes, tensors_bytes

#: Llama-2's published shapes (vocabulary 32000, untied output layer, multi-head attention).
LLAMA2_SHAPES = {
    "7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
    "13B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40),
}

GIB = 2**30


def meta_llama2(size: str, dtype: torch.dtype) -> LlamaForCausalLM:
    """Llama-2 ``size`` ("7B" or "13B") with ``dtype`` parameters on the meta device (nothing allocated)."""
    if size not in LLAMA2_SHAPES:
        raise ValueError(f"unknown Llama-2 size {size!r}; choose one of {', '.join(LLAMA2_SHAPES)}.")
    shape = LLAMA2_SHAPES[size]
    config = LlamaConfig(vocab_size=32000, num_key_value_heads=shape["num_attention_heads"],
                         tie_word_embeddings=False, **shape)
    with torch.device("meta"):
        return LlamaForCausalLM(config).to(dtype)


def _bitsandbytes_adamw8bit(model: torch.nn.Module) -> torch.optim.Optimizer:
    # At import, bitsandbytes warns that an optional 4-bit CPU kernel package is missing: not used here.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    from bitsandbytes.optim import AdamW8bit  # a test dependency: pip install bitsandbytes

    return AdamW8bit(model.parameters())


@dataclass(frozen=True)
class StateLayout:
    """One row of the table: an optimizer, the dtype of the parameters it sees, and the published figure."""

    label: str
    dtype: torch.dtype
    build: Callable[[torch.nn.Module], torch.optim.Optimizer]
    #: (value, unit, source) of the paper's Llama-2-7B figure, where one exists.
    published_7b: tuple[float, str, str] | None = None
    #: State keys holding quantized codes, for the "codes only" count of 8-bit optimizers.
    code_keys: tuple[str, ...] = ()


STATE_LAYOUTS = [
    StateLayout("AdamW, fp32 states", torch.float32, lambda model: torch.optim.AdamW(model.parameters())),
    StateLayout("AdamW, bf16 states", torch.bfloat16, lambda model: torch.optim.AdamW(model.parameters()),
                (25.10, "GiB", "MicroAdam paper")),
    StateLayout("8-bit AdamW (bitsandbytes)", torch.bfloat16, _bitsandbytes_adamw8bit,
                (12.55, "GiB", "MicroAdam paper, codes only"), code_keys=("state1", "state2")),
    StateLayout("MicroAdam m=10, q=100000", torch.bfloat16,
                lambda model: MicroAdam(model.named_parameters(), m=10, quant_bucket_size=100_000),
                (5.65, "GiB", "MicroAdam paper")),
    StateLayout("MicroAdam m=20, q=100000", torch.bfloat16,
                lambda model: MicroAdam(model.named_parameters(), m=20, quant_bucket_size=100_000)),
    StateLayout("MicroAdam m=10, q=64 (defaults)", torch.bfloat16,
                lambda model: MicroAdam(model.named_parameters(), m=10)),
    StateLayout("Adam-mini, fp32 states", torch.float32, lambda model: AdamMini.from_model(model),
                (26.96, "GB", "Adam-mini paper")),
    StateLayout("Adam-mini, bf16 states", torch.bfloat16, lambda model: AdamMini.from_model(model)),
]


@dataclass(frozen=True)
class StateSize:
    """What :func:`measure_state` found for one optimizer on one model."""

    parameters: int
    state_bytes: int
    #: Bytes of the state under the layout's ``code_keys`` (8-bit codes), 0 when it has none.
    code_bytes: int

    @property
    def bytes_per_parameter(self) -> float:
        return self.state_bytes / self.parameters


def measure_state(size: str, layout: StateLayout) -> StateSize:
    """The state of ``layout``'s optimizer over Llama-2 ``size``, created on the meta device and counted.

    Example:
        >>> found = measure_state("7B", STATE_LAYOUTS[3])  # MicroAdam m=10, q=100000
        >>> round(found.state_bytes / GIB, 2)
        5.65
    """
    model = meta_llama2(size, layout.dtype)
    optimizer = layout.build(model)
    initialize_state(optimizer)
    parameters = sum(param.numel() for param in model.parameters())
    codes = tensors_bytes(state[key] for state in optimizer.state.values() for key in layout.code_keys if key in state)
    return StateSize(parameters, optimizer_state_bytes(optimizer), codes)


def _published(layout: StateLayout) -> str:
    if layout.published_7b is None:
        return "-"
    value, unit, source = layout.published_7b
    return f"{value:.2f} {unit} ({source})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(LLAMA2_SHAPES), choices=list(LLAMA2_SHAPES))
    args = parser.parse_args(argv)

    sizes: dict[str, dict[str, StateSize | None]] = {model: {} for model in args.models}
    for model in args.models:
        for layout in STATE_LAYOUTS:
            try:
                sizes[model][layout.label] = measure_state(model, layout)
            except ImportError:
                sizes[model][layout.label] = None  # bitsandbytes missing
    counts = {model: next(s for s in sizes[model].values() if s is not None).parameters for model in args.models}
    print("Optimizer state of Llama-2 on the meta device ("
          + ", ".join(f"{model}: {counts[model]:,} parameters" for model in args.models) + ")\n")
    header = "| optimizer | " + " | ".join(f"{model} GiB | {model} GB" for model in args.models)
    header += f" | bytes/param ({args.models[0]}) | published (7B) |"
    print(header)
    print("| --- | " + " | ".join("---: | ---:" for _ in args.models) + " | ---: | --- |")
    for layout in STATE_LAYOUTS:
        cells = []
        per_parameter = "-"
        for model in args.models:
            found = sizes[model][layout.label]
            if found is None:
                cells.append("not installed (pip install bitsandbytes) | -")
                continue
            gib = f"{found.state_bytes / GIB:.2f}"
            if found.code_bytes:
                gib += f" (codes only {found.code_bytes / GIB:.2f})"
            cells.append(f"{gib} | {found.state_bytes / 1e9:.2f}")
            if model == args.models[0]:
                per_parameter = f"{found.bytes_per_parameter:.4f}"
        print(f"| {layout.label} | " + " | ".join(cells) + f" | {per_parameter} | {_published(layout)} |")


if __name__ == "__main__":
    main()
