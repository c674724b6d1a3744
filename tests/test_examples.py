"""The example programs run, and do what they say."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from lit_microopt.plot import plot_run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_existing_project_switches_to_microadam_and_logs_the_monitors(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        log_dir = load_example("existing_project").main(["--out", str(tmp_path), "--steps", "12", "--log-every", "5"])
    finally:
        torch.set_num_threads(threads)

    header = (log_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("train_loss", "microadam/compression_error", "microadam/window_support", "optim/state_bytes"):
        assert name in header
    figures = {path.name for path in plot_run(log_dir, tmp_path / "figures")}
    assert figures == {"training.png", "compression.png", "window.png", "memory.png"}
