"""The project's CUDA kernels, executed on the CPU: an emulated GPU for the tests.

:func:`emulated_ops` compiles, with g++, the real ``csrc/**/*_cuda.cu`` files (through :mod:`rewrite`, which
only turns ``<<<...>>>`` launches and ``__shared__`` declarations into C++) together with the real CUDA glue
(``csrc/**/*_cuda_ops.cpp``, built with ``LIT_MICROOPT_CUDA_EMULATION``) and the emulated runtime
(``runtime.cpp``), into an extension that registers every op a second time, as ``lit_microopt_emulated::*``
for CPU tensors. The ops take the same arguments as ``lit_microopt::*``; their kernels are the CUDA source.

The build happens once per source change (cached in ``build/cuda_emulation``, about a minute on two cores).
It needs the CUDA toolkit's headers (``CUDA_HOME``, as the CUDA build of the package does), and nothing else
of CUDA: no GPU, no driver, no libcudart.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"
BUILD_DIRECTORY = ROOT / "build" / "cuda_emulation"
LIBRARY = "lit_microopt_emulated"
#: Blocks of an emulated launch, at most: far fewer than a GPU's, so that the kernels' grid-stride loops over
#: blocks run on small tensors too.
MAX_GRID_BLOCKS = 3
#: Compiler flags: the package's C++ flags that bear on results (-ffp-contract=off: no fused multiply-add, as
#: nvcc's --fmad=false), C++20 for the kernels' templated lambdas, and the emulation's own settings.
BUILD_FLAGS = json.loads((CSRC / "build_flags.json").read_text())
#: Elements of microadam_step_'s float32 scratch for 16-bit gradients, at most (256M on a GPU): small, so that the
#: glue's passes over chunks of a list run on small tensors too.
STEP_SCRATCH_ELEMENTS = 256
CXX_FLAGS = [flag for flag in BUILD_FLAGS["cxx"] if flag != "-fopenmp"] + [
    "-std=c++20", "-DLIT_MICROOPT_CUDA_EMULATION", f"-DLIT_MICROOPT_MAX_GRID_BLOCKS={MAX_GRID_BLOCKS}",
    f"-DLIT_MICROOPT_STEP_SCRATCH_ELEMENTS={STEP_SCRATCH_ELEMENTS}"]
#: Ops of the self-test kernels (self_test_kernels.cu), which exercise the emulation itself.
SELF_TEST_SCHEMAS = (
    "self_test(str kernel, Tensor(a!) out, int blocks, int threads) -> int",
    "configure(int poison_byte, bool os_threads) -> ()",
    "launches() -> int",
)

_library: torch.library.Library | None = None


def cuda_toolkit() -> Path:
    """The CUDA toolkit's folder: ``CUDA_HOME`` when set, else where ``nvcc`` on the PATH says it lives (which
    also sees through a wrapper script)."""
    if os.environ.get("CUDA_HOME"):
        return Path(os.environ["CUDA_HOME"])
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise RuntimeError("the emulated CUDA kernels need the CUDA toolkit's headers: put nvcc on the PATH or set "
                           "CUDA_HOME, as the package's CUDA build needs")
    # nvcc's dry run names its own folder: "#$ TOP=/usr/local/cuda/bin/..".
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "empty.cu"
        source.write_text("")
        dry_run = subprocess.run([nvcc, "--dryrun", "-c", str(source), "-o", str(source.with_suffix(".o"))],
                                 capture_output=True, text=True, check=False)
    match = re.search(r"^#\$ TOP=(.+)$", dry_run.stderr + dry_run.stdout, re.MULTILINE)
    return Path(match[1].strip()).resolve() if match else Path(nvcc).resolve().parents[1]


def cuda_include_directory() -> Path:
    """The CUDA toolkit's ``include`` folder (see :func:`cuda_toolkit`)."""
    include = cuda_toolkit() / "include"
    if not (include / "crt" / "host_defines.h").exists():
        raise RuntimeError(
            f"the emulated CUDA kernels need the CUDA toolkit's headers, not found under {include}; install the "
            "toolkit (or point CUDA_HOME at it), as the package's CUDA build needs"
        )
    return include


def _define_schemas() -> None:
    """``lit_microopt_emulated::op`` for every compiled op, with ``lit_microopt::op``'s schema (one home)."""
    global _library
    from lit_microopt.ops import dispatch

    _library = torch.library.Library(LIBRARY, "DEF")
    for name in dispatch.OP_NAMES:
        schema = str(getattr(torch.ops.lit_microopt, name).default._schema)
        _library.define(schema.removeprefix("lit_microopt::"))
    for schema in SELF_TEST_SCHEMAS:
        _library.define(schema)


def _rewritten_sources() -> list[Path]:
    """The .cu files as C++ for g++, written only when they change (so that the build stays cached)."""
    from tests.cuda_emulation.rewrite import rewrite

    BUILD_DIRECTORY.mkdir(parents=True, exist_ok=True)
    sources = sorted(CSRC.glob("**/*_cuda.cu")) + [HERE / "self_test_kernels.cu"]
    targets = []
    for source in sources:
        target = BUILD_DIRECTORY / f"{source.stem}_emulated.cpp"
        text = '#include "cuda_emulation.h"\n' + rewrite(source.read_text(), str(source))
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
        targets.append(target)
    return targets


