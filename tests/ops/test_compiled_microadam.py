"""MicroAdam's compiled kernels against the reference, op by op and over whole trajectories."""

from __future__ import annotations

import pytest
import torch

from lit_microopt import MicroAdam, ops
from lit_microopt.ops import dispatch
from lit_microopt.ops.reference import microadam as reference

compiled = torch.ops.lit_microopt
SIZES = [1, 2, 15, 16, 17, 31, 32, 33, 100, 1000]  # around a block of 16 and a bucket of 16


def require_kernels(device: str) -> None:
    """The CPU kernels are built wherever the package installs: their absence is a failure, not a skip."""
    if device == "cpu":
        assert dispatch.compiled_available("cpu", dispatch.MICROADAM_OPS), dispatch.kernels_report()
    elif not dispatch.compiled_available(device, dispatch.MICROADAM_OPS):
        pytest.fail(f"the CUDA kernels are not built: {dispatch.kernels_report()}")


def window_row(layout, device):
    return (torch.zeros(layout.k, dtype=torch.int16, device=device),
            torch.zeros(layout.k, dtype=torch.bfloat16, device=device))


def error_feedback_state(numel, bucket_size, device, generator):
    buckets = -(-numel // bucket_size)
    low = -torch.rand(buckets, generator=generator)
    return (torch.randint(0, 256, (-(-numel // 2),), dtype=torch.uint8, generator=generator).to(device),
            low.to(torch.bfloat16).to(device), (low + 2 * torch.rand(buckets, generator=generator)).to(torch.bfloat16).to(device))


@pytest.mark.parametrize("numel", SIZES)
def test_dequant_add_is_bit_identical(device, dtype, numel):
    require_kernels(device)
    generator = torch.Generator().manual_seed(numel)
    error_feedback, low, high = error_feedback_state(numel, 16, device, generator)
    accumulator = torch.randn(numel, generator=generator).to(device=device, dtype=dtype)
    expected, actual = accumulator.clone(), accumulator.clone()
    reference.ef_dequant_add_(expected, error_feedback, low, high, 16)
    compiled.ef_dequant_add_(actual, error_feedback, low, high, 16)
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("values", ["random", "tied"])
def test_topk_keeps_the_same_entries_in_the_same_columns(device, dtype, numel, values):
    require_kernels(device)
    generator = torch.Generator().manual_seed(numel)
    layout = ops.TopKLayout.of(numel, 16, 0.25)
    accumulator = torch.randn(numel, generator=generator)
    if values == "tied":  # few distinct magnitudes: the lowest positions win ties
        accumulator = torch.randint(-2, 3, (numel,), generator=generator).float()
    accumulator = accumulator.to(device=device, dtype=dtype)
    expected, actual = window_row(layout, device), window_row(layout, device)
    reference.block_topk(accumulator, *expected, layout)
    compiled.block_topk(accumulator, *actual, layout.block_size, layout.k_block, layout.k_last)
    assert torch.equal(actual[0], expected[0])
    assert torch.equal(actual[1], expected[1])


def large_block_values(kind: str, numel: int, generator: torch.Generator) -> torch.Tensor:
    """Values that stress a block selection: ties everywhere, zeros, or every large entry in one column."""
    if kind == "tied":
        return torch.randint(-3, 4, (numel,), generator=generator).float()
    if kind == "zeros":
        return torch.zeros(numel)
    values = torch.randn(numel, generator=generator)
    if kind == "one_column":  # the CPU kernel reads a block as rows of columns: crowd one column
        values = values * 1e-3
        values[::125] = torch.randn(values[::125].shape, generator=generator) * 10
    return values


@pytest.mark.parametrize(("numel", "block_size", "density"), [
    (100_003, 8192, 0.01),  # the default block, a short last block
    (5003, 1000, 0.01),  # rows of 125 columns, a last block of 3 elements
    (70_001, 4096, 0.05),  # two rows
    (4096, 4096, 0.9),  # almost everything kept
])
@pytest.mark.parametrize("kind", ["random", "tied", "zeros", "one_column"])
def test_topk_on_large_blocks_keeps_the_same_entries(device, numel, block_size, density, kind):
    require_kernels(device)
    generator = torch.Generator().manual_seed(numel)
    layout = ops.TopKLayout.of(numel, block_size, density)
    accumulator = large_block_values(kind, numel, generator).to(device)
    expected, actual = window_row(layout, device), window_row(layout, device)
    reference.block_topk(accumulator, *expected, layout)
    compiled.block_topk(accumulator, *actual, layout.block_size, layout.k_block, layout.k_last)
    assert torch.equal(actual[0], expected[0])
    assert torch.equal(actual[1], expected[1])


@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_quantize_is_bit_identical(device, dtype, numel, stochastic):
    require_kernels(device)
    generator = torch.Generator().manual_seed(numel)
    layout = ops.TopKLayout.of(numel, 16, 0.25)
    accumulator = (3 * torch.randn(numel, generator=generator)).to(device=device, dtype=dtype)
    indices, values = window_row(layout, device)
    reference.block_topk(accumulator, indices, values, layout)
    results = []
    for implementation in ("reference", "compiled"):
        state = [accumulator.clone(), *error_feedback_state(numel, 16, device, torch.Generator().manual_seed(0))]
        if implementation == "reference":
            reference.ef_quantize_(state[0], indices, *state[1:], 16, layout, stochastic, 987654321)
        else:
            compiled.ef_quantize_(state[0], indices, *state[1:], 16, layout.block_size, layout.k_block, stochastic,
                                  987654321)
        results.append(state)
    for expected, actual in zip(*results):
        assert torch.equal(actual, expected)


@pytest.mark.parametrize("numel", SIZES)
def test_window_update_is_bit_identical(device, dtype, numel):
    require_kernels(device)
    generator = torch.Generator().manual_seed(numel)
    layout = ops.TopKLayout.of(numel, 16, 0.5)
    rows = []
    for _ in range(3):  # three rows of in-block positions, overlapping between rows
        accumulator = torch.randn(numel, generator=generator).to(device)
        row = window_row(layout, device)
        reference.block_topk(accumulator, *row, layout)
        rows.append(row)
    indices = torch.stack([row[0] for row in rows])
    values = torch.stack([row[1] for row in rows])
    weights1 = torch.tensor([0.81, 1.0, 0.9], device=device)
    weights2 = torch.tensor([0.998001, 1.0, 0.999], device=device)
    param = torch.randn(numel, generator=generator).to(device=device, dtype=dtype)
    expected, actual = param.clone(), param.clone()
    arguments = (0.1 / (1 - 0.9**3), 0.001 / (1 - 0.999**3), 1e-8, 1e-2, 0.1)
    reference.window_adam_update_(expected, indices, values, weights1, weights2, layout, *arguments)
    compiled.window_adam_update_(actual, indices, values, weights1, weights2, layout.block_size, layout.k_block,
                                 *arguments)
    assert torch.equal(actual, expected)


def test_kernels_reject_wrong_inputs_with_a_clear_message():
    require_kernels("cpu")
    layout = ops.TopKLayout.of(100, 16, 0.25)
    with pytest.raises(RuntimeError, match="indices_row must be Short"):
        compiled.block_topk(torch.randn(100), torch.zeros(layout.k, dtype=torch.int32),
                            torch.zeros(layout.k, dtype=torch.bfloat16), 16, 4, 1)
    with pytest.raises(RuntimeError, match="contiguous"):
        compiled.ef_dequant_add_(torch.randn(200)[::2], torch.zeros(50, dtype=torch.uint8),
                                 torch.zeros(7, dtype=torch.bfloat16), torch.zeros(7, dtype=torch.bfloat16), 16)


def _trajectory(backend, dtype, ef_rounding, device, monkeypatch, steps=50):
    monkeypatch.setenv(dispatch.BACKEND_VARIABLE, backend)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 200), torch.nn.Tanh(), torch.nn.Linear(200, 7)).to(device, dtype)
    optimizer = MicroAdam(model.parameters(), lr=1e-2, m=4, density=0.1, block_size=256, quant_bucket_size=16,
                          ef_rounding=ef_rounding, weight_decay=0.01)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        inputs = torch.randn(32, 40, generator=generator).to(device, dtype)
        loss = model(inputs).float().square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()], optimizer


@pytest.mark.parametrize("ef_rounding", ["nearest", "stochastic"])
def test_fifty_step_trajectories_agree(device, dtype, ef_rounding, monkeypatch):
    """On the CPU the compiled kernels reproduce the reference bit for bit; on CUDA the window's sums may
    be taken in another order, so parameters agree to a few float32 ulps times the steps."""
    require_kernels(device)
    expected, expected_optimizer = _trajectory("reference", dtype, ef_rounding, device, monkeypatch)
    actual, actual_optimizer = _trajectory("compiled", dtype, ef_rounding, device, monkeypatch)
    for a, b in zip(actual, expected):
        if device == "cpu":
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    if device == "cpu":
        for state_a, state_b in zip(actual_optimizer.state.values(), expected_optimizer.state.values()):
            for key in state_a:
                assert torch.equal(state_a[key], state_b[key]), key


def test_missing_kernels_fall_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(dispatch, "EXTENSION_LOADED", False)
    monkeypatch.setattr(dispatch, "_extension_error", "ImportError: simulated")
    monkeypatch.setattr(dispatch, "_warned_devices", set())
    monkeypatch.delenv(dispatch.BACKEND_VARIABLE, raising=False)
    param = torch.nn.Parameter(torch.randn(100))
    optimizer = MicroAdam([param], density=0.1, block_size=16)
    with pytest.warns(UserWarning, match=r"compiled CPU kernels are not available.*pip install --no-build-isolation"):
        param.grad = torch.randn(100)
        optimizer.step()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        param.grad = torch.randn(100)
        optimizer.step()  # no second warning
    assert "simulated" in dispatch.kernels_report()


def test_forcing_compiled_kernels_that_are_missing_raises(monkeypatch):
    monkeypatch.setattr(dispatch, "EXTENSION_LOADED", False)
    monkeypatch.setenv(dispatch.BACKEND_VARIABLE, "compiled")
    param = torch.nn.Parameter(torch.randn(10))
    param.grad = torch.randn(10)
    with pytest.raises(RuntimeError, match="compiled CPU kernels are not available"):
        MicroAdam([param]).step()


def test_unknown_backend_setting_is_rejected(monkeypatch):
    monkeypatch.setenv(dispatch.BACKEND_VARIABLE, "fastest")
    with pytest.raises(ValueError, match="LIT_MICROOPT_BACKEND='fastest'"):
        dispatch.backend_setting()


def test_report_names_what_each_optimizer_uses(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_VARIABLE, raising=False)
    report = dispatch.kernels_report()
    assert "extension: loaded" in report
    assert "MicroAdam on cpu: compiled kernels" in report


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_step_on_a_second_stream_matches_the_default_stream():
    require_kernels("cuda")
    results = []
    for use_side_stream in (False, True):
        torch.manual_seed(0)
        param = torch.nn.Parameter(torch.randn(5000, device="cuda"))
        optimizer = MicroAdam([param], density=0.05, block_size=512, quant_bucket_size=32)
        stream = torch.cuda.Stream() if use_side_stream else torch.cuda.current_stream()
        with torch.cuda.stream(stream):
            for step in range(5):
                param.grad = torch.randn(5000, device="cuda", generator=torch.Generator("cuda").manual_seed(step))
                optimizer.step()
        stream.synchronize()
        results.append(param.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-7)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_misaligned_inputs_give_the_reference_result(dtype):
    """Views that start one element into their storage (not 16-byte aligned) are handled."""
    require_kernels("cuda")
    numel = 1001
    layout = ops.TopKLayout.of(numel, 64, 0.1)
    storage = torch.randn(numel + 1, device="cuda").to(dtype)
    accumulator = storage[1:]
    assert accumulator.data_ptr() % 16 != 0
    expected, actual = window_row(layout, "cuda"), window_row(layout, "cuda")
    reference.block_topk(accumulator.clone(), *expected, layout)
    compiled.block_topk(accumulator, *actual, layout.block_size, layout.k_block, layout.k_last)
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])
    generator = torch.Generator().manual_seed(0)
    error_feedback, low, high = error_feedback_state(numel, 16, "cuda", generator)
    target = accumulator.clone()
    reference.ef_dequant_add_(target, error_feedback, low, high, 16)
    compiled.ef_dequant_add_(accumulator, error_feedback, low, high, 16)
    assert torch.equal(accumulator, target)


