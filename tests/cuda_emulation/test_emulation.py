"""The emulated GPU itself: what tests of the CUDA kernels rely on it to do (see docs/cuda_emulation.md)."""

from __future__ import annotations

import warnings

import pytest
import torch

from lit_microopt import MicroAdam
from tests import cuda_emulation
from tests.cuda_emulation.rewrite import rewrite

INVALID_CONFIGURATION = 9  # cudaErrorInvalidConfiguration


@pytest.fixture(scope="module")
def emulated():
    ops = cuda_emulation.emulated_ops()
    yield ops
    ops.configure(0xFF, False)


def run(emulated, kernel, blocks, threads, out):
    return emulated.self_test(kernel, out, blocks, threads)


def test_every_thread_sees_its_own_indices(emulated):
    out = torch.zeros(3 * 96, dtype=torch.int32)
    assert run(emulated, "indices", 3, 96, out) == 0
    expected = torch.tensor([block * 1000 + thread for block in range(3) for thread in range(96)], dtype=torch.int32)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("poison", [0x00, 0xFF, 0x5A])
def test_shared_memory_starts_as_the_poison_byte_in_every_block(emulated, poison):
    emulated.configure(poison, False)
    out = torch.zeros(4, dtype=torch.int32)
    assert run(emulated, "poison", 4, 64, out) == 0
    expected = int.from_bytes(bytes([poison] * 4), "little", signed=True)
    assert out.tolist() == [expected] * 4


def test_threads_that_returned_drop_out_of_the_barrier(emulated):
    out = torch.full((128,), -7, dtype=torch.int32)
    assert run(emulated, "early_exit", 1, 128, out) == 0
    even = torch.arange(0, 128, 2)
    assert torch.equal(out[even], ((even + 2) % 128 * 10).int())
    assert (out[1::2] == -7).all()  # the odd threads returned before writing


def test_shuffles_exchange_values_within_each_warp(emulated):
    out = torch.zeros(96, dtype=torch.int32)
    assert run(emulated, "shuffle_sum", 1, 96, out) == 0
    warp_sums = [sum(range(32 * w, 32 * w + 32)) for w in range(3)]
    assert out.tolist() == [total for total in warp_sums for _ in range(32)]


def test_the_kernels_block_prefix_sum(emulated):
    out = torch.zeros(257, dtype=torch.int32)
    assert run(emulated, "prefix_sum", 1, 256, out) == 0
    assert out[:256].tolist() == list(range(256)) and out[256] == 256


def test_atomics_count_every_thread(emulated):
    out = torch.zeros(1, dtype=torch.int32)
    assert run(emulated, "atomic_count", 5, 128, out) == 0
    assert out.item() == 640


@pytest.mark.parametrize(("kernel", "message"), [
    ("partial_mask", "only the full mask 0xffffffff is emulated"),
    ("divergent_barrier", "threads wait at different barriers"),
    ("too_much_shared", "at most 49152"),
])
def test_what_a_gpu_would_not_do_fails_the_launch(emulated, kernel, message):
    with pytest.raises(RuntimeError, match=message):
        run(emulated, kernel, 1, 64, torch.zeros(64, dtype=torch.int32))
    out = torch.zeros(64, dtype=torch.int32)  # and the next launch runs as usual
    assert run(emulated, "indices", 1, 64, out) == 0


def test_a_shuffle_needs_whole_warps(emulated):
    with pytest.raises(RuntimeError, match="needs whole warps"):
        run(emulated, "shuffle_sum", 1, 48, torch.zeros(48, dtype=torch.int32))


@pytest.mark.parametrize(("blocks", "threads"), [(1, 1025), (0, 32), (1, 0)])
def test_launches_outside_the_hardware_limits_are_refused(emulated, blocks, threads):
    out = torch.zeros(2048, dtype=torch.int32)
    assert run(emulated, "indices", blocks, threads, out) == INVALID_CONFIGURATION
    assert (out == 0).all()


def test_os_threads_give_the_same_results_as_fibers(emulated):
    emulated.configure(0xFF, True)
    try:
        out = torch.zeros(128, dtype=torch.int32)
        assert run(emulated, "shuffle_sum", 2, 64, out) == 0
        assert out[:64].tolist() == [sum(range(32))] * 32 + [sum(range(32, 64))] * 32
        out = torch.zeros(1, dtype=torch.int32)
        assert run(emulated, "atomic_count", 2, 256, out) == 0 and out.item() == 512
    finally:
        emulated.configure(0xFF, False)


@pytest.mark.parametrize("divisor", [1, 2, 3, 7, 16, 64, 100, 1000, 8192, 32767, 100_000, 2**31 - 1, 2**31, 2**33])
def test_the_kernels_divider_is_exact(emulated, divisor):
    """Divider (csrc/common/numerics.h) replaces 64-bit divisions in the kernels: exact for every dividend."""
    generator = torch.Generator().manual_seed(divisor % 1000)
    dividends = torch.cat([
        torch.tensor([0, 1, divisor - 1, divisor, divisor + 1, 2**32 - 1, 2**32, 2**40 + 3, 2**31 - 1, 2**31]),
        torch.randint(0, 2**32, (5000,), generator=generator),
        torch.randint(0, 2**62, (500,), generator=generator),
    ])
    values = torch.cat([torch.tensor([divisor]), dividends])
    assert run(emulated, "divider", 4, 128, values) == 0
    assert torch.equal(values[1:], dividends // divisor)


def test_optimizers_step_through_the_emulated_kernels_within_the_context(emulated, monkeypatch):
    monkeypatch.setenv("LIT_MICROOPT_BACKEND", "compiled")
    param = torch.nn.Parameter(torch.randn(300))
    optimizer = MicroAdam([param], density=0.1, block_size=64, quant_bucket_size=16)
    counted = ("microadam_step_",)  # a step is one call of it per param group
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the override of the CPU kernels is announced
        with cuda_emulation.EmulatedKernelsOnCpu():
            before = [cuda_emulation.calls.get(name, 0) for name in counted]
            param.grad = torch.randn(300)
            optimizer.step()
            inside = [cuda_emulation.calls.get(name, 0) for name in counted]
    param.grad = torch.randn(300)
    optimizer.step()  # the CPU kernels again
    after = [cuda_emulation.calls.get(name, 0) for name in counted]
    assert all(i == b + 1 for i, b in zip(inside, before)) and after == inside


def test_rewrite_turns_launches_and_shared_declarations_into_cpp():
    source = ("__global__ void k(int* x) { __shared__ float tile[4][8]; __shared__ int n; }\n"
              "void go() { k<Code><<<blocks_for(n, 2), 256, 0, stream>>>(x, y); plain<<<1, 32>>>(z); }\n")
    text = rewrite(source, "example.cu")
    assert text.startswith('#line 1 "example.cu"\n') and text.count("\n") == source.count("\n") + 1
    assert "::cuda_emulation::launch(&k<Code>, blocks_for(n, 2), 256, 0, stream)(x, y)" in text
    assert "::cuda_emulation::launch(&plain, 1, 32)(z)" in text
    assert "auto& tile = ::cuda_emulation::shared_variable<float[4][8]>(&tile_site);" in text
    assert "auto& n = ::cuda_emulation::shared_variable<int>(&n_site);" in text


def test_rewrite_refuses_dynamic_shared_memory():
    with pytest.raises(ValueError, match="dynamic shared memory"):
        rewrite("extern __shared__ float buffer[];", "example.cu")
