"""MicroAdam's compiled kernels against the reference, op by op and over whole trajectories.

Every op test runs on each target of ``tests/ops/conftest.py``: the CPU kernels, the CUDA kernels on the
emulated GPU (their own source, executed on CPU threads) and, where one is present, a real GPU. The expected
result is always the reference computed on CPU copies of the inputs: the arithmetic of docs/microadam.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lit_microopt import MicroAdam, ops
from lit_microopt.ops import dispatch
from lit_microopt.ops.reference import microadam as reference
from tests.ops.conftest import KernelTarget

compiled = torch.ops.lit_microopt
SIZES = [1, 2, 15, 16, 17, 31, 32, 33, 100, 1000]  # around a block of 16 and a bucket of 16


def require_kernels(target) -> None:
    """The CPU kernels are built wherever the package installs, and the emulated ones wherever the CUDA headers
    are: their absence is a failure, not a skip (the ``cuda`` target is skipped without a GPU)."""
    if target.name == "cpu":
        assert dispatch.compiled_available("cpu", dispatch.MICROADAM_OPS), dispatch.kernels_report()
    elif target.name == "cuda" and not dispatch.compiled_available("cuda", dispatch.MICROADAM_OPS):
        pytest.fail(f"the CUDA kernels are not built: {dispatch.kernels_report()}")


def window_row(layout, device="cpu"):
    return (torch.zeros(layout.k, dtype=torch.int16, device=device),
            torch.zeros(layout.k, dtype=torch.bfloat16, device=device))


def error_feedback_state(numel, bucket_size, generator):
    buckets = -(-numel // bucket_size)
    low = -torch.rand(buckets, generator=generator)
    return (torch.randint(0, 256, (-(-numel // 2),), dtype=torch.uint8, generator=generator),
            low.to(torch.bfloat16), (low + 2 * torch.rand(buckets, generator=generator)).to(torch.bfloat16))


def on(device, tensors):
    return [tensor.to(device) for tensor in tensors]


def assert_all_equal(actual, expected):
    for a, b in zip(actual, expected, strict=True):
        assert torch.equal(a.cpu(), b)


@pytest.mark.parametrize("numel", SIZES)
def test_dequant_add_is_bit_identical(target, dtype, numel):
    require_kernels(target)
    generator = torch.Generator().manual_seed(numel)
    state = error_feedback_state(numel, 16, generator)
    assert_dequant_add_matches(target, torch.randn(numel, generator=generator).to(dtype), state, 16)


def assert_dequant_add_matches(target, accumulator, state, bucket_size):
    expected = accumulator.clone()
    reference.ef_dequant_add_(expected, *state, bucket_size)
    actual = accumulator.to(target.device)
    target.ops.ef_dequant_add_(actual, *on(target.device, state), bucket_size)
    assert torch.equal(actual.cpu(), expected)


DEFAULT_BUCKET_SIZES = [64, 128, 640, 8192 + 33]  # whole buckets of the default size 64, and a shorter last one


def bucket_64_values(numel, dtype, generator):
    """Values with what a bucket of 64 meets in practice and at its edges: signed zeros, a constant bucket (unit 0),
    magnitudes far apart (finite in float16)."""
    values = torch.randn(numel, generator=generator) * torch.logspace(-4, 4, numel)[torch.randperm(numel, generator=generator)]
    values[:64] = 0.0
    values[1:64:2] = -0.0
    if numel >= 128:
        values[64:128] = 3.0
    return values.to(dtype)


@pytest.mark.parametrize("numel", DEFAULT_BUCKET_SIZES)
def test_dequant_add_with_buckets_of_64_is_bit_identical(target, dtype, numel):
    """Buckets of the default size take their own vector code on the CPU."""
    require_kernels(target)
    generator = torch.Generator().manual_seed(numel)
    state = error_feedback_state(numel, 64, generator)
    assert_dequant_add_matches(target, bucket_64_values(numel, dtype, generator), state, 64)


@pytest.mark.parametrize("numel", DEFAULT_BUCKET_SIZES)
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_quantize_and_compression_with_buckets_of_64_are_bit_identical(target, dtype, numel, stochastic):
    require_kernels(target)
    generator = torch.Generator().manual_seed(numel)
    layout = ops.TopKLayout.of(numel, 256, 0.05)
    assert_quantize_matches(target, bucket_64_values(numel, dtype, generator), layout, 64, stochastic)
    assert_fused_equals_three_steps(target, dtype, layout, 64, stochastic)


def test_buckets_of_64_in_portable_code_are_bit_identical():
    """Where the processor has AVX2, buckets of 64 run AVX2 code; ATEN_CPU_CAPABILITY=default turns it off (as it
    does for PyTorch's own kernels), and the portable code they run then matches the reference too."""
    environment = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "buckets_of_64 and cpu"],
        capture_output=True, text=True, env=environment, cwd=Path(__file__).parents[2], timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout


