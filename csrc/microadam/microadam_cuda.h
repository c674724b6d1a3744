// Launchers of MicroAdam's CUDA kernels (microadam_cuda.cu), called by the C++ glue (microadam_cuda_ops.cpp).
// Raw pointers and sizes only, so that neither side needs the other's headers. `dtype` is a DtypeCode.
// `first_element`: where the random stream of stochastic rounding starts (a chunk's offset in its tensor).
// `stochastic_param`, `param_key`, `decay_key`: param_rounding="stochastic" and the streams of the update's and the
// decay's roundings of a 16-bit parameter.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace lit_microopt {
namespace microadam {

cudaError_t launch_ef_dequant_add(int dtype, void* values, const uint8_t* codes, const uint16_t* lows,
                                  const uint16_t* highs, int64_t numel, int64_t bucket_size, cudaStream_t stream);
cudaError_t launch_block_topk(int dtype, const void* values, int16_t* indices, uint16_t* kept, int64_t numel,
                              int64_t block_size, int64_t k_block, int64_t k_last, cudaStream_t stream);
cudaError_t launch_ef_quantize(int dtype, void* values, const int16_t* indices, int64_t columns, uint8_t* codes,
                               uint16_t* lows, uint16_t* highs, int64_t numel, int64_t bucket_size,
                               int64_t block_size, int64_t k_block, bool stochastic, uint32_t key,
                               int64_t first_element, cudaStream_t stream);
cudaError_t launch_window_adam_update(int dtype, void* values, const int16_t* indices, const uint16_t* window,
                                      const float* weights1, const float* weights2, int64_t rows, int64_t columns,
                                      int64_t numel, int64_t block_size, int64_t k_block, float c1, float c2,
                                      float eps, float lr, bool decays, float decay, bool stochastic_param,
                                      uint32_t param_key, uint32_t decay_key, cudaStream_t stream);

}  // namespace microadam
}  // namespace lit_microopt
