// MicroAdam's per-element formulas and index arithmetic, shared by microadam_cpu.cpp and microadam_cuda.cu.
// Each line mirrors lit_microopt/ops/reference/microadam.py (steps of docs/microadam.md). Products are
// rounded before the following addition, as PyTorch's separate operations do: no fused multiply-add.
#pragma once

#include "../common/numerics.h"

namespace lit_microopt {
namespace microadam {

LMO_HOST_DEVICE float multiply(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);  // keeps nvcc from contracting a * b + c into one rounding
#else
  return a * b;
#endif
}

// Window column `column` belongs to block column / k_block; its entry is block-relative.
LMO_HOST_DEVICE int64_t window_position(int64_t column, int64_t relative, int64_t k_block, int64_t block_size) {
  return (column / k_block) * block_size + relative;
}

// Step 5: u = (hi - lo) / 15, in float32.
LMO_HOST_DEVICE float bucket_unit(float low, float high) { return (high - low) / 15.0f; }

// Q^-1(code) = lo + code * u.
LMO_HOST_DEVICE float dequantize(uint32_t code, float low, float unit) {
  return multiply(static_cast<float>(code), unit) + low;
}

// Step 5: clamp(floor((x - lo) / u + r), 0, 15); u == 0 gives code 0 (dividing 0 by infinity). For a
// non-negative number floor is truncation, which every CPU vectorises (floorf may be a library call).
LMO_HOST_DEVICE int32_t quantize(float value, float low, float unit, float offset) {
  const float safe_unit = unit > 0.0f ? unit : INFINITY;
  const float scaled = (value - low) / safe_unit + offset;
  const int32_t code = static_cast<int32_t>(scaled > 0.0f ? scaled : 0.0f);
  return code < 15 ? code : 15;
}

// Step 4: what stays in the error feedback of a kept entry, a - float(bf16(a)).
LMO_HOST_DEVICE float kept_remainder(float value) { return value - bfloat16_to_float(float_to_bfloat16(value)); }

// Step 6: u = c1 * S1 / (sqrt(c2 * S2) + eps), zero where the denominator is zero.
LMO_HOST_DEVICE float window_update(float sum1, float sum2, float c1, float c2, float eps) {
  const float denominator = sqrtf(multiply(c2, sum2)) + eps;
  return denominator > 0.0f ? multiply(c1, sum1) / denominator : 0.0f;
}

// Step 7: p - lr * u.
LMO_HOST_DEVICE float apply_update(float param, float lr, float update) { return param - multiply(lr, update); }

}  // namespace microadam
}  // namespace lit_microopt
