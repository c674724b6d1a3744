"""Fine-tune a small model with MicroAdam and compare it with AdamW: loss and optimizer-state memory.

MicroAdam is made for fine-tuning, so a model is first pre-trained a little with AdamW on one task, then
fine-tuned on a related task twice from the same starting point: with AdamW and with MicroAdam. The script
prints both loss curves and the bytes of optimizer state each keeps. It runs on the CPU in seconds.

Run:
    python examples/quickstart.py
"""

from __future__ import annotations

import copy

import torch

from lit_microopt import MicroAdam
from lit_microopt.optim.memory import optimizer_state_bytes, state_bytes_per_parameter


def make_task(seed: int):
    """A teacher network and a shifted copy of its targets: pre-training and fine-tuning data."""
    torch.manual_seed(seed)
    teacher = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 16))
    shift = torch.nn.Linear(64, 16)

    def batch(generator: torch.Generator, fine_tune: bool) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.randn(128, 64, generator=generator)
        with torch.no_grad():
            targets = teacher(inputs) + (0.3 * shift(inputs) if fine_tune else 0.0)
        return inputs, targets

    return batch


def train(model, optimizer, batch, steps: int, fine_tune: bool, seed: int) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        inputs, targets = batch(generator, fine_tune)
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    batch = make_task(seed=0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 512), torch.nn.Tanh(), torch.nn.Linear(512, 512), torch.nn.Tanh(),
        torch.nn.Linear(512, 16),
    )
    parameters = sum(p.numel() for p in model.parameters())
    print(f"Pre-training a {parameters / 1e6:.2f}M-parameter model with AdamW for 200 steps...")
    train(model, torch.optim.AdamW(model.parameters(), lr=1e-3), batch, 200, fine_tune=False, seed=1)

    # A sparse window entry moves its coordinate by up to (1 - beta1) / sqrt(1 - beta2) = 3.2 learning rates,
    # so MicroAdam fine-tunes at about a third of AdamW's learning rate.
    optimizers = {
        "AdamW": lambda params: torch.optim.AdamW(params, lr=1e-3),
        "MicroAdam": lambda params: MicroAdam(params, lr=3e-4, m=10, density=0.01),
    }
    results = {}
    for name, build in optimizers.items():
        tuned = copy.deepcopy(model)
        optimizer = build(tuned.parameters())
        losses = train(tuned, optimizer, batch, 400, fine_tune=True, seed=2)
        results[name] = (losses, optimizer_state_bytes(optimizer), state_bytes_per_parameter(optimizer))

    print("\nFine-tuning loss (mean of 20 steps):")
    print(f"{'step':>6} " + " ".join(f"{name:>12}" for name in results))
    for step in (20, 50, 100, 200, 300, 400):
        row = [sum(losses[step - 20 : step]) / 20 for losses, _, _ in results.values()]
        print(f"{step:>6} " + " ".join(f"{value:>12.5f}" for value in row))
    print("\nOptimizer state:")
    for name, (_, state_bytes, per_parameter) in results.items():
        print(f"  {name:<10} {state_bytes / 2**20:8.2f} MiB  {per_parameter:.3f} bytes/parameter")


if __name__ == "__main__":
    main()
