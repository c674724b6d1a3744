#!/usr/bin/env bash
# GPU validation, on a machine with a CUDA GPU, nvcc and PyTorch but no internet: builds the extension
# against the PyTorch found there (for the visible GPU), runs the CUDA-marked tests, then the GPU benchmarks,
# and prints a short table that it also writes to $OUT (default ./gpu_check_out). About 6 minutes on an H100.
# Wheels of missing pure-Python test dependencies may be put in .whl/ beforehand (adam-mini for parity tests).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_check_out}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  "$python" -m pip install -q --no-index --no-deps --target /tmp/gpu_check_site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/gpu_check_site
fi
{
  echo "## GPU check $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} | tee "$out/gpu_check.md"
rm -f lit_microopt/_C*.so
LIT_MICROOPT_BUILD_CUDA=1 MAX_JOBS=16 "$python" setup.py build_ext --inplace >"$out/build.log" 2>&1 \
  || { tail -n 40 "$out/build.log"; echo "build failed" | tee -a "$out/gpu_check.md"; exit 1; }
"$python" -m pytest -q -p no:cacheprovider -m cuda tests/ops tests/optim tests/strategies 2>&1 | tee "$out/tests.log" | tail -n 30
tests_status=${PIPESTATUS[0]}
grep -E "passed|failed" "$out/tests.log" | tail -n 1 | sed 's/^/CUDA tests: /' | tee -a "$out/gpu_check.md"
"$python" benchmarks/gpu_step.py 2>&1 | tee -a "$out/gpu_check.md"
"$python" benchmarks/optimizer_step.py --device cuda --steps 20 2>&1 | tail -n 12 | tee -a "$out/gpu_check.md"
exit "$tests_status"
