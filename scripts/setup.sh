#!/usr/bin/env bash
# Set-up on a fresh machine: a virtual environment in .venv with PyTorch, lit_microopt (editable) and the
# test tools. Safe to run again; it only installs what is missing.
#   TORCH_VERSION  the PyTorch release to install (default 2.13.0, the CPU build this machine kind has on disk)
#   PYTHON         the interpreter that creates the environment (default python3, 3.10 or newer)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip "setuptools>=77" wheel ninja
# PyTorch first: the package is built against the PyTorch already installed (--no-build-isolation), so
# that its compiled parts match it; build isolation would fetch another PyTorch for the build.
"${pip[@]}" "torch==${TORCH_VERSION:-2.13.0}"
"${pip[@]}" --no-build-isolation -e ".[test]"
