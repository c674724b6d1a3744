"""``torch.compile`` of ``optimizer.step`` and of a training step that calls it.

The optimizers run their parameter updates eagerly behind one graph break (``docs/torch_optim_contract.md``
says why), so a compiled step must match eager stepping bit for bit and compile once: these tests count the
graphs a backend receives and the frames dynamo converts, and then forbid recompiles outright.

The training step compiles with ``aot_eager`` (AOTAutograd, the front half of the default inductor backend, where
MicroAdam's step used to crash): inductor would add tens of seconds of C++ compilation on a CPU for nothing the
optimizer does differently. ``torch.compile(optimizer.step)`` runs with the default backend itself.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend
from torch._dynamo.utils import counters

from lit_microopt.optim import AdamMini, MicroAdam

pytestmark = pytest.mark.usefixtures("one_thread")

WARM_UP_STEPS = 2


class CountingBackend:
    """A ``torch.compile`` backend that counts the graphs it is given and compiles them with ``inner``."""

    def __init__(self, inner: str) -> None:
        self.inner = lookup_backend(inner)
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return self.inner(graph_module, example_inputs)


def model_and_optimizer(name: str):
    """A small MLP and the optimizer ``name`` over it (MicroAdam with blocks small enough to move every element)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    if name == "MicroAdam":
        optimizer = MicroAdam(model.parameters(), lr=1e-2, m=4, density=0.5, block_size=16, quant_bucket_size=8)
    else:
        optimizer = AdamMini(model.named_parameters(), lr=1e-2)
    return model, optimizer


def train_step(model, optimizer, inputs):
    """Forward, backward, step: what a user compiles."""
    loss = model(inputs).square().mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss


def compilations(backend: CountingBackend) -> tuple[int, int]:
    """(graphs compiled, frames dynamo converted) so far."""
    return backend.graphs, counters["frames"]["total"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test counts its own compilations."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ["MicroAdam", "AdamMini"])
def test_a_compiled_training_step_matches_eager_and_compiles_once(name):
    model, optimizer = model_and_optimizer(name)
    eager_model, eager_optimizer = model_and_optimizer(name)
    backend = CountingBackend("aot_eager")
    compiled_step = torch.compile(train_step, backend=backend)
    inputs = torch.randn(4, 8)
    for _ in range(WARM_UP_STEPS):
        compiled_step(model, optimizer, inputs)
        train_step(eager_model, eager_optimizer, inputs)
    after_warm_up = compilations(backend)
    assert after_warm_up[0] >= 1  # the model's forward and backward did compile
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(6):
            compiled_step(model, optimizer, inputs)
            train_step(eager_model, eager_optimizer, inputs)
    assert compilations(backend) == after_warm_up
    for param, eager_param in zip(model.parameters(), eager_model.parameters()):
        assert torch.equal(param, eager_param)
    assert int(optimizer.state[next(model.parameters())]["step"]) == WARM_UP_STEPS + 6


@pytest.mark.parametrize("backend_name", ["inductor", "aot_eager"])
@pytest.mark.parametrize("name", ["MicroAdam", "AdamMini"])
def test_compiled_optimizer_step_matches_eager_and_compiles_once(name, backend_name):
    # PyTorch's recipe "compiling the optimizer": torch.compile(optimizer.step), the model left eager.
    model, optimizer = model_and_optimizer(name)
    eager_model, eager_optimizer = model_and_optimizer(name)
    backend = CountingBackend(backend_name)
    compiled = torch.compile(optimizer.step, backend=backend)
    inputs = torch.randn(4, 8)

    def step_both():
        for this_model, step in ((model, compiled), (eager_model, eager_optimizer.step)):
            this_model(inputs).square().mean().backward()
            step()
        optimizer.zero_grad()
        eager_optimizer.zero_grad()

    for _ in range(WARM_UP_STEPS):
        step_both()
    after_warm_up = compilations(backend)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(6):
            step_both()
    assert compilations(backend) == after_warm_up
    for param, eager_param in zip(model.parameters(), eager_model.parameters()):
        assert torch.equal(param, eager_param)
