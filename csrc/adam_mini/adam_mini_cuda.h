// Launcher of Adam-mini's CUDA kernel (adam_mini_cuda.cu), called by adam_mini_cuda_ops.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "adam_mini_math.h"

namespace lit_microopt {
namespace adam_mini {

cudaError_t launch_adam_mini_update(int param_dtype, int moment_dtype, void* params, const void* grads,
                                    void* moments, const float* denominators, int64_t numel, int64_t rows,
                                    int block_axis, const Hyperparameters& h, cudaStream_t stream);

}  // namespace adam_mini
}  // namespace lit_microopt
