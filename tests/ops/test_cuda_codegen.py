"""What g++ cannot see of the CUDA kernels, checked on nvcc's own output: no fused multiply-add in the PTX (the
kernels round like the reference's separate operations), at most 48 KB of static shared memory a kernel and no
register spills (ptxas -v). Compiled with the package's nvcc flags for one architecture, in a few seconds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cuda_emulation import CSRC, cuda_toolkit

ARCHITECTURE = "sm_90"
KERNEL_SOURCES = sorted(CSRC.glob("**/*_cuda.cu"))


@pytest.fixture(scope="module", params=KERNEL_SOURCES, ids=lambda path: path.name)
def nvcc_output(request, tmp_path_factory) -> tuple[str, str]:
    """(the PTX, ptxas's resource report) of one .cu file."""
    nvcc = shutil.which("nvcc") or str(cuda_toolkit() / "bin" / "nvcc")
    folder = tmp_path_factory.mktemp(request.param.stem)
    flags = json.loads((CSRC / "build_flags.json").read_text())["nvcc"]
    command = [nvcc, *flags, f"-arch={ARCHITECTURE}", "--keep", f"--keep-dir={folder}", "-Xptxas", "-v", "-cubin",
               "-o", str(folder / "kernels.cubin"), f"-I{CSRC / 'common'}", str(request.param)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    ptx = "\n".join(path.read_text() for path in Path(folder).glob("*.ptx"))
    assert ".entry" in ptx, "nvcc kept no PTX"
    return ptx, result.stderr + result.stdout


def test_no_fused_multiply_add(nvcc_output):
    ptx, _ = nvcc_output
    assert not re.findall(r"\bfma\.\S+", ptx), "the PTX fuses a multiply and an add (--fmad=false is the contract)"


def test_static_shared_memory_within_48_kilobytes(nvcc_output):
    _, report = nvcc_output
    assert "registers" in report, report  # ptxas reported; kernels without shared memory print no "smem"
    used = [int(bytes_) for bytes_ in re.findall(r"(\d+) bytes smem", report)]
    assert max(used, default=0) <= 48 * 1024


def test_no_register_spills(nvcc_output):
    _, report = nvcc_output
    spills = [int(bytes_) for bytes_ in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
    assert spills and max(spills) == 0, report
