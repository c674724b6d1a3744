"""How fast is one optimizer step at each model size, and how many op calls does it make? Ratios to AdamW.

Llama-shaped models of 0.6M to 100M parameters are built locally (no download), every parameter gets a fixed
random gradient, and each optimizer takes warm-up steps and then timed steps on the same parameters. For every
size the table gives the ratio of the median step time to ``torch.optim.AdamW`` (foreach) measured in the same
process (the optimizers step in turn, round after round, so that a passing load slows them all alike). A second
table counts what one step dispatches: calls of the package's own ops (``lit_microopt::*``), every PyTorch op
call, and on CUDA the kernels launched. Rows marked "reference" force the pure-PyTorch ops
(``LIT_MICROOPT_BACKEND=reference``); the others use the compiled kernels where built.

Run:
    python benchmarks/optimizer_step.py                          # CPU, 2 threads, every size
    python benchmarks/optimizer_step.py --sizes 0.6M 27M         # some sizes
    python benchmarks/optimizer_step.py --device cuda            # on a GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

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


#: Model sizes of the table: label -> (hidden size, layers); a vocabulary of 4096 and 9 tensors per layer.
SIZES: dict[str, tuple[int, int]] = {
    "0.6M": (64, 2), "1.8M": (128, 4), "6.5M": (256, 6), "28M": (512, 8), "103M": (1024, 8),
}


def llama_model(hidden: int = 512, layers: int = 8, vocab: int = 4096) -> torch.nn.Module:
    """A Llama-shaped causal LM (28M parameters at the defaults), built from a config (nothing is downloaded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


class _OpCounter(TorchDispatchMode):
    """Counts the ops that reach the dispatcher, by namespace (``aten``, ``lit_microopt``)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.namespace] += 1
        return func(*args, **(kwargs or {}))


def count_calls(optimizer: torch.optim.Optimizer, set_gradients: Callable[[], None]) -> tuple[int, int, int | None]:
    """(``lit_microopt`` op calls, all op calls, CUDA kernel launches or ``None`` on CPU) of one ``step()``."""
    set_gradients()
    with _OpCounter() as counter:
        optimizer.step()
    launches = None
    if torch.cuda.is_available() and any(p.is_cuda for g in optimizer.param_groups for p in g["params"]):
        set_gradients()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
            optimizer.step()
            torch.cuda.synchronize()
        launches = sum(1 for event in profile.events() if event.device_type == torch.autograd.DeviceType.CUDA)
    return counter.counts["lit_microopt"], sum(counter.counts.values()), launches


def time_steps(
    model: torch.nn.Module, entries: list[tuple[str, OptimizerFactory, str]], gradients: list[torch.Tensor],
    warmup: int, steps: int,
) -> list[tuple[str, float, float, tuple[int, int, int | None]]]:
    """(label, median seconds per ``step()``, state bytes per parameter, :func:`count_calls`) of every optimizer.

    The optimizers step in turn, round after round, on the same parameters: a load that comes and goes on a
    shared machine slows them all alike instead of one of them.
    """
    params = list(model.parameters())

    def set_gradients() -> None:
        for param, gradient in zip(params, gradients):
            param.grad = gradient.clone()  # MicroAdam uses p.grad as scratch: give each step a fresh copy

    optimizers = [(label, factory(model), backend) for label, factory, backend in entries]
    times: dict[str, list[float]] = {label: [] for label, _, _ in entries}
    for index in range(warmup + steps):
        for label, optimizer, backend in optimizers:
            os.environ[BACKEND_VARIABLE] = backend
            set_gradients()
            if params[0].is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            optimizer.step()
            if params[0].is_cuda:
                torch.cuda.synchronize()
            if index >= warmup:
                times[label].append(time.perf_counter() - start)
    rows = []
    for label, optimizer, backend in optimizers:
        os.environ[BACKEND_VARIABLE] = backend
        calls = count_calls(optimizer, set_gradients)
        rows.append((label, statistics.median(times[label]), state_bytes_per_parameter(optimizer), calls))
    os.environ.pop(BACKEND_VARIABLE)
    return rows


def _calls_cell(calls: tuple[int, int, int | None]) -> str:
    own, every, launches = calls
    return f"{own} / {every}" + (f" / {launches}" if launches is not None else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (the figures use 2)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES), help="model sizes to run")
    parser.add_argument("--only", nargs="*", help="labels to run besides the baseline (substring match)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    entries = [entry for index, entry in enumerate(OPTIMIZERS)
               if index == 0 or not args.only or any(part in entry[0] for part in args.only)]
    columns = []  # (size label, parameters, tensors, rows)
    for size in args.sizes:
        torch.manual_seed(0)
        hidden, layers = SIZES[size]
        model = llama_model(hidden, layers).to(args.device)
        params = list(model.parameters())
        gradients = [torch.randn_like(p) * 1e-3 for p in params]
        rows = time_steps(model, entries, gradients, args.warmup, args.steps)
        columns.append((size, sum(p.numel() for p in params), len(params), rows))
        del model, gradients

    print(kernels_report())
    print(f"optimizer step, device={args.device}, threads={torch.get_num_threads()}, median of {args.steps} steps")
    header = " | ".join(f"{numel / 1e6:.2f}M ({tensors})" for _, numel, tensors, _ in columns)
    rule = " | ".join("---:" for _ in columns)
    print(f"\n| ratio to AdamW; parameters (tensors) | {header} |\n| --- | {rule} |")
    for index, (label, _, _) in enumerate(entries):
        cells = " | ".join(f"{rows[index][1] / rows[0][1]:.2f}x" for _, _, _, rows in columns)
        print(f"| {label} | {cells} |")
    print(f"| AdamW step (ms) | {' | '.join(f'{rows[0][1] * 1e3:.1f}' for _, _, _, rows in columns)} |")
    what = "lit_microopt ops / all ops" + (" / CUDA kernels" if args.device.startswith("cuda") else "")
    print(f"\n| calls per step: {what} | {header} |\n| --- | {rule} |")
    for index, (label, _, _) in enumerate(entries):
        print(f"| {label} | {' | '.join(_calls_cell(rows[index][3]) for _, _, _, rows in columns)} |")
    largest = columns[-1]
    print(f"\nstate bytes per parameter at {largest[1] / 1e6:.2f}M: "
          + ", ".join(f"{label} {row[2]:.4f}" for (label, _, _), row in zip(entries, largest[3])))


if __name__ == "__main__":
    main()
