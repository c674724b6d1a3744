"""How fast is one optimizer step, and how much state does it keep? Ratios to AdamW from one run.

A Llama-style model of about 30M parameters is built locally (no download), every parameter gets a fixed
random gradient, and each optimizer takes warm-up steps and then timed steps on the same parameters. The
table gives the median step time, its ratio to ``torch.optim.AdamW`` (foreach) measured in the same
process (the optimizers step in turn, round after round), and the optimizer's state bytes per parameter. Rows marked "reference" force the pure-PyTorch ops
(``LIT_MICROOPT_BACKEND=reference``); the others use the compiled kernels where built.

Run:
    python benchmarks/optimizer_step.py                 # CPU, 2 threads
    python benchmarks/optimizer_step.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from lit_microopt import AdamMini, MicroAdam
from lit_microopt.ops.dispatch import BACKEND_VARIABLE, kernels_report
from lit_microopt.optim.memory import state_bytes_per_parameter

OptimizerFactory = Callable[[torch.nn.Module], torch.optim.Optimizer]

#: (label, factory, LIT_MICROOPT_BACKEND) for every optimizer in the table; the first is the ratios' baseline.
def _official_adam_mini(model: torch.nn.Module) -> torch.optim.Optimizer:
    from adam_mini import Adam_mini  # the reference implementation, a test-only dependency (adam-mini==1.1.1)

    config = model.config
    return Adam_mini(model.named_parameters(), lr=1e-4, dim=config.hidden_size, n_heads=config.num_attention_heads,
                     n_kv_heads=config.num_key_value_heads, verbose=False)


OPTIMIZERS: list[tuple[str, OptimizerFactory, str]] = [
    ("AdamW (foreach)", lambda model: torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True), "auto"),
    ("MicroAdam", lambda model: MicroAdam(model.named_parameters(), lr=1e-4), "auto"),
    ("MicroAdam, reference", lambda model: MicroAdam(model.named_parameters(), lr=1e-4), "reference"),
    ("adam-mini 1.1.1 (official)", _official_adam_mini, "auto"),
    ("AdamMini", lambda model: AdamMini.from_model(model, lr=1e-4), "auto"),
    ("AdamMini, reference", lambda model: AdamMini.from_model(model, lr=1e-4), "reference"),
    ("AdamMini state_dtype=bf16", lambda model: AdamMini.from_model(model, lr=1e-4, state_dtype=torch.bfloat16), "auto"),
]


def llama_model(hidden: int = 512, layers: int = 8, vocab: int = 8000) -> torch.nn.Module:
    """A Llama-shaped causal LM of about 30M parameters, built from a config (nothing is downloaded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def time_steps(
    model: torch.nn.Module, entries: list[tuple[str, OptimizerFactory, str]], gradients: list[torch.Tensor],
    warmup: int, steps: int,
) -> list[tuple[str, float, float]]:
    """(label, median seconds per ``step()``, state bytes per parameter) of every optimizer.

    The optimizers step in turn, round after round, on the same parameters: a load that comes and goes on a
    shared machine slows them all alike instead of one of them.
    """
    params = list(model.parameters())
    optimizers = [(label, factory(model), backend) for label, factory, backend in entries]
    times: dict[str, list[float]] = {label: [] for label, _, _ in entries}
    for index in range(warmup + steps):
        for label, optimizer, backend in optimizers:
            os.environ[BACKEND_VARIABLE] = backend
            for param, gradient in zip(params, gradients):
                param.grad = gradient.clone()  # MicroAdam uses p.grad as scratch: give each step a fresh copy
            if params[0].is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            optimizer.step()
            if params[0].is_cuda:
                torch.cuda.synchronize()
            if index >= warmup:
                times[label].append(time.perf_counter() - start)
    os.environ.pop(BACKEND_VARIABLE)
    return [(label, statistics.median(times[label]), state_bytes_per_parameter(optimizer))
            for label, optimizer, _ in optimizers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (the issue's figures use 2)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--only", nargs="*", help="labels to run besides the baseline (substring match)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = llama_model().to(args.device)
    numel = sum(p.numel() for p in model.parameters())
    gradients = [torch.randn_like(p) * 1e-3 for p in model.parameters()]

    entries = [entry for index, entry in enumerate(OPTIMIZERS)
               if index == 0 or not args.only or any(part in entry[0] for part in args.only)]
    rows = time_steps(model, entries, gradients, args.warmup, args.steps)
    baseline = rows[0][1]
    print(kernels_report())
    print(f"optimizer step, {numel / 1e6:.1f}M parameters, device={args.device}, threads={torch.get_num_threads()}")
    print(f"| optimizer | median step (ms) | ratio to AdamW | state bytes/param |")
    print(f"| --- | ---: | ---: | ---: |")
    for label, seconds, bytes_per_param in rows:
        print(f"| {label} | {seconds * 1e3:.1f} | {seconds / baseline:.2f}x | {bytes_per_param:.4f} |")


if __name__ == "__main__":
    main()