def assert_fused_equals_three_steps(device, dtype, layout, bucket_size, stochastic):
    numel = layout.numel
    generator = torch.Generator().manual_seed(numel)
    gradient = (2 * torch.randn(numel, generator=generator)).to(device, dtype)
    results = []
    for fused in (False, True):
        state = [*window_row(layout, device), *error_feedback_state(numel, bucket_size, device,
                                                                     torch.Generator().manual_seed(1))]
        accumulator = gradient.clone()
        if fused:
            compiled.ef_compress_(accumulator, *state, bucket_size, layout.block_size, layout.k_block, layout.k_last,
                                  stochastic, 4242)
        else:
            reference.ef_dequant_add_(accumulator, *state[2:], bucket_size)
            reference.block_topk(accumulator, *state[:2], layout)
            reference.ef_quantize_(accumulator, state[0], *state[2:], bucket_size, layout, stochastic, 4242)
        results.append(state)
    for expected, actual in zip(*results):
        assert torch.equal(actual, expected)


@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("bucket_size", [16, 6], ids=["blocks-of-whole-buckets", "straddling"])
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_fused_compression_equals_the_three_steps(device, dtype, numel, bucket_size, stochastic):
    """ef_compress_ (steps 2 to 5 in one pass) leaves the window and the error feedback as the three ops do."""
    require_kernels(device)
    assert_fused_equals_three_steps(device, dtype, ops.TopKLayout.of(numel, 16, 0.25), bucket_size, stochastic)


@pytest.mark.parametrize(("numel", "block_size", "density", "bucket_size"), [
    (100_003, 8192, 0.01, 64), (5003, 1000, 0.01, 8), (70_001, 4096, 0.05, 64),
])
def test_fused_compression_on_large_blocks_equals_the_three_steps(device, dtype, numel, block_size, density, bucket_size):
    require_kernels(device)
    layout = ops.TopKLayout.of(numel, block_size, density)
    assert_fused_equals_three_steps(device, dtype, layout, bucket_size, stochastic=False)
