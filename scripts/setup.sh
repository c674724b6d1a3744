#!/usr/bin/env bash
# Set-up on a fresh machine: a virtual environment in .venv with PyTorch, lit_microopt with every extra (editable,
# its C++ and, where possible, CUDA kernels compiled) and the test tools: what the README's two commands need.
# Safe to run again.
#   TORCH_VERSION  the PyTorch release (default 2.14.1, the CUDA 13.0 build, which also runs on CPU-only
#                  machines and lets the CUDA kernels compile; 2.13.0 is a small CPU-only build)
#   PYTHON         the interpreter that creates the environment (default python3, 3.10 or newer)
#   CUDA_HOME      the CUDA toolkit; found from nvcc on PATH when unset
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip "setuptools>=77" wheel ninja
# PyTorch first: the extension is compiled against the PyTorch already installed (--no-build-isolation);
# build isolation would compile it against another PyTorch, whose ABI may differ.
"${pip[@]}" "torch==${TORCH_VERSION:-2.14.1}"

# The CUDA kernels: with a CUDA build of PyTorch and nvcc, build them and fail loudly if they do not compile.
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null 2>&1; then
  nvcc_path=$(command -v nvcc)
  if [ "$(head -c 2 "$nvcc_path")" = "#!" ]; then  # a wrapper script: the toolkit is where it points
    nvcc_path=$(grep -o '/[^ "]*/bin/nvcc' "$nvcc_path" | head -n 1)
  fi
  export CUDA_HOME
  CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")
fi
if [ -n "${CUDA_HOME:-}" ] && .venv/bin/python -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then
  export LIT_MICROOPT_BUILD_CUDA=${LIT_MICROOPT_BUILD_CUDA:-1}
fi
"${pip[@]}" --no-build-isolation -e ".[all,test]"
.venv/bin/python -c "from lit_microopt import ops; print(ops.kernels_report())"
