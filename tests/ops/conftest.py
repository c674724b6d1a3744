"""Where the compiled ops' kernels run: the CPU kernels, the CUDA kernels on an emulated GPU, a real GPU."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import pytest
import torch

from tests.conftest import requires_cuda


class KernelTarget(NamedTuple):
    """A set of kernels under test: ``ops`` holds the compiled ops, which take tensors on ``device``."""

    name: str
    device: str
    ops: Any

    @property
    def emulated(self) -> bool:
        return self.name.startswith("emulated")


#: Shared-memory poison of the emulated GPU: 0xFF makes an unwritten float a NaN and an int -1; zeros are what
#: a previous kernel may leave. A kernel that reads shared memory it did not write fails one or the other.
EMULATED_POISON = {"emulated": 0xFF, "emulated-zeroed": 0x00}

TARGETS = [
    "cpu",
    "emulated",
    "emulated-zeroed",
    pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda]),
]


def _target(name: str) -> KernelTarget:
    if name in EMULATED_POISON:
        from tests import cuda_emulation

        cuda_emulation.emulated_ops().configure(EMULATED_POISON[name], False)
        return KernelTarget(name, "cpu", cuda_emulation.GuardedOps())
    return KernelTarget(name, name, torch.ops.lit_microopt)


@pytest.fixture(params=TARGETS)
def target(request) -> KernelTarget:
    """Each compiled implementation of the ops in turn (their tests compare it with the reference on the CPU)."""
    return _target(request.param)


@pytest.fixture(params=[name for name in TARGETS if name != "emulated-zeroed"])
def optimizer_target(request) -> KernelTarget:
    """The same for whole optimizers, where one shared-memory poison is enough (the op tests try both)."""
    return _target(request.param)


@pytest.fixture
def emulated_kernels_on_cpu():
    """Within the test, the optimizers' ops on CPU tensors run the emulated CUDA kernels."""
    from tests import cuda_emulation

    cuda_emulation.emulated_ops().configure(0xFF, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overriding a previously registered kernel": what this fixture is for
        context = cuda_emulation.EmulatedKernelsOnCpu()
        context.__enter__()
    yield
    context.__exit__(None, None, None)
