"""Builds lit_microopt's compiled extension (``lit_microopt._C``) against the PyTorch already installed.

Install with ``pip install --no-build-isolation .`` (or ``-e .``): build isolation would build against
another PyTorch than the one the package runs with.

- The C++ CPU kernels are always built.
- The CUDA kernels are built when PyTorch is a CUDA build and ``nvcc`` is found (``CUDA_HOME``). Without a
  visible GPU they target ``TORCH_CUDA_ARCH_LIST`` (default ``8.0;8.6;9.0``).
- ``LIT_MICROOPT_BUILD_CUDA=0`` skips the CUDA kernels; ``=1`` makes a missing CUDA toolkit an error.
"""

from __future__ import annotations

import glob
import json
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

DEFAULT_CUDA_ARCHS = "8.0;8.6;9.0"
# No fused multiply-add in either compiler: the kernels round like the PyTorch reference's separate operations.
with open("csrc/build_flags.json") as flags_file:
    FLAGS = json.load(flags_file)


def want_cuda() -> bool:
    setting = os.environ.get("LIT_MICROOPT_BUILD_CUDA", "")
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if setting == "1" and not possible:
        raise RuntimeError(
            "LIT_MICROOPT_BUILD_CUDA=1 but the CUDA kernels cannot be built: "
            f"PyTorch {torch.__version__} is {'a CPU-only build' if torch.version.cuda is None else 'a CUDA build'} "
            f"and CUDA_HOME is {CUDA_HOME!r}; install a CUDA build of PyTorch and point CUDA_HOME at the toolkit."
        )
    return possible and setting != "0"


def extension():
    cpu_sources = sorted(set(glob.glob("csrc/**/*.cpp", recursive=True)) - set(glob.glob("csrc/**/*_cuda_ops.cpp", recursive=True)))
    cxx_flags = FLAGS["cxx"]
    link_flags = ["-fopenmp"]
    if not want_cuda():
        return CppExtension("lit_microopt._C", cpu_sources, extra_compile_args={"cxx": cxx_flags},
                            extra_link_args=link_flags)
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "the visible GPUs")
    cuda_sources = sorted(glob.glob("csrc/**/*_cuda_ops.cpp", recursive=True) + glob.glob("csrc/**/*.cu", recursive=True))
    definitions = [f'-DLIT_MICROOPT_CUDA_ARCHS="{archs}"', "-DLIT_MICROOPT_WITH_CUDA"]
    return CUDAExtension(
        "lit_microopt._C",
        cpu_sources + cuda_sources,
        extra_compile_args={
            "cxx": cxx_flags + definitions,
            "nvcc": FLAGS["nvcc"] + definitions,
        },
        extra_link_args=link_flags,
    )


setup(ext_modules=[extension()], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
