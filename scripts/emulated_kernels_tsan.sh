#!/usr/bin/env bash
# Optional: runs the CUDA kernels on the emulated GPU with one OS thread per CUDA thread, under ThreadSanitizer,
# which reports any data race between the threads of a block. Needs g++ and the CUDA toolkit's headers (as the
# tests do); about a minute. Exit status non-zero on a race or a failed launch.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
include=$("$python" -c "from tests.cuda_emulation import cuda_include_directory; print(cuda_include_directory())")
sources=()
for cu in csrc/*/*_cuda.cu; do
  target="$out/$(basename "${cu%.cu}")_emulated.cpp"
  "$python" -c "import sys; from tests.cuda_emulation.rewrite import rewrite
print('#include \"cuda_emulation.h\"'); print(rewrite(open(sys.argv[1]).read(), sys.argv[1]))" "$cu" >"$target"
  sources+=("$target")
done
g++ -std=c++20 -O1 -g -fsanitize=thread -ffp-contract=off -include tests/cuda_emulation/runtime_names.h \
  -Itests/cuda_emulation -Icsrc/common -Icsrc/microadam -Icsrc/adam_mini -I"$include" \
  "${sources[@]}" tests/cuda_emulation/runtime.cpp tests/cuda_emulation/tsan_driver.cpp -o "$out/tsan_driver"
TSAN_OPTIONS="halt_on_error=1 ${TSAN_OPTIONS:-}" "$out/tsan_driver"
