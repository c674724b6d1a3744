// Adam-mini's element-wise pass on CUDA, the twin of adam_mini_cpu.cpp (formulas in adam_mini_math.h):
// one grid-stride pass reading p, g, m and the row's denominator, writing p and m.
#include "../common/cuda_elements.cuh"
#include "adam_mini_cuda.h"
#include "adam_mini_math.h"

namespace lit_microopt {
namespace adam_mini {
namespace {

constexpr int kThreads = 256;

template <int MomentCode>
__device__ __forceinline__ typename Element<MomentCode>::storage round_moment(float value, const Hyperparameters& h,
                                                                             int64_t index) {
  if constexpr (MomentCode == kBFloat16) {
    return h.stochastic ? stochastic_bfloat16(value, uniform(h.key, index)) : Element<kBFloat16>::store(value);
  } else if constexpr (MomentCode == kFloat16) {
    const uint16_t nearest = Element<kFloat16>::store(value);
    if (!h.stochastic) return nearest;
    const float nearest_value = Element<kFloat16>::load(nearest);
    const uint16_t neighbour = bfloat16_next(nearest, value - nearest_value > 0.0f);  // sign-magnitude, as bf16
    return take_neighbour(value, nearest_value, Element<kFloat16>::load(neighbour), uniform(h.key, index)) ? neighbour
                                                                                                           : nearest;
  } else {
    return value;
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
    if (h.decays) p = P::load(P::store(p * h.decay));  // weight decay rounds p
    const float updated = lerp(M::load(moments[i]), P::load(grads[i]), h.weight);
    // m in the parameter's dtype is rounded before it is used, as the reference's in-place lerp_ does.
    const float used = ParamCode == MomentCode ? M::load(M::store(updated)) : updated;
    params[i] = P::store(apply_update(p, used, denominators[row], h.step_size));
    moments[i] = round_moment<MomentCode>(updated, h, i);
  }
}

}  // namespace

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
