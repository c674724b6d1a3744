"""A logged MicroAdam step (``request_telemetry()``) costs a bounded amount of memory, whatever the tensor's size.

The statistics are computed in slices of at most ``SLICE_ELEMENTS`` elements; computed over the whole tensor they
cost about 10 bytes per element (1.2 GiB on a 2^27-element tensor). Measured in a fresh process as the rise of its
peak resident memory (``VmHWM``, reset through ``/proc/self/clear_refs``) during one step, with glibc returning every
large block to the system at once, so that what is measured is what the step's temporaries touch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ELEMENTS = 1 << 25  # 128 MiB of float32: whole-tensor temporaries would show as hundreds of MiB
MEASURE = f"""
import json, re, torch
from lit_microopt.optim import MicroAdam

def resident(key):
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read())[1]) * 1024

def step_peak(optimizer, param, gradient, telemetry):
    param.grad = gradient.clone()
    if telemetry:
        optimizer.request_telemetry()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak starts again from the memory in use now
    before = resident("VmRSS")
    optimizer.step()
    return resident("VmHWM") - before

torch.set_num_threads(1)
param = torch.nn.Parameter(torch.zeros({ELEMENTS}))
optimizer = MicroAdam([param], lr=1e-4)
gradient = torch.randn({ELEMENTS}, generator=torch.Generator().manual_seed(0))
for _ in range(10):  # a full window: m = 10 rows in use
    step_peak(optimizer, param, gradient, telemetry=False)
ordinary = step_peak(optimizer, param, gradient, telemetry=False)
logged = step_peak(optimizer, param, gradient, telemetry=True)
print(json.dumps({{"ordinary": ordinary, "logged": logged, "support": optimizer.telemetry.total.window_support}}))
"""


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
def test_a_logged_step_costs_a_bounded_amount_of_memory():
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                   "MALLOC_MMAP_THRESHOLD_": "131072"}  # a fixed threshold: freed large blocks go back at once
    result = subprocess.run([sys.executable, "-c", MEASURE], env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    mib = 1 << 20
    # Slices of 2^22 elements: a float32 slice of the decoded error feedback and one of its difference to r.
    assert measured["logged"] - measured["ordinary"] < 64 * mib, {k: v / mib for k, v in measured.items()}
    assert 0 < measured["support"] <= 1


def logged_statistics(monkeypatch, slice_elements: int):
    import torch

    from lit_microopt.ops.reference import microadam as reference
    from lit_microopt.optim import MicroAdam, telemetry

    monkeypatch.setattr(telemetry, "SLICE_ELEMENTS", slice_elements)
    monkeypatch.setattr(reference, "SLICE_ELEMENTS", slice_elements)
    generator = torch.Generator().manual_seed(1)
    param = torch.nn.Parameter(torch.zeros(5 * 256 + 100))  # five whole blocks and a short one
    optimizer = MicroAdam([param], lr=1e-3, m=4, block_size=256, density=0.05, quant_bucket_size=32)
    for _ in range(6):
        param.grad = torch.randn(param.shape, generator=generator)
        optimizer.request_telemetry()
        optimizer.step()
    return optimizer.telemetry.total


def test_statistics_in_slices_are_those_of_the_whole_tensor(monkeypatch):
    whole = logged_statistics(monkeypatch, 1 << 22)
    sliced = logged_statistics(monkeypatch, 512)  # two blocks, sixteen buckets a slice
    assert sliced.support == whole.support and sliced.numel == whole.numel
    for name, value in whole.as_dict().items():
        assert abs(getattr(sliced, name) - value) <= 1e-6 * max(1.0, abs(value)), name
