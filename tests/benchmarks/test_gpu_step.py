"""benchmarks/gpu_step.py: the same code as on a GPU, on a tiny Llama shape on the CPU."""

from __future__ import annotations

import pytest
import torch

from tests.benchmarks.helpers import load_benchmark

gpu_step = load_benchmark("gpu_step")


def test_parameter_counts_of_the_two_shapes():
    assert gpu_step._parameter_count(gpu_step.SHAPES["7b"]) == 6_738_415_616  # Llama-2-7B
    assert gpu_step._parameter_count(gpu_step.SHAPES["1b"]) == 1_100_048_384  # TinyLlama-1.1B
    shape = dict(hidden=32, intermediate=64, layers=2, heads=4, kv_heads=2)
    named = gpu_step.llama_parameters(**shape, device="cpu", vocab=32000)
    assert sum(p.numel() for _, p in named) == gpu_step._parameter_count(shape)


def test_every_optimizer_gets_a_row_with_its_state_size(capsys):
    shape = dict(hidden=32, intermediate=64, layers=1, heads=4, kv_heads=2)
    gpu_step.run_model("tiny", shape, "cpu", warmup=0, steps=1)
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and "---" not in line and "optimizer" not in line}
    assert rows["AdamW (foreach)"][2] == "1.00x"
    assert rows["AdamW (foreach)"][4] == "4.000"  # bfloat16 moments
    assert float(rows["MicroAdam"][4]) == pytest.approx(0.9, abs=0.02)
    assert float(rows["AdamMini"][4]) == pytest.approx(2 + 4 / 32, abs=0.01)  # bfloat16 m, a float32 v per row of 32
    # Installed with the test extra: the 8-bit AdamW and the official Adam-mini run on the CPU too.
    assert float(rows["AdamW 8-bit (bitsandbytes)"][4]) == pytest.approx(2.0, abs=0.1)
    assert "Adam-mini, official (adam-mini)" in rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no GPU is visible")
def test_without_a_gpu_the_default_run_says_what_to_do(capsys):
    with pytest.raises(SystemExit):
        gpu_step.main([])
    assert "no CUDA GPU is visible" in capsys.readouterr().err
