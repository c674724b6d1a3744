"""GPU step time and memory of the optimizers on a ~1.1B-parameter Llama-shaped set of bfloat16 tensors.

Parameters and gradients are bfloat16 on the GPU (a TinyLlama-1.1B shape: hidden 2048, 22 layers, 32 heads,
4 key-value heads, vocabulary 32000). Each optimizer takes warm-up steps, then timed steps (CUDA events,
median); its state bytes and the peak memory the step adds (``torch.cuda.max_memory_allocated``) are
reported, with ratios to PyTorch's fused AdamW measured in the same run.

Run:
    python benchmarks/gpu_step.py [--layers 22]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from lit_microopt import AdamMini, MicroAdam
from lit_microopt.ops import kernels_report
from lit_microopt.optim.memory import optimizer_state_bytes


def llama_parameters(layers: int, hidden: int = 2048, intermediate: int = 5632, vocab: int = 32000):
    """(name, bfloat16 CUDA tensor) pairs shaped like a Llama model, random values."""
    heads, kv_heads = 32, 4
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
    return [(name, torch.nn.Parameter(torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 0.02))
            for name, shape in shapes.items()], dict(n_heads=heads, n_kv_heads=kv_heads, head_dim=head_dim)


def measure(build, named, gradients, warmup: int, steps: int):
    params = [p for _, p in named]
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    optimizer = build(named)
    times = []
    for index in range(warmup + steps):
        for param, gradient in zip(params, gradients):
            param.grad = gradient.clone()  # MicroAdam uses p.grad as scratch
        if index == warmup:
            torch.cuda.reset_peak_memory_stats()
            peak_base = torch.cuda.memory_allocated()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        optimizer.step()
        end.record()
        end.synchronize()
        if index >= warmup:
            times.append(start.elapsed_time(end))
    transient = torch.cuda.max_memory_allocated() - peak_base
    state = optimizer_state_bytes(optimizer)
    for param in params:
        param.grad = None
    del optimizer
    torch.cuda.synchronize()
    return statistics.median(times), state, transient, torch.cuda.memory_allocated() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    named, heads = llama_parameters(args.layers)
    numel = sum(p.numel() for _, p in named)
    gradients = [torch.randn_like(p) * 1e-3 for _, p in named]
    rows = {
        "AdamW (fused)": lambda named: torch.optim.AdamW([p for _, p in named], lr=1e-4, fused=True),
        "MicroAdam": lambda named: MicroAdam(named, lr=1e-4, check_finite=False),
        "AdamMini": lambda named: AdamMini(named, lr=1e-4, check_finite=False, **heads),
    }
    print(kernels_report())
    print(f"{torch.cuda.get_device_name()}, {numel / 1e9:.2f}B bfloat16 parameters")
    print("| optimizer | median step (ms) | ratio to fused AdamW | state GiB | state bytes/param | step transient GiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    baseline = None
    for label, build in rows.items():
        milliseconds, state, transient, _ = measure(build, named, gradients, args.warmup, args.steps)
        baseline = baseline or milliseconds
        print(f"| {label} | {milliseconds:.2f} | {milliseconds / baseline:.2f}x | {state / 2**30:.2f} | "
              f"{state / numel:.3f} | {transient / 2**30:.2f} |")


if __name__ == "__main__":
    main()
