"""The compiled extension is built and its ops are registered (CI builds it on every run)."""

import os

import torch

from lit_microopt.ops import dispatch


def test_cpu_kernels_are_built_and_registered():
    assert dispatch.EXTENSION_LOADED, dispatch.kernels_report()
    for name in dispatch.OP_NAMES:
        assert dispatch.compiled_available("cpu", (name,)), name


def test_cuda_kernels_are_registered_when_the_build_had_cuda():
    """Registration needs no GPU: a CUDA build of the extension registers a CUDA kernel for every op."""
    architectures = torch.ops.lit_microopt.cuda_architectures()
    if os.environ.get("LIT_MICROOPT_BUILD_CUDA") == "1":  # set by scripts/setup.sh when nvcc and CUDA PyTorch exist
        assert architectures, "the CUDA kernels were requested but not compiled"
    if architectures:
        for name in dispatch.OP_NAMES:
            assert dispatch.compiled_available("cuda", (name,)), name
    else:
        assert not dispatch.compiled_available("cuda")
