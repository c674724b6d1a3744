#!/usr/bin/env bash
# GPU validation, on a machine with a CUDA GPU and no internet: runs the whole test suite (the CUDA-marked
# tests included) with the PyTorch found there, then the optimizer-step benchmark on the GPU, and prints a
# short table that it also writes to $OUT (or ./gpu_check_out). About 5 minutes on an H100.
#   Wheels of missing pure-Python test dependencies may be put in .whl/ beforehand (adam-mini for parity).
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
  "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} | tee "$out/gpu_check.md"
"$python" -m pytest -q -p no:cacheprovider tests 2>&1 | tee "$out/tests.log" | tail -n 25
tests_status=${PIPESTATUS[0]}
"$python" -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tail -n 1 | sed 's/^/cuda-marked tests: /' | tee -a "$out/gpu_check.md"
"$python" benchmarks/optimizer_step.py --device cuda --warmup 3 --steps 20 2>&1 | tee -a "$out/gpu_check.md"
echo "whole suite exit status: $tests_status" | tee -a "$out/gpu_check.md"
exit "$tests_status"
