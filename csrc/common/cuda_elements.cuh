// The element types of the CUDA kernels, as raw storage with float32 loads and stores (round to nearest
// even), and a block-wide prefix sum. Only CUDA's own headers: .cu files compile quickly without PyTorch's.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "numerics.h"

namespace lit_microopt {

// The most blocks a launch uses; grid-stride loops cover any more work. The tests' emulated GPU sets a small
// number, so that every loop over blocks is exercised on small tensors.
#ifndef LIT_MICROOPT_MAX_GRID_BLOCKS
#define LIT_MICROOPT_MAX_GRID_BLOCKS (65535 * 16)
#endif
constexpr int64_t kMaxGridBlocks = LIT_MICROOPT_MAX_GRID_BLOCKS;

// Blocks of `threads` threads for `work` items, one item a thread, at least one and at most kMaxGridBlocks.
inline int grid_blocks(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<int>(blocks < kMaxGridBlocks ? (blocks > 0 ? blocks : 1) : kMaxGridBlocks);
}

// Dtype codes shared with the C++ glue: 0 float32, 1 bfloat16, 2 float16.
enum DtypeCode : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

template <int Code>
struct Element;

template <>
struct Element<kFloat32> {
  using storage = float;
  static __device__ __forceinline__ float load(float value) { return value; }
  static __device__ __forceinline__ float store(float value) { return value; }
};

template <>
struct Element<kBFloat16> {
  using storage = uint16_t;
  static __device__ __forceinline__ float load(uint16_t bits) { return bfloat16_to_float(bits); }
  static __device__ __forceinline__ uint16_t store(float value) { return float_to_bfloat16(value); }
};

template <>
struct Element<kFloat16> {
  using storage = uint16_t;
  static __device__ __forceinline__ float load(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }
  static __device__ __forceinline__ uint16_t store(float value) { return __half_as_ushort(__float2half_rn(value)); }
};

// `value` stored as Element<Code> with unbiased stochastic rounding, from the stream's number `random` in [0, 1)
// (numerics.h; the twin of cpu_rounding.h): float32 is the identity, a value the type holds exactly stays itself.
template <int Code>
__device__ __forceinline__ typename Element<Code>::storage store_stochastically(float value, float random) {
  if constexpr (Code == kBFloat16) {
    return stochastic_bfloat16(value, random);
  } else if constexpr (Code == kFloat16) {
    return stochastic_float16(value, Element<kFloat16>::store(value), random);
  } else {
    return value;
  }
}

// Calls `function.template operator()<Code>()` for a runtime dtype code (returns false for an unknown code).
template <typename Function>
bool dispatch_dtype(int code, Function&& function) {
  switch (code) {
    case kFloat32: function.template operator()<kFloat32>(); return true;
    case kBFloat16: function.template operator()<kBFloat16>(); return true;
    case kFloat16: function.template operator()<kFloat16>(); return true;
    default: return false;
  }
}

// Exclusive prefix sum of `value` over the thread block (blockDim.x a multiple of 32, at most 1024);
// `total` receives the block's sum. `scratch` holds 33 ints of shared memory. All threads must call it.
__device__ __forceinline__ int block_exclusive_sum(int value, int* total, int* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int inclusive = value;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int other = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    const int warp_total = lane < static_cast<int>(blockDim.x >> 5) ? scratch[lane] : 0;
    int warp_inclusive = warp_total;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int other = __shfl_up_sync(0xffffffffu, warp_inclusive, offset);
      if (lane >= offset) warp_inclusive += other;
    }
    scratch[lane] = warp_inclusive - warp_total;
    if (lane == 31) scratch[32] = warp_inclusive;
  }
  __syncthreads();
  const int result = scratch[warp] + inclusive - value;
  *total = scratch[32];
  __syncthreads();  // scratch is reused by the next call
  return result;
}

}  // namespace lit_microopt