def topk_on(target, accumulator, layout):
    """(expected, actual) window rows of the reference on the CPU and of the target's kernel."""
    expected = window_row(layout)
    reference.block_topk(accumulator, *expected, layout)
    actual = window_row(layout, target.device)
    target.ops.block_topk(accumulator.to(target.device), *actual, layout.block_size, layout.k_block, layout.k_last)
    return expected, actual


@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("values", ["random", "tied"])
def test_topk_keeps_the_same_entries_in_the_same_columns(target, dtype, numel, values):
    require_kernels(target)
    generator = torch.Generator().manual_seed(numel)
    layout = ops.TopKLayout.of(numel, 16, 0.25)
    accumulator = torch.randn(numel, generator=generator)
    if values == "tied":  # few distinct magnitudes: the lowest positions win ties
        accumulator = torch.randint(-2, 3, (numel,), generator=generator).float()
    expected, actual = topk_on(target, accumulator.to(dtype), layout)
    assert_all_equal(actual, expected)


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
def test_topk_on_large_blocks_keeps_the_same_entries(target, numel, block_size, density, kind):
    require_kernels(target)
    generator = torch.Generator().manual_seed(numel)
    layout = ops.TopKLayout.of(numel, block_size, density)
    expected, actual = topk_on(target, large_block_values(kind, numel, generator), layout)
    assert_all_equal(actual, expected)


@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_quantize_is_bit_identical(target, dtype, numel, stochastic):
    require_kernels(target)
    generator = torch.Generator().manual_seed(numel)
    layout = ops.TopKLayout.of(numel, 16, 0.25)
    assert_quantize_matches(target, (3 * torch.randn(numel, generator=generator)).to(dtype), layout, 16, stochastic)


def assert_quantize_matches(target, accumulator, layout, bucket_size, stochastic):
    """ef_quantize_ of the target against the reference, after the reference's Top-K of ``accumulator``."""
    indices, values = window_row(layout)
    reference.block_topk(accumulator, indices, values, layout)
    state = [accumulator, *error_feedback_state(layout.numel, bucket_size, torch.Generator().manual_seed(0))]
    expected = [tensor.clone() for tensor in state]
    reference.ef_quantize_(expected[0], indices, *expected[1:], bucket_size, layout, stochastic, 987654321)
    actual = on(target.device, state)
    target.ops.ef_quantize_(actual[0], indices.to(target.device), *actual[1:], bucket_size, layout.block_size,
                            layout.k_block, stochastic, 987654321)
    assert_all_equal(actual, expected)


def window_of(numel, layout, rows, generator):
    """``rows`` window rows of in-block positions, overlapping from row to row, as block_topk writes them."""
    window = []
    for _ in range(rows):
        row = window_row(layout)
        reference.block_topk(torch.randn(numel, generator=generator), *row, layout)
        window.append(row)
    return torch.stack([row[0] for row in window]), torch.stack([row[1] for row in window])


