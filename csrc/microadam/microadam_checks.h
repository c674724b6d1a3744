// The argument checks of MicroAdam's ops, shared by the CPU kernels (microadam_cpu.cpp), the CUDA glue
// (microadam_cuda_ops.cpp) and the tests' emulated CUDA ops: a kernel never runs on sizes that would make it
// divide by zero, read state that no thread wrote or write outside a tensor. Window indices themselves are
// trusted here: the optimizer range-checks them once, when a state is loaded.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "../common/tensor_checks.h"

namespace lit_microopt {
namespace microadam {

constexpr int64_t kMaxBlockSize = 32768;  // block-relative indices are int16

// The layout of the Top-K blocks of `numel` elements: 1 <= k_block <= block_size <= 32768, and `k_last`, what
// the last, shorter block keeps, in [1, min(k_block, its length)] (0 when block_size divides numel). Returns
// the number of blocks.
inline int64_t check_topk_layout(int64_t numel, int64_t block_size, int64_t k_block, int64_t k_last) {
  TORCH_CHECK_VALUE(block_size >= 1 && block_size <= kMaxBlockSize, "lit_microopt: block_size must be in [1, ",
                    kMaxBlockSize, "], got ", block_size);
  TORCH_CHECK_VALUE(k_block >= 1 && k_block <= block_size, "lit_microopt: k_block must be in [1, block_size = ",
                    block_size, "], got ", k_block);
  const int64_t last_length = numel % block_size;
  if (last_length == 0) {
    TORCH_CHECK_VALUE(k_last == 0, "lit_microopt: k_last must be 0 when block_size ", block_size, " divides the ",
                      numel, " elements, got ", k_last);
  } else {
    const int64_t most = k_block < last_length ? k_block : last_length;
    TORCH_CHECK_VALUE(k_last >= 1 && k_last <= most, "lit_microopt: k_last must be in [1, ", most,
                      "] for a last block of ", last_length, " elements, got ", k_last);
  }
  return numel / block_size + (last_length > 0 ? 1 : 0);
}

// The same for ops that receive the window's number of columns instead of k_last; returns the blocks.
inline int64_t check_window_columns(int64_t numel, int64_t block_size, int64_t k_block, int64_t columns,
                                    const char* name) {
  TORCH_CHECK_VALUE(block_size >= 1 && block_size <= kMaxBlockSize, "lit_microopt: block_size must be in [1, ",
                    kMaxBlockSize, "], got ", block_size);
  TORCH_CHECK_VALUE(k_block >= 1 && k_block <= block_size, "lit_microopt: k_block must be in [1, block_size = ",
                    block_size, "], got ", k_block);
  const int64_t full_blocks = numel / block_size, last_length = numel % block_size;
  const int64_t k_last = columns - full_blocks * k_block;
  const int64_t most = last_length == 0 ? 0 : (k_block < last_length ? k_block : last_length);
  const int64_t least = last_length == 0 ? 0 : 1;
  TORCH_CHECK_VALUE(k_last >= least && k_last <= most, "lit_microopt: ", name, " has ", columns,
                    " columns, but a window of ", numel, " elements in blocks of ", block_size, " keeping ", k_block,
                    " per block has ", full_blocks * k_block + least, " to ", full_blocks * k_block + most);
  return full_blocks + (last_length > 0 ? 1 : 0);
}

// Step 5's state for the `numel` elements of `accumulator`: ceil(numel / 2) code bytes and one bfloat16
// (min, max) pair per bucket of `bucket_size` (even, >= 2) elements.
inline void check_bucket_state(const at::Tensor& accumulator, const at::Tensor& error_feedback,
                               const at::Tensor& bucket_min, const at::Tensor& bucket_max, int64_t bucket_size) {
  check_operand(accumulator, "accumulator", accumulator);
  check_operand(error_feedback, "error_feedback", accumulator, at::kByte);
  check_operand(bucket_min, "bucket_min", accumulator, at::kBFloat16);
  check_operand(bucket_max, "bucket_max", accumulator, at::kBFloat16);
  TORCH_CHECK_VALUE(bucket_size >= 2 && bucket_size % 2 == 0, "lit_microopt: bucket_size must be even and >= 2, got ",
                    bucket_size);
  const int64_t numel = accumulator.numel();
  const int64_t buckets = (numel + bucket_size - 1) / bucket_size;
  TORCH_CHECK_VALUE(error_feedback.numel() == (numel + 1) / 2, "lit_microopt: error_feedback must hold ceil(d/2) = ",
                    (numel + 1) / 2, " bytes, got ", error_feedback.numel());
  TORCH_CHECK_VALUE(bucket_min.numel() == buckets && bucket_max.numel() == buckets,
                    "lit_microopt: bucket_min and bucket_max must hold ceil(d/bucket_size) = ", buckets,
                    " entries, got ", bucket_min.numel(), " and ", bucket_max.numel());
}

// One window row (block_topk's output) for `accumulator`; returns the number of Top-K blocks.
inline int64_t check_window_row(const at::Tensor& accumulator, const at::Tensor& indices_row,
                                const at::Tensor& values_row, int64_t block_size, int64_t k_block, int64_t k_last) {
  check_operand(accumulator, "accumulator", accumulator);
  check_operand(indices_row, "indices_row", accumulator, at::kShort);
  check_operand(values_row, "values_row", accumulator, at::kBFloat16);
  const int64_t numel = accumulator.numel();
  const int64_t blocks = check_topk_layout(numel, block_size, k_block, k_last);
  const int64_t columns = numel / block_size * k_block + k_last;
  TORCH_CHECK_VALUE(indices_row.numel() == columns && values_row.numel() == columns,
                    "lit_microopt: indices_row and values_row must hold full_blocks * k_block + k_last = ", columns,
                    " entries, got ", indices_row.numel(), " and ", values_row.numel());
  return blocks;
}

// The window of steps 6 and 7: (rows, k) indices and values, one pair of row weights per row. Returns rows.
inline int64_t check_window(const at::Tensor& param, const at::Tensor& window_indices,
                            const at::Tensor& window_values, const at::Tensor& row_weights1,
                            const at::Tensor& row_weights2, int64_t block_size, int64_t k_block) {
  check_operand(param, "param", param);
  check_operand(window_indices, "window_indices", param, at::kShort);
  check_operand(window_values, "window_values", param, at::kBFloat16);
  check_operand(row_weights1, "row_weights1", param, at::kFloat);
  check_operand(row_weights2, "row_weights2", param, at::kFloat);
  TORCH_CHECK_VALUE(window_indices.dim() == 2 && window_values.sizes() == window_indices.sizes(),
                    "lit_microopt: window_indices and window_values must be (rows, k) matrices of the same shape");
  const int64_t rows = window_indices.size(0);
  TORCH_CHECK_VALUE(row_weights1.numel() == rows && row_weights2.numel() == rows,
                    "lit_microopt: row_weights1 and row_weights2 must hold one weight per window row (", rows, ")");
  check_window_columns(param.numel(), block_size, k_block, window_indices.size(1), "window_indices");
  return rows;
}

}  // namespace microadam
}  // namespace lit_microopt
