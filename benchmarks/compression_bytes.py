"""How many bytes does the Top-K compression hook send, against DDP's dense all-reduce?

Two CPU processes (gloo) train a 3.9M-parameter Llama for a few steps under DDP, once with the plain all-reduce
and once with ``topk_compression_hook`` at each density asked for. The hook counts, on each rank, the bytes it hands
to the all-gather (int16 indices and bfloat16 values, nothing else travels) and the bytes of the gradient buckets
that a dense all-reduce would have taken, on the same steps (the first step, always dense, is left out).

A ring all-reduce makes every rank send ``2 (N - 1) / N`` times the gradient's bytes whatever the number of ranks
``N``; a ring all-gather makes it send ``(N - 1)`` times its own contribution. The second table turns the measured
payload into those bytes on the wire: the saving shrinks as ranks are added.

Run:
    python benchmarks/compression_bytes.py [--densities 0.01 0.05] [--steps 4]
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from transformers import LlamaConfig, LlamaForCausalLM

from lit_microopt.strategies import TopKCompression, TopKCompressionState, topk_compression_hook

CONFIG = dict(vocab_size=2000, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False)


def train(rank: int, world_size: int, port: int, density: float | None, steps: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = DistributedDataParallel(LlamaForCausalLM(LlamaConfig(**CONFIG)))
    state = None
    if density is not None:
        state = TopKCompressionState(TopKCompression(density=density))
        model.register_comm_hook(state, topk_compression_hook)
    generator = torch.Generator().manual_seed(rank)
    seconds = 0.0
    for step in range(steps):
        tokens = torch.randint(0, CONFIG["vocab_size"], (4, 32), generator=generator)
        start = time.perf_counter()
        model(input_ids=tokens, labels=tokens).loss.backward()
        if step > 0:  # the first step is dense in both runs
            seconds += time.perf_counter() - start
        model.zero_grad()
    if rank == 0:
        parameters = sum(p.numel() for p in model.parameters())
        results[density] = dict(
            parameters=parameters, seconds=seconds / (steps - 1),
            sent=state.bytes_sent / (steps - 1) if state else 4 * parameters,
            dense=state.dense_bytes / (steps - 1) if state else 4 * parameters,
        )
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.01, 0.05])
    parser.add_argument("--steps", type=int, default=4, help="backward passes per run (the first is dense)")
    arguments = parser.parse_args(argv)
    if arguments.steps < 2:
        parser.error("--steps must be at least 2: the first step is always dense.")
    results = mp.Manager().dict()
    for density in [None, *arguments.densities]:
        mp.spawn(train, args=(2, free_port(), density, arguments.steps, results), nprocs=2, join=True)
    dense = results[None]
    print(f"{dense['parameters'] / 1e6:.1f}M float32 parameters, 2 gloo processes, {arguments.steps - 1} steps "
          "after the first\n")
    print("| gradient exchange | bytes handed to the collective per rank and step | ratio to all-reduce | "
          "backward + exchange, s (CPU) |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| dense all-reduce | {dense['dense']:,.0f} | 1.000 | {dense['seconds']:.3f} |")
    for density in arguments.densities:
        result = results[density]
        print(f"| Top-K, density {density:g} (indices + values) | {result['sent']:,.0f} | "
              f"{result['sent'] / result['dense']:.4f} | {result['seconds']:.3f} |")
    print("\nBytes each rank puts on the wire per step with ring algorithms, over a ring all-reduce's, by ranks N:\n")
    print("| density | " + " | ".join(f"N={n}" for n in (2, 4, 8, 16, 32)) + " |")
    print("| --- | " + " | ".join("---:" for _ in range(5)) + " |")
    for density in arguments.densities:
        payload = results[density]["sent"] / results[density]["dense"]
        ratios = [(n - 1) * payload / (2 * (n - 1) / n) for n in (2, 4, 8, 16, 32)]
        print(f"| {density:g} | " + " | ".join(f"{ratio:.3f}" for ratio in ratios) + " |")


if __name__ == "__main__":
    main()
