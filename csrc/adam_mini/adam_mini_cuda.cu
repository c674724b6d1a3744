// Adam-mini's element-wise pass on CUDA, the twin of adam_mini_cpu.cpp (formulas in adam_mini_math.h):
// one grid-stride pass reading p, g, m and the row's denominator, writing p and m.
#include "../common/cuda_elements.cuh"
#include "adam_mini_cuda.h"
#include "adam_mini_math.h"

namespace lit_microopt {
namespace adam_mini {
namespace {

constexpr int kThreads = 256;

// m stored in its dtype: rounded to nearest, or stochastically when it is narrower than the parameter.
template <int MomentCode>
__device__ __forceinline__ typename Element<MomentCode>::storage round_moment(float value, const Hyperparameters& h,
                                                                             int64_t index) {
  return h.stochastic ? store_stochastically<MomentCode>(value, uniform(h.key, index))
                      : Element<MomentCode>::store(value);
}

// p stored in its dtype: rounded to nearest, or with param_rounding="stochastic" stochastically from the stream
// `key` (float32 has nothing to round).
template <int ParamCode>
__device__ __forceinline__ typename Element<ParamCode>::storage round_param(float value, const Hyperparameters& h,
                                                                           uint32_t key, int64_t index) {
  if constexpr (ParamCode == kFloat32) {
    return value;
  } else {
    return h.stochastic_param ? store_stochastically<ParamCode>(value, uniform(key, index))
                              : Element<ParamCode>::store(value);
  }
}

template <int ParamCode, int MomentCode>
__global__ void adam_mini_kernel(typename Element<ParamCode>::storage* params,
                                 const typename Element<ParamCode>::storage* grads,
                                 typename Element<MomentCode>::storage* moments, const float* denominators,
                                 int64_t numel, Divider rows, Divider row_numel, int block_axis, Hyperparameters h) {
  using P = Element<ParamCode>;
  using M = Element<MomentCode>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // Axis 0: rows of row_numel elements; axis 1: the row is the column index, i mod rows.
    const int64_t row = block_axis == 0 ? row_numel.divide(i) : i - rows.divide(i) * rows.divisor;
    float p = P::load(params[i]);
    if (h.decays) p = P::load(round_param<ParamCode>(p * h.decay, h, h.decay_key, i));  // weight decay rounds p
    const float updated = lerp(M::load(moments[i]), P::load(grads[i]), h.weight);
    // m in the parameter's dtype is rounded before it is used, as the reference's in-place lerp_ does.
    const float used = ParamCode == MomentCode ? M::load(M::store(updated)) : updated;
    params[i] = round_param<ParamCode>(apply_update(p, used, denominators[row], h.step_size), h, h.param_key, i);
    moments[i] = round_moment<MomentCode>(updated, h, i);
  }
}

// The same element pass over the chunks of many tensors: each block takes chunks in turn (grid stride), finds the
// tensor of its chunk by a binary search over their first chunks (the same for all its threads), and its threads
// stride through the chunk's elements. Tensor choices (weight decay, keys) are read per tensor, dtypes are the
// launch's.
template <int ParamCode, int MomentCode>
__global__ void multi_adam_mini_kernel(const MultiTensor* tensors, int count, int64_t chunks) {
  using P = Element<ParamCode>;
  using M = Element<MomentCode>;
  for (int64_t chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
    int low = 0, high = count - 1;
    while (low < high) {  // the last tensor whose first chunk is <= chunk
      const int middle = (low + high + 1) / 2;
      if (tensors[middle].first_chunk <= chunk) low = middle; else high = middle - 1;
    }
    const MultiTensor t = tensors[low];  // a copy: the stores below cannot be proven not to alias it
    const Hyperparameters& h = t.h;
    auto* params = static_cast<typename P::storage*>(t.params);
    const auto* grads = static_cast<const typename P::storage*>(t.grads);
    auto* moments = static_cast<typename M::storage*>(t.moments);
    const int64_t begin = (chunk - t.first_chunk) * kMultiChunk;
    const int64_t end = begin + kMultiChunk < t.numel ? begin + kMultiChunk : t.numel;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const int64_t row = t.block_axis == 0 ? t.row_numel.divide(i) : i - t.rows.divide(i) * t.rows.divisor;
      float p = P::load(params[i]);
      if (h.decays) p = P::load(round_param<ParamCode>(p * h.decay, h, h.decay_key, i));
      const float updated = lerp(M::load(moments[i]), P::load(grads[i]), h.weight);
      const float used = ParamCode == MomentCode ? M::load(M::store(updated)) : updated;
      params[i] = round_param<ParamCode>(apply_update(p, used, t.denominators[row], h.step_size), h, h.param_key, i);
      moments[i] = round_moment<MomentCode>(updated, h, i);
    }
  }
}

}  // namespace

cudaError_t launch_multi_adam_mini_update(int param_dtype, int moment_dtype, const MultiTensor* tensors, int count,
                                          int64_t chunks, cudaStream_t stream) {
  if (count == 0 || chunks == 0) return cudaSuccess;
  const int blocks = static_cast<int>(chunks < kMaxGridBlocks ? chunks : kMaxGridBlocks);
  bool known = false;
  dispatch_dtype(param_dtype, [&]<int ParamCode>() {
    known = dispatch_dtype(moment_dtype, [&]<int MomentCode>() {
      multi_adam_mini_kernel<ParamCode, MomentCode><<<blocks, kThreads, 0, stream>>>(tensors, count, chunks);
    });
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t launch_adam_mini_update(int param_dtype, int moment_dtype, void* params, const void* grads,
                                    void* moments, const float* denominators, int64_t numel, int64_t rows,
                                    int block_axis, const Hyperparameters& h, cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  const int blocks = grid_blocks(numel, kThreads);
  bool known = false;
  dispatch_dtype(param_dtype, [&]<int ParamCode>() {
    known = dispatch_dtype(moment_dtype, [&]<int MomentCode>() {
      adam_mini_kernel<ParamCode, MomentCode><<<blocks, kThreads, 0, stream>>>(
          static_cast<typename Element<ParamCode>::storage*>(params),
          static_cast<const typename Element<ParamCode>::storage*>(grads),
          static_cast<typename Element<MomentCode>::storage*>(moments), denominators, numel, Divider(rows),
          Divider(numel / rows), block_axis, h);
    });
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace adam_mini
}  // namespace lit_microopt
