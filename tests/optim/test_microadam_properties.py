"""Property-based checks of MicroAdam's invariants over shapes, dtypes and hyper-parameters."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_microopt import MicroAdam, ops


@st.composite
def configurations(draw):
    shape = tuple(draw(st.lists(st.integers(1, 40), min_size=1, max_size=3)))
    return dict(
        shape=shape,
        dtype=draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16])),
        m=draw(st.integers(1, 4)),
        density=draw(st.floats(0.01, 1.0)),
        block_size=draw(st.integers(1, 300)),
        quant_bucket_size=2 * draw(st.integers(1, 40)),
        ef_rounding=draw(st.sampled_from(["nearest", "stochastic"])),
        steps=draw(st.integers(1, 6)),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configurations())
def test_invariants(config):
    generator = torch.Generator().manual_seed(config["seed"])
    param = torch.nn.Parameter(torch.randn(config["shape"], generator=generator).to(config["dtype"]))
    optimizer = MicroAdam(
        [param], lr=1e-3, m=config["m"], density=config["density"], block_size=config["block_size"],
        quant_bucket_size=config["quant_bucket_size"], ef_rounding=config["ef_rounding"],
    )
    layout = optimizer.layout(param.numel(), optimizer.param_groups[0])
    for step in range(1, config["steps"] + 1):
        before = param.detach().clone()
        param.grad = torch.randn(config["shape"], generator=generator).to(config["dtype"])
        optimizer.step()
        state = optimizer.state[param]
        filled = min(step, config["m"])

        # The state has the shapes of docs/microadam.md and dtypes, and the step count is this parameter's.
        for key, (shape, dtype) in optimizer.expected_state_shapes(param.numel(), optimizer.param_groups[0]).items():
            assert tuple(state[key].shape) == shape and state[key].dtype == dtype
        assert int(state["step"]) == step

        # Every filled window row holds distinct in-block positions, k_b of them per block.
        positions = ops.window_positions(state["window_indices"][:filled], layout)
        assert int(positions.min()) >= 0 and int(positions.max()) < param.numel()
        for row in positions:
            assert row.unique().numel() == layout.k

        # Buckets bracket their decoded values; decoded values are finite.
        decoded = ops.dequantize(state["error_feedback"], state["bucket_min"], state["bucket_max"],
                                 config["quant_bucket_size"], 0, param.numel())
        assert torch.isfinite(decoded).all()
        assert torch.all(state["bucket_min"].float() <= state["bucket_max"].float())

        # Without weight decay, only positions held by the window move.
        moved = (param.detach() != before).view(-1).nonzero().view(-1)
        assert set(moved.tolist()) <= set(positions.view(-1).tolist())
        assert torch.isfinite(param).all()
