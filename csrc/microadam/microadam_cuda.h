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

// The list launchers of microadam_step_: each kernel launched once over the items of a whole list, which lie in
// device memory (one host-to-device copy per call, made by the glue). A launch's work units of one kind (bytes of
// codes, Top-K blocks, window columns, buckets, elements) are the items' units concatenated in item order:
// `first[kind]` is where an item's units start, and a thread (warp, thread block) finds the item of its unit by
// bisection over `first`. An item with no units of a kind is skipped for that kind.
enum CompressWork : int { kCompressBytes = 0, kCompressBlocks = 1, kCompressColumns = 2, kCompressBuckets = 3 };
enum UpdateWork : int { kUpdateElements = 0, kUpdateBlocks = 1 };

// Steps 2 to 5 of one tensor, or of one chunk of whole Top-K blocks and buckets of it: the float32 accumulator is
// the gradient itself for a float32 gradient (source == accumulator), else a scratch range that step 2 fills
// with float32(g) + Q^-1(e).
struct CompressItem {
  const void* source;  // the gradient's elements, of dtype `source_code`
  float* accumulator;
  uint8_t* codes;  // this chunk's error feedback, bucket bounds and window row columns
  uint16_t* lows;
  uint16_t* highs;
  int16_t* indices;
  uint16_t* kept;
  int64_t numel;          // elements of the chunk
  int64_t k_last;         // the chunk's k_last (0 when it has no short block)
  int64_t first_element;  // the chunk's offset in its tensor: where its random stream starts
  int64_t first[4];       // by CompressWork
  uint32_t key;           // the tensor's error-feedback stream at this step
  int32_t source_code;    // DtypeCode of the gradient
};

// Steps 6 and 7 of one tensor: its parameter and its window's filled rows.
struct UpdateItem {
  void* param;  // of dtype `param_code`
  const int16_t* indices;
  const uint16_t* window;
  const float* weights1;  // beta1^age and beta2^age of the `rows` filled rows (device memory)
  const float* weights2;
  int64_t rows, columns, numel;
  int64_t first[2];  // by UpdateWork
  float c1, c2;
  uint32_t param_key, decay_key;
  int32_t param_code;
  int32_t unused = 0;  // no padding bytes of unspecified value in the copied metadata
};

// `items` (device memory) and `count` items; `totals[kind]` (host) the launch's units of each CompressWork kind.
cudaError_t launch_compress_list(const CompressItem* items, int count, const int64_t* totals, int64_t block_size,
                                 int64_t k_block, int64_t bucket_size, bool stochastic, cudaStream_t stream);
cudaError_t launch_update_list(const UpdateItem* items, int count, int64_t elements, int64_t blocks,
                               int64_t block_size, int64_t k_block, float eps, float lr, bool decays, float decay,
                               bool stochastic_param, cudaStream_t stream);

}  // namespace microadam
}  // namespace lit_microopt
