"""Does MicroAdam's step hide transient memory? Peak process memory of a short training run, per optimizer.

Each optimizer trains the same Llama-shaped model (built locally, about 30M parameters) for a few steps in a
fresh subprocess, which reports its peak resident memory. Two comparisons:

- the saving against AdamW next to what the state sizes alone predict (AdamW runs per tensor,
  ``foreach=False``; its own per-tensor temporaries make the measured saving a little larger);
- the peak above plain SGD (no state, no temporaries) next to the optimizer's state: what is left over is
  the step's hidden transient memory.

Run:
    python benchmarks/peak_memory.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

OPTIMIZERS = ("SGD", "AdamW", "MicroAdam", "AdamMini")


def build(name: str, model):
    """The optimizer ``name`` over ``model``'s parameters."""
    import torch

    from lit_microopt import AdamMini, MicroAdam

    if name == "SGD":  # no state, no transients: the memory of the model and its gradients alone
        return torch.optim.SGD(model.parameters(), lr=1e-4, foreach=False)
    if name == "AdamW":
        return torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)
    if name == "MicroAdam":
        return MicroAdam(model.named_parameters(), lr=1e-4)
    return AdamMini.from_model(model, lr=1e-4)


def child(name: str) -> None:
    """Train a few steps with one optimizer; print peak memory and state bytes as JSON."""
    import torch

    from lit_microopt.optim.memory import optimizer_state_bytes

    sys.path.insert(0, "benchmarks")
    from optimizer_step import llama_model

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = llama_model()
    optimizer = build(name, model)
    tokens = torch.randint(0, 8000, (2, 64))
    for _ in range(4):
        loss = model(input_ids=tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak": peak_kib * 1024, "state": optimizer_state_bytes(optimizer)}))


def main() -> None:
    results = {}
    for name in OPTIMIZERS:
        output = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True, check=True)
        results[name] = json.loads(output.stdout.strip().splitlines()[-1])
    adamw, sgd = results["AdamW"], results["SGD"]
    mib = 2**20
    print("| optimizer | peak RSS (MiB) | state (MiB) | saving vs AdamW (MiB) | state arithmetic (MiB) | "
          "peak above SGD (MiB) | transient beyond state (MiB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, result in results.items():
        above_sgd = result["peak"] - sgd["peak"]
        print(f"| {name} | {result['peak'] / mib:.0f} | {result['state'] / mib:.1f} | "
              f"{(adamw['peak'] - result['peak']) / mib:.0f} | {(adamw['state'] - result['state']) / mib:.0f} | "
              f"{above_sgd / mib:.0f} | {(above_sgd - result['state']) / mib:.0f} |")

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
