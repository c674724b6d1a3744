"""How much optimizer state does each rank keep with sharded state (ZeRO stage 1), against the whole state?

Measured: two CPU processes (gloo) each build the quickstart's 0.57M-parameter Llama and an optimizer, take one
step on the same batch (as after DDP's all-reduce), with and without ``OptimizerStateSharding``, and count their
optimizer state with ``optimizer_state_bytes``.

Computed at scale: Llama-2-7B on the meta device (nothing allocated); each optimizer's state is created as its first
step would (``initialize_state``), and the parameters are shared out with the strategy's own assignment
(``assign_owners``, whole parameters, largest first) for 2 to 64 ranks. A rank's share cannot go below its largest
parameter, so it stays above ``1 / N`` once ranks outnumber the large tensors.

Run:
    python benchmarks/sharded_state_memory.py
"""

from __future__ import annotations

import argparse
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lit_microopt import AdamMini, MicroAdam
from lit_microopt.optim.memory import initialize_state, optimizer_state_bytes, tensors_bytes
from lit_microopt.strategies import OptimizerStateSharding, assign_owners

BASE_MODEL = "lit_microopt/models/arithmetic_base"
WORLD_SIZES = (2, 4, 8, 16, 64)
GIB = 2**30


def build(kind: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if kind == "MicroAdam":
        return MicroAdam(model.named_parameters(), lr=1e-4, quant_bucket_size=100_000)
    if kind == "Adam-mini":
        return AdamMini.from_model(model, lr=1e-4)
    return torch.optim.AdamW(model.parameters(), lr=1e-4)


def measure(rank: int, world_size: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    for kind in ("MicroAdam", "Adam-mini", "AdamW"):
        for sharded in (False, True):
            model = AutoModelForCausalLM.from_pretrained(BASE_MODEL)
            optimizer = build(kind, model)
            if sharded:
                OptimizerStateSharding(optimizer).attach()
            tokens = torch.randint(0, 100, (8, 16), generator=torch.Generator().manual_seed(0))
            model(input_ids=tokens, labels=tokens).loss.backward()
            optimizer.step()
            results[(kind, sharded, rank)] = optimizer_state_bytes(optimizer)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def at_scale() -> None:
    config = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    print("\nLlama-2-7B (bf16 parameters, computed on the meta device): the largest rank's state, GiB, and its share "
          "of the whole\n")
    print("| optimizer | whole | " + " | ".join(f"N={n}" for n in WORLD_SIZES) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in WORLD_SIZES) + " |")
    for kind in ("MicroAdam", "Adam-mini", "AdamW"):
        optimizer = build(kind, model)
        initialize_state(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        sizes = [tensors_bytes(optimizer.state[p].values()) if p in optimizer.state else 0 for p in params]
        whole = sum(sizes)
        cells = []
        for world_size in WORLD_SIZES:
            owners = assign_owners([p.numel() for p in params], world_size)
            loads = [sum(size for size, owner in zip(sizes, owners) if owner == rank) for rank in range(world_size)]
            largest = max(loads)
            cells.append(f"{largest / GIB:.2f} ({largest / whole:.3f})")
        print(f"| {kind} | {whole / GIB:.2f} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-scale", action="store_true", help="only the measured two-process table")
    arguments = parser.parse_args(argv)
    results = mp.Manager().dict()
    mp.spawn(measure, args=(2, free_port(), results), nprocs=2, join=True)
    print("The quickstart's Llama (0.57M parameters), 2 gloo processes, after one step: bytes of optimizer state\n")
    print("| optimizer | whole, every rank | sharded, rank 0 | sharded, rank 1 | rank 0 / whole | rank 1 / whole |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind in ("MicroAdam", "Adam-mini", "AdamW"):
        whole = results[(kind, False, 0)]
        shares = [results[(kind, True, rank)] for rank in (0, 1)]
        print(f"| {kind} | {whole:,} | {shares[0]:,} | {shares[1]:,} | {shares[0] / whole:.3f} | "
              f"{shares[1] / whole:.3f} |")
    if not arguments.skip_scale:
        at_scale()


if __name__ == "__main__":
    main()
