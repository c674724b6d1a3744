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

// One tensor of multi_adam_mini_update_'s single launch, in the metadata array the kernel reads from device memory.
struct MultiTensor {
  void* params;
  const void* grads;
  void* moments;
  const float* denominators;  // one per block row
  int64_t numel;
  int64_t first_chunk;  // its chunks of kMultiChunk elements start here in the launch's chunk numbering
  Divider rows;         // block rows
  Divider row_numel;    // elements of a block row
  int block_axis;
  Hyperparameters h;
};

// Elements of one chunk of the multi-tensor launch: the unit that a thread block takes at a time.
constexpr int64_t kMultiChunk = 4096;

// The element-wise pass of `count` tensors of one parameter dtype and one moment dtype in one launch; `tensors` is
// in device memory, `chunks` the chunks of all tensors together.
cudaError_t launch_multi_adam_mini_update(int param_dtype, int moment_dtype, const MultiTensor* tensors, int count,
                                          int64_t chunks, cudaStream_t stream);

}  // namespace adam_mini
}  // namespace lit_microopt
