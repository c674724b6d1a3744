"""GPU step time and memory of the optimizers on Llama-shaped sets of bfloat16 tensors of 1.1B and 6.7B parameters.

Parameters and gradients are bfloat16 on the GPU, shaped like TinyLlama-1.1B ("1b": hidden 2048, 22 layers,
32 heads, 4 key-value heads) and Llama-2-7B ("7b": hidden 4096, 32 layers, 32 heads), vocabulary 32000. Each
optimizer takes warm-up steps, then timed steps (between device synchronisations, median); its state bytes and
the peak memory the step adds above parameters, gradients and state (``torch.cuda.max_memory_allocated``) are
reported, with ratios to PyTorch's fused AdamW measured in the same run. Gradients are drawn afresh before
every step (outside the timing): MicroAdam uses ``p.grad`` as its working buffer.

Rows: fused AdamW (the baseline), MicroAdam (m=10, density 0.01, the paper's ``quant_bucket_size=100_000``)
and AdamMini from this package, and where installed: bitsandbytes' 8-bit AdamW, the official MicroAdam
(``ista-daslab-optimizers``, same settings) and the official Adam-mini (``adam-mini``). A model whose
parameters, gradients and AdamW state do not fit in the free GPU memory is skipped with a note; an optimizer
that runs out of memory gets "out of memory" in its row.

Run:
    python benchmarks/gpu_step.py [--models 1b 7b] [--steps 10]

``--device cpu`` runs the same code on the CPU: slow at these sizes (``tests/benchmarks`` use a tiny shape).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import torch

from lit_microopt import AdamMini, MicroAdam
from lit_microopt.ops import kernels_report
from lit_microopt.optim.memory import optimizer_state_bytes

#: Llama shapes: hidden, intermediate, layers, heads, key-value heads (vocabulary 32000).
SHAPES = {
    "1b": dict(hidden=2048, intermediate=5632, layers=22, heads=32, kv_heads=4),
    "7b": dict(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32),
}
#: Bytes per parameter that must fit beside a step: bf16 parameters, gradients and fused AdamW's bf16 state.
RESIDENT_BYTES_PER_PARAMETER = 2 + 2 + 4

NamedParameters = list[tuple[str, torch.nn.Parameter]]


def llama_parameters(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, device: str,
                     vocab: int = 32000) -> NamedParameters:
    """(name, bfloat16 tensor) pairs shaped like a Llama model, random values."""
    head_dim = hidden // heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    for layer in range(layers):
        prefix = f"model.layers.{layer}."
        shapes.update({
            prefix + "self_attn.q_proj.weight": (hidden, hidden),
            prefix + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            prefix + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            prefix + "self_attn.o_proj.weight": (hidden, hidden),
            prefix + "mlp.gate_proj.weight": (intermediate, hidden),
            prefix + "mlp.up_proj.weight": (intermediate, hidden),
            prefix + "mlp.down_proj.weight": (hidden, intermediate),
            prefix + "input_layernorm.weight": (hidden,),
            prefix + "post_attention_layernorm.weight": (hidden,),
        })
    return [(name, torch.nn.Parameter(torch.randn(shape, device=device, dtype=torch.bfloat16) * 0.02))
            for name, shape in shapes.items()]


def optimizer_rows(shape: dict[str, int]) -> dict[str, Callable[[NamedParameters], torch.optim.Optimizer]]:
    """Label -> builder of every optimizer to time; official implementations and bitsandbytes only where installed."""
    heads = dict(n_heads=shape["heads"], n_kv_heads=shape["kv_heads"], head_dim=shape["hidden"] // shape["heads"])
    fused = torch.cuda.is_available()
    rows = {
        "AdamW (fused)" if fused else "AdamW (foreach)":
            lambda named: torch.optim.AdamW([p for _, p in named], lr=1e-4, fused=fused or None),
        "MicroAdam": lambda named: MicroAdam(named, lr=1e-4, quant_bucket_size=100_000, check_finite=False),
        "AdamMini": lambda named: AdamMini(named, lr=1e-4, check_finite=False, **heads),
    }
    try:
        logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # an unused 4-bit CPU kernel
        from bitsandbytes.optim import AdamW8bit

        rows["AdamW 8-bit (bitsandbytes)"] = lambda named: AdamW8bit([p for _, p in named], lr=1e-4, weight_decay=0.0)
    except ImportError:
        pass
    if fused:  # both official implementations are CUDA-only
        try:
            from ista_daslab_optimizers import MicroAdam as OfficialMicroAdam

            rows["MicroAdam, official (ista-daslab-optimizers)"] = lambda named: OfficialMicroAdam(
                [p for _, p in named], m=10, lr=1e-4, quant_block_size=100_000, k_init=0.01)
        except ImportError:
            pass
    try:
        from adam_mini import Adam_mini

        rows["Adam-mini, official (adam-mini)"] = lambda named: Adam_mini(
            named, lr=1e-4, dim=shape["hidden"], n_heads=shape["heads"], n_kv_heads=shape["kv_heads"], verbose=False)
    except ImportError:
        pass
    return rows


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(build, named: NamedParameters, device: str, warmup: int, steps: int) -> tuple[float, int, int]:
    """Median step time (ms), state bytes and the step's transient peak (bytes; 0 off CUDA) of one optimizer."""
    params = [p for _, p in named]
    generator = torch.Generator(device=device).manual_seed(0)
    optimizer = build(named)
    times, transient = [], 0
    try:
        for index in range(warmup + steps):
            for param in params:
                param.grad = torch.randn(param.shape, generator=generator, device=device, dtype=param.dtype).mul_(1e-3)
            _synchronize(device)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                resident = torch.cuda.memory_allocated()
            start = time.perf_counter()
            optimizer.step()
            _synchronize(device)
            if index >= warmup:
                times.append((time.perf_counter() - start) * 1000)
                if device == "cuda":
                    transient = max(transient, torch.cuda.max_memory_allocated() - resident)
        return statistics.median(times), optimizer_state_bytes(optimizer), transient
    finally:
        for param in params:
            param.grad = None
        del optimizer
        if device == "cuda":
            torch.cuda.empty_cache()