@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("rows", [3, 7])
def test_window_update_is_bit_identical(target, dtype, numel, rows):
    """Positions held by 3 or more rows are where the order of the float32 sums shows: every kernel adds a
    position's entries in row order, as the reference does."""
    require_kernels(target)
    generator = torch.Generator().manual_seed(numel)
    layout = ops.TopKLayout.of(numel, 16, 0.5)
    indices, values = window_of(numel, layout, rows, generator)
    ages = torch.arange(rows, dtype=torch.float32)
    weights1, weights2 = 0.9**ages, 0.999**ages
    param = torch.randn(numel, generator=generator).to(dtype)
    arguments = (0.1 / (1 - 0.9**rows), 0.001 / (1 - 0.999**rows), 1e-8, 1e-2, 0.1)
    expected = param.clone()
    reference.window_adam_update_(expected, indices, values, weights1, weights2, layout, *arguments)
    actual = param.to(target.device)
    window = on(target.device, (indices, values, weights1, weights2))
    target.ops.window_adam_update_(actual, *window, layout.block_size, layout.k_block, *arguments)
    assert torch.equal(actual.cpu(), expected)
    again = param.to(target.device)  # and the same bits on every run (no order left to chance)
    target.ops.window_adam_update_(again, *window, layout.block_size, layout.k_block, *arguments)
    assert torch.equal(again, actual)


def test_more_blocks_than_one_launch_has_are_all_processed(target):
    """The kernels loop over Top-K blocks (grid-stride): a tensor with more blocks than a launch's grid holds
    (the emulated GPU's grid is small on purpose) is processed whole."""
    from tests.cuda_emulation import MAX_GRID_BLOCKS

    require_kernels(target)
    numel, generator = 40 * 16 + 5, torch.Generator().manual_seed(3)
    layout = ops.TopKLayout.of(numel, 16, 0.25)
    assert layout.num_full_blocks > MAX_GRID_BLOCKS
    expected, actual = topk_on(target, torch.randn(numel, generator=generator), layout)
    assert_all_equal(actual, expected)
    indices, values = window_of(numel, layout, 3, generator)
    param = torch.randn(numel, generator=generator)
    expected_param = param.clone()
    weights = torch.ones(3)
    reference.window_adam_update_(expected_param, indices, values, weights, weights, layout, 0.1, 0.01, 1e-8, 1.0, 0.0)
    actual_param = param.to(target.device)
    target.ops.window_adam_update_(actual_param, *on(target.device, (indices, values, weights, weights)),
                                   layout.block_size, layout.k_block, 0.1, 0.01, 1e-8, 1.0, 0.0)
    assert torch.equal(actual_param.cpu(), expected_param)


def test_kernels_reject_wrong_inputs_with_a_clear_message(target):
    require_kernels(target)
    device, layout = target.device, ops.TopKLayout.of(100, 16, 0.25)
    with pytest.raises(RuntimeError, match="indices_row must be Short"):
        target.ops.block_topk(torch.randn(100, device=device), torch.zeros(layout.k, dtype=torch.int32, device=device),
                              torch.zeros(layout.k, dtype=torch.bfloat16, device=device), 16, 4, 1)
    with pytest.raises(RuntimeError, match="contiguous"):
        target.ops.ef_dequant_add_(torch.randn(200, device=device)[::2], torch.zeros(50, dtype=torch.uint8, device=device),
                                   torch.zeros(7, dtype=torch.bfloat16, device=device),
                                   torch.zeros(7, dtype=torch.bfloat16, device=device), 16)


def _topk_arguments(device, numel, columns):
    return (torch.randn(numel, device=device), torch.zeros(columns, dtype=torch.int16, device=device),
            torch.zeros(columns, dtype=torch.bfloat16, device=device))