@functools.cache
def emulated_ops():
    """``torch.ops.lit_microopt_emulated``, built on first use; the compiled package must be installed."""
    from torch.utils import cpp_extension

    import lit_microopt.ops  # noqa: F401  (defines the lit_microopt::* schemas that the emulated ops copy)

    include = cuda_include_directory()
    _define_schemas()
    glue = sorted(CSRC.glob("**/*_cuda_ops.cpp")) + [HERE / "self_test_ops.cpp"]
    cpp_extension.load(
        name="lit_microopt_cuda_emulation",
        sources=[str(path) for path in _rewritten_sources() + [HERE / "runtime.cpp"] + glue],
        extra_cflags=CXX_FLAGS + ["-include", str(HERE / "runtime_names.h")],
        # The shim folder comes first: its c10/cuda headers replace PyTorch's for the glue.
        extra_include_paths=[str(HERE / "shim"), str(HERE), str(include)]
        + [str(CSRC / family) for family in ("common", "microadam", "adam_mini")],
        build_directory=str(BUILD_DIRECTORY),
        is_python_module=False,
        verbose=False,
    )
    return getattr(torch.ops, LIBRARY)


def configure(poison_byte: int = 0xFF, os_threads: bool = False) -> None:
    """Settings of the next emulated launches: the byte that fills shared memory before every block (0 is what
    a previous kernel may leave behind, 0xFF makes every unwritten float a NaN), and OS threads instead of
    fibers (for ThreadSanitizer)."""
    emulated_ops().configure(poison_byte, os_threads)


def launches() -> int:
    """Kernel launches the emulated GPU has run (or refused) since the build was loaded: a test compares two
    readings to count an op's launches."""
    return int(emulated_ops().launches())


#: How often each op ran through :func:`guarded` (so that a test can see the emulated kernels were used).
calls: dict[str, int] = {}
#: Bytes of guard on each side of every tensor an emulated op receives, and their value.
GUARD_BYTES = 64
GUARD_VALUE = 0xA7


def _guarded_copy(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of ``tensor`` that lies between two guards in one buffer: (the copy, the buffer)."""
    buffer = torch.full((tensor.numel() * tensor.element_size() + 2 * GUARD_BYTES,), GUARD_VALUE, dtype=torch.uint8)
    inside = buffer[GUARD_BYTES : buffer.numel() - GUARD_BYTES].view(tensor.dtype).view(tensor.shape)
    inside.copy_(tensor)
    return inside, buffer


def guarded(op_name: str):
    """The emulated op ``op_name``, called on guarded copies of its tensor arguments: it fails when a kernel wrote
    outside a tensor (in either guard), and otherwise copies the results back into the arguments."""

    def call(*arguments):
        op = getattr(emulated_ops(), op_name)
        calls[op_name] = calls.get(op_name, 0) + 1
        # Tensor lists (the multi-tensor ops) are guarded tensor by tensor.
        flat = [(position, a) for position, argument in enumerate(arguments)
                for a in (argument if isinstance(argument, (list, tuple)) else [argument])]
        tensors = [a for _, a in flat if isinstance(a, torch.Tensor)]
        if not all(tensor.is_contiguous() and tensor.device.type == "cpu" for tensor in tensors):
            return op(*arguments)  # refused by the op's checks before any kernel runs
        copied = {}
        for _, a in flat:
            if isinstance(a, torch.Tensor) and id(a) not in copied:
                copied[id(a)] = _guarded_copy(a)
        guarded_arguments = [
            [copied[id(a)][0] if isinstance(a, torch.Tensor) else a for a in argument]
            if isinstance(argument, (list, tuple)) else (copied[id(argument)][0] if isinstance(argument, torch.Tensor)
                                                         else argument)
            for argument in arguments
        ]
        result = op(*guarded_arguments)
        for position, argument in flat:
            if not isinstance(argument, torch.Tensor):
                continue
            copy, buffer = copied[id(argument)]
            for side, guard in (("before", buffer[:GUARD_BYTES]), ("after", buffer[-GUARD_BYTES:])):
                written = int((guard != GUARD_VALUE).sum())
                if written:
                    raise AssertionError(f"the emulated CUDA kernel of {op_name} wrote {written} bytes {side} its "
                                         f"tensor argument {position}")
            if not torch.equal(copy, argument):
                argument.copy_(copy)
        return result

    return call


class GuardedOps:
    """``torch.ops.lit_microopt_emulated`` with every op wrapped by :func:`guarded`."""

    def __getattr__(self, op_name: str):
        return guarded(op_name)


class EmulatedKernelsOnCpu:
    """Within ``with``, ``lit_microopt::*`` ops on CPU tensors run the emulated CUDA kernels (guarded), so that the
    optimizers themselves step through the CUDA source; leaving restores the CPU kernels."""

    def __enter__(self) -> EmulatedKernelsOnCpu:
        from lit_microopt.ops import dispatch

        emulated_ops()
        self._library = torch.library.Library("lit_microopt", "IMPL")
        for name in dispatch.OP_NAMES:
            self._library.impl(name, guarded(name), "CPU")
        return self

    def __exit__(self, *exception) -> None:
        self._library._destroy()