def run_model(name: str, shape: dict[str, int], device: str, warmup: int, steps: int) -> None:
    """Print the table of one model shape (or why it was skipped)."""
    numel = _parameter_count(shape)
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        needed = numel * RESIDENT_BYTES_PER_PARAMETER
        if needed > free:
            print(f"\n{name}: {numel / 1e9:.2f}B parameters skipped: parameters, gradients and AdamW's state need "
                  f"about {needed / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free on {torch.cuda.get_device_name()}.")
            return
    named = llama_parameters(**shape, device=device)
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"\n{name}: {numel:,} bfloat16 parameters on {where}")
    print("| optimizer | median step (ms) | ratio to AdamW | state GiB | state bytes/param | step transient GiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    baseline = None
    for label, build in optimizer_rows(shape).items():
        try:
            milliseconds, state, transient = measure(build, named, device, warmup, steps)
        except torch.cuda.OutOfMemoryError:
            print(f"| {label} | out of memory | - | - | - | - |")
            continue
        baseline = baseline or milliseconds
        print(f"| {label} | {milliseconds:.2f} | {milliseconds / baseline:.2f}x | {state / 2**30:.2f} | "
              f"{state / numel:.3f} | {transient / 2**30:.2f} |", flush=True)
    del named


def _parameter_count(shape: dict[str, int], vocab: int = 32000) -> int:
    hidden, intermediate = shape["hidden"], shape["intermediate"]
    kv = shape["kv_heads"] * (hidden // shape["heads"])
    layer = 2 * hidden * hidden + 2 * kv * hidden + 3 * hidden * intermediate + 2 * hidden
    return shape["layers"] * layer + 2 * vocab * hidden + hidden


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--layers", type=int, default=None, help="override the layer count (a smaller check)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU is visible; run on a GPU machine, or pass --device cpu for a tiny check.")
    if args.layers is not None and args.layers < 1:
        parser.error(f"--layers must be at least 1, got {args.layers}.")
    print(kernels_report())
    for name in args.models:
        shape = dict(SHAPES[name])
        if args.layers is not None:
            shape["layers"] = args.layers
        run_model(name, shape, args.device, args.warmup, args.steps)


if __name__ == "__main__":
    main()