@pytest.mark.parametrize(("numel", "block_size", "k_block", "k_last", "message"), [
    (100, 16, 0, 1, "k_block must be in"),  # k = 0 read shared state no thread wrote, then wrote past the row
    (100, 16, 17, 1, "k_block must be in"),
    (96, 16, 4, 1, "k_last must be 0"),  # k_last > 0 while block_size divides numel: a segfault on the CPU
    (100, 16, 4, 0, r"k_last must be in \[1, 4\]"),
    (100, 16, 4, 5, r"k_last must be in \[1, 4\]"),
    (100, 0, 4, 1, "block_size must be in"),
    (100, 40000, 4, 1, "block_size must be in"),
])
def test_topk_refuses_a_layout_that_does_not_fit(target, numel, block_size, k_block, k_last, message):
    require_kernels(target)
    columns = max(0, (numel // max(block_size, 1)) * k_block + k_last)
    with pytest.raises(ValueError, match=message):
        target.ops.block_topk(*_topk_arguments(target.device, numel, columns), block_size, k_block, k_last)


def test_every_op_refuses_a_zero_k_block_or_bucket_size(target):
    """k_block = 0 ended Python with SIGFPE in the CPU kernels; the ops now name the argument instead."""
    require_kernels(target)
    device, numel = target.device, 100
    layout = ops.TopKLayout.of(numel, 16, 0.25)
    param = torch.randn(numel, device=device)
    indices, values = (tensor.to(device) for tensor in window_row(layout))
    weights = torch.ones(1, device=device)
    codes, low, high = on(device, error_feedback_state(numel, 16, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="k_block must be in"):
        target.ops.window_adam_update_(param, indices[None], values[None], weights, weights, 16, 0, 0.1, 0.1, 1e-8,
                                       1.0, 0.0)
    with pytest.raises(ValueError, match="window_indices has 25 columns"):
        target.ops.window_adam_update_(param, indices[None], values[None], weights, weights, 16, 3, 0.1, 0.1, 1e-8,
                                       1.0, 0.0)
    with pytest.raises(ValueError, match="k_block must be in"):
        target.ops.ef_quantize_(param, indices, codes, low, high, 16, 16, 0, False, 0)
    with pytest.raises(ValueError, match="bucket_size must be even"):
        target.ops.ef_dequant_add_(param, codes, low, high, 0)
    with pytest.raises(ValueError, match="bucket_size must be even"):
        target.ops.ef_compress_(param, indices, values, codes, low, high, 0, 16, layout.k_block, layout.k_last, False, 0)
    before = [tensor.cpu().clone() for tensor in (param, indices, values, codes, low, high)]
    with pytest.raises(ValueError, match="k_last must be in"):  # refused before anything is written
        target.ops.ef_compress_(param, indices, values, codes, low, high, 16, 16, layout.k_block, 0, False, 0)
    assert_all_equal((param, indices, values, codes, low, high), before)


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
def test_fifty_step_trajectories_agree(optimizer_target, dtype, ef_rounding, monkeypatch, request):
    """The optimizer on the compiled kernels reproduces the reference bit for bit: parameters and every state
    tensor. On a real GPU the model's own arithmetic and the reference's CUDA index_add_ (atomics) differ
    from run to run, so there parameters agree to a few float32 ulps times the steps."""
    target = optimizer_target
    require_kernels(target)
    if target.emulated:
        request.getfixturevalue("emulated_kernels_on_cpu")  # the optimizer's ops now run the CUDA source
    expected, expected_optimizer = _trajectory("reference", dtype, ef_rounding, target.device, monkeypatch)
    actual, actual_optimizer = _trajectory("compiled", dtype, ef_rounding, target.device, monkeypatch)
    if target.name == "cuda":
        for a, b in zip(actual, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
        return
    assert_all_equal(actual, expected)
    for state_a, state_b in zip(actual_optimizer.state.values(), expected_optimizer.state.values(), strict=True):
        for key in state_a:
            assert torch.equal(state_a[key], state_b[key]), key


# Without the extension: a fresh interpreter in which ``lit_microopt._C`` cannot be imported (as where it was never
# built), or loads but cannot register its kernels (as an extension built from another version).
_WITHOUT_EXTENSION = """
import sys, types
if sys.argv[1] == "missing":
    sys.modules["lit_microopt._C"] = None  # import fails: ImportError
else:
    def register_kernels():
        raise RuntimeError("simulated schema mismatch")
    sys.modules["lit_microopt._C"] = types.ModuleType("lit_microopt._C")
    sys.modules["lit_microopt._C"].register_kernels = register_kernels
"""


def _run_without_extension(how: str, body: str) -> None:
    code = _WITHOUT_EXTENSION + textwrap.dedent(body)
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    environment.pop(dispatch.BACKEND_VARIABLE, None)
    result = subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, env=environment,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("how", ["missing", "mismatched"])
def test_missing_kernels_fall_back_with_one_warning(how):
    _run_without_extension(how, """
        import warnings
        import pytest, torch
        from lit_microopt.ops import dispatch
        from lit_microopt.optim import MicroAdam

        assert not dispatch.EXTENSION_LOADED and not dispatch.compiled_available("cpu")
        param = torch.nn.Parameter(torch.randn(100))
        optimizer = MicroAdam([param], density=0.1, block_size=16)
        with pytest.warns(UserWarning, match=r"compiled CPU kernels are not available.*pip install --no-build-isolation"):
            param.grad = torch.randn(100)
            optimizer.step()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            param.grad = torch.randn(100)
            optimizer.step()  # no second warning
        report = dispatch.kernels_report()
        assert ("lit_microopt._C halted" if sys.argv[1] == "missing" else "simulated schema mismatch") in report, report
        assert "MicroAdam on cpu: reference" in report, report
    """)


def test_forcing_compiled_kernels_that_are_missing_raises():
    _run_without_extension("missing", """
        import os
        import pytest, torch
        from lit_microopt.ops import dispatch
        from lit_microopt.optim import MicroAdam

        os.environ[dispatch.BACKEND_VARIABLE] = "compiled"
        param = torch.nn.Parameter(torch.randn(10))
        param.grad = torch.randn(10)
        before = param.detach().clone()
        with pytest.raises(RuntimeError, match="compiled CPU kernels are not available"):
            MicroAdam([param]).step()
        assert torch.equal(param.detach(), before)  # refused before the parameter changed
    """)


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
    require_kernels(KernelTarget("cuda", "cuda", compiled))
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
    require_kernels(KernelTarget("cuda", "cuda", compiled))
    numel = 1001
    layout = ops.TopKLayout.of(numel, 64, 0.1)
    storage = torch.randn(numel + 1).to(dtype)
    accumulator = storage.to("cuda")[1:]
    assert accumulator.data_ptr() % 16 != 0
    expected = window_row(layout)
    reference.block_topk(storage[1:], *expected, layout)
    actual = window_row(layout, "cuda")
    compiled.block_topk(accumulator, *actual, layout.block_size, layout.k_block, layout.k_last)
    assert_all_equal(actual, expected)
    state = error_feedback_state(numel, 16, torch.Generator().manual_seed(0))
    expected_sum = storage[1:].clone()
    reference.ef_dequant_add_(expected_sum, *state, 16)
    compiled.ef_dequant_add_(accumulator, *on("cuda", state), 16)
    assert torch.equal(accumulator.cpu(), expected_sum)


def assert_fused_equals_three_steps(target, dtype, layout, bucket_size, stochastic):
    numel = layout.numel
    gradient = (2 * torch.randn(numel, generator=torch.Generator().manual_seed(numel))).to(dtype)
    state = [*window_row(layout), *error_feedback_state(numel, bucket_size, torch.Generator().manual_seed(1))]
    expected = [tensor.clone() for tensor in state]
    accumulator = gradient.to(torch.float32, copy=True)  # the definition: the three steps in float32
    reference.ef_dequant_add_(accumulator, *expected[2:], bucket_size)
    reference.block_topk(accumulator, *expected[:2], layout)
    reference.ef_quantize_(accumulator, expected[0], *expected[2:], bucket_size, layout, stochastic, 4242)
    actual = on(target.device, state)
    target.ops.ef_compress_(gradient.to(target.device), *actual, bucket_size, layout.block_size, layout.k_block,
                            layout.k_last, stochastic, 4242)
    assert_all_equal(actual, expected)


@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("bucket_size", [16, 6], ids=["blocks-of-whole-buckets", "straddling"])
@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_fused_compression_equals_the_three_steps(target, dtype, numel, bucket_size, stochastic):
    """ef_compress_ (steps 2 to 5 in one pass) leaves the window and the error feedback as the three ops do on
    the gradient in float32, whatever its dtype."""
    require_kernels(target)
    assert_fused_equals_three_steps(target, dtype, ops.TopKLayout.of(numel, 16, 0.25), bucket_size, stochastic)


@pytest.mark.parametrize(("numel", "block_size", "density", "bucket_size"), [
    (100_003, 8192, 0.01, 64), (5003, 1000, 0.01, 8), (70_001, 4096, 0.05, 64),
])
def test_fused_compression_on_large_blocks_equals_the_three_steps(target, dtype, numel, block_size, density,
                                                                   bucket_size):
    require_kernels(target)
    layout = ops.TopKLayout.of(numel, block_size, density)
    assert_fused_equals_three_steps(target, dtype, layout, bucket_size, stochastic=False)


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
def test_reference_compression_in_float32_slices_equals_the_three_steps(monkeypatch, stochastic):
    """The reference takes a bfloat16 gradient in float32 slices: with slices far smaller than the tensor, the
    result (random stream included) is that of the three steps on the whole gradient in float32."""
    monkeypatch.setattr(reference, "SLICE_ELEMENTS", 96)
    layout = ops.TopKLayout.of(1003, 16, 0.25)
    assert_fused_equals_three_steps(KernelTarget("reference", "cpu", ReferenceOps()), torch.bfloat16, layout, 6,
                                    stochastic)


class ReferenceOps:
    """The reference's ef_compress_ with the compiled op's arguments."""

    @staticmethod
    def ef_compress_(accumulator, indices_row, values_row, error_feedback, bucket_min, bucket_max, bucket_size,
                     block_size, k_block, k_last, stochastic, key):
        numel = accumulator.numel()
        layout = ops.TopKLayout(numel, block_size, k_block, numel // block_size, k_last)
        reference.ef_compress_(accumulator, indices_row, values_row, error_feedback, bucket_min, bucket_max,
                               bucket_size, layout, stochastic, key)


@pytest.mark.parametrize("numel", [1, 17, 100, 1000])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_window_update_with_stochastic_param_rounding_is_bit_identical(target, dtype, numel, weight_decay):
    """param_rounding="stochastic": a 16-bit parameter rounded stochastically after the decay and after the update,
    each from its own stream, the same bits in the reference and every kernel; float32 is not rounded at all."""
    require_kernels(target)
    generator = torch.Generator().manual_seed(numel)
    layout = ops.TopKLayout.of(numel, 16, 0.5)
    indices, values = window_of(numel, layout, 3, generator)
    ages = torch.arange(3, dtype=torch.float32)
    weights1, weights2 = 0.9**ages, 0.999**ages
    param = (1 + torch.randn(numel, generator=generator)).to(dtype)
    common = (0.1 / (1 - 0.9**3), 0.001 / (1 - 0.999**3), 1e-8, 1e-3, weight_decay)
    arguments = (*common, True, *ops.param_rounding_keys(5, 3))
    expected = param.clone()
    reference.window_adam_update_(expected, indices, values, weights1, weights2, layout, *arguments)
    actual = param.clone().to(target.device)
    window = on(target.device, (indices, values, weights1, weights2))
    target.ops.window_adam_update_(actual, *window, layout.block_size, layout.k_block, *arguments)
    assert torch.equal(actual.cpu(), expected)
    nearest = param.clone()
    reference.window_adam_update_(nearest, indices, values, weights1, weights2, layout, *common)
    if dtype == torch.float32:
        assert torch.equal(expected, nearest)
    elif numel >= 100:  # updates of a tenth of an ulp: to nearest they mostly vanish, stochastically some land
        assert not torch.equal(expected, nearest)


def test_window_update_to_nearest_ignores_the_keys(target, dtype):
    """With stochastic_param false the keys change nothing: the op computes what it computed before they existed."""
    require_kernels(target)
    generator = torch.Generator().manual_seed(0)
    layout = ops.TopKLayout.of(100, 16, 0.5)
    indices, values = window_of(100, layout, 3, generator)
    weights = torch.ones(3)
    param = torch.randn(100, generator=generator).to(dtype)
    window = on(target.device, (indices, values, weights, weights))
    results = []
    for extra in ((), (False, 123, 456)):
        actual = param.clone().to(target.device)
        target.ops.window_adam_update_(actual, *window, 16, layout.k_block, 0.1, 0.01, 1e-8, 1e-2, 0.1, *extra)
        results.append(actual.cpu())
    assert torch.equal(*results)
