// Steps 2 to 5 keep the accumulator a = g + Q^-1(e) in float32 whatever the gradient's dtype (a float16
// gradient's error feedback would overflow in float16). Where the kernels work on a buffer rather than block by
// block, a bfloat16 or float16 gradient is processed in chunks of whole Top-K blocks and whole buckets, each
// copied into a float32 buffer: the transient memory stays bounded whatever the tensor's size.
#pragma once

#include <ATen/core/Tensor.h>

#include <numeric>

namespace lit_microopt {
namespace microadam {

constexpr int64_t kChunkElements = int64_t{1} << 22;  // about this many elements a chunk (16 MB of float32)

// One chunk: elements [start, start + length), window columns [first_column, first_column + columns), and the
// k_last of the chunk (the tensor's for the last chunk, else 0).
struct Chunk {
  int64_t start, length, first_column, columns, k_last;
};

// Calls visit(chunk) for consecutive chunks covering a tensor of `numel` elements; each starts on a Top-K block
// and a bucket boundary and holds about `chunk_elements` elements, at least lcm(block_size, bucket_size) (a
// tensor shorter than that is one chunk).
template <typename Visit>
void for_each_chunk(int64_t numel, int64_t block_size, int64_t k_block, int64_t k_last, int64_t bucket_size,
                    Visit&& visit, int64_t chunk_elements = kChunkElements) {
  const int64_t unit = std::lcm(block_size, bucket_size);
  const int64_t step = unit * std::max<int64_t>(1, chunk_elements / unit);
  for (int64_t start = 0; start < numel; start += step) {
    const int64_t length = std::min(step, numel - start);
    const bool last = start + length == numel;
    const int64_t chunk_k_last = last ? k_last : 0;
    const int64_t first_column = start / block_size * k_block;
    visit(Chunk{start, length, first_column, length / block_size * k_block + chunk_k_last, chunk_k_last});
  }
}

// The state of steps 2 to 5 that belongs to `chunk`: (error feedback, bucket min, bucket max, indices, values).
struct ChunkState {
  at::Tensor error_feedback, bucket_min, bucket_max, indices_row, values_row;

  ChunkState(const Chunk& chunk, int64_t bucket_size, const at::Tensor& error_feedback_, const at::Tensor& bucket_min_,
             const at::Tensor& bucket_max_, const at::Tensor& indices_row_, const at::Tensor& values_row_)
      : error_feedback(error_feedback_.narrow(0, chunk.start / 2, (chunk.length + 1) / 2)),
        bucket_min(bucket_min_.narrow(0, chunk.start / bucket_size, (chunk.length + bucket_size - 1) / bucket_size)),
        bucket_max(bucket_max_.narrow(0, chunk.start / bucket_size, (chunk.length + bucket_size - 1) / bucket_size)),
        indices_row(indices_row_.narrow(0, chunk.first_column, chunk.columns)),
        values_row(values_row_.narrow(0, chunk.first_column, chunk.columns)) {}
};

// Steps 2 to 5 in float32 through a backend's three steps, called with the arguments of its ops:
// dequant_add(a, error_feedback, bucket_min, bucket_max, bucket_size), topk(a, indices_row, values_row, block_size,
// k_block, k_last) and quantize(a, indices_row, error_feedback, bucket_min, bucket_max, bucket_size, block_size,
// k_block, stochastic, key, first_element): on the gradient buffer itself when it is float32, else on float32
// copies of its chunks.
template <typename DequantAdd, typename TopK, typename Quantize>
void compress_in_float32(const at::Tensor& accumulator, const at::Tensor& indices_row, const at::Tensor& values_row,
                         const at::Tensor& error_feedback, const at::Tensor& bucket_min, const at::Tensor& bucket_max,
                         int64_t bucket_size, int64_t block_size, int64_t k_block, int64_t k_last, bool stochastic,
                         int64_t key, DequantAdd&& dequant_add, TopK&& topk, Quantize&& quantize) {
  auto compress = [&](const Chunk& chunk) {
    at::Tensor a = accumulator.narrow(0, chunk.start, chunk.length).to(at::kFloat);  // no copy when float32
    ChunkState s(chunk, bucket_size, error_feedback, bucket_min, bucket_max, indices_row, values_row);
    dequant_add(a, s.error_feedback, s.bucket_min, s.bucket_max, bucket_size);
    topk(a, s.indices_row, s.values_row, block_size, k_block, chunk.k_last);
    quantize(a, s.indices_row, s.error_feedback, s.bucket_min, s.bucket_max, bucket_size, block_size, k_block,
             stochastic, key, chunk.start);
  };
  if (accumulator.scalar_type() == at::kFloat) {
    compress(Chunk{0, accumulator.numel(), 0, indices_row.numel(), k_last});
  } else {
    for_each_chunk(accumulator.numel(), block_size, k_block, k_last, bucket_size, compress);
  }
}

}  // namespace microadam
}  // namespace lit_microopt
