// MicroAdam's ops on CUDA: the steps of lit_microopt/ops/reference/microadam.py with the formulas of
// microadam_math.h (shared with the CPU kernels). Launchers return the launch's cudaError_t; the C++ glue
// (microadam_cuda_ops.cpp) turns an error into a Python exception.
#include "../common/cuda_elements.cuh"
#include "microadam_cuda.h"
#include "microadam_math.h"

namespace lit_microopt {
namespace microadam {
namespace {

constexpr int kThreads = 256;
constexpr int kStagedIndices = 4096;  // window update: a Top-K block's indices staged in shared memory

int blocks_for(int64_t work, int per_block = kThreads) { return grid_blocks(work, per_block); }

// Step 2: a += Q^-1(e); one thread per byte of codes (two elements of one bucket: buckets are even).
template <int Code>
__global__ void dequant_add_kernel(typename Element<Code>::storage* values, const uint8_t* codes,
                                   const uint16_t* lows, const uint16_t* highs, int64_t numel, Divider bucket_size) {
  const int64_t bytes = (numel + 1) / 2;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < bytes;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint32_t byte = codes[j];
    const int64_t bucket = bucket_size.divide(2 * j);
    const float low = bfloat16_to_float(lows[bucket]);
    const float unit = bucket_unit(low, bfloat16_to_float(highs[bucket]));
    for (int half = 0; half < 2; ++half) {
      const int64_t i = 2 * j + half;
      if (i >= numel) break;
      const uint32_t code = half == 0 ? byte >> 4 : byte & 0xfu;
      values[i] = Element<Code>::store(Element<Code>::load(values[i]) + dequantize(code, low, unit));
    }
  }
}

// Step 3: each thread block takes Top-K blocks in turn (a grid-stride loop: any number of blocks). A three-digit
// radix select (11, 11 and 9 bits of |a|'s bits) finds the k-th largest magnitude exactly; a block-wide prefix
// sum then writes the kept entries in position order, ties to the lowest positions, exactly as the CPU kernel
// and the reference do.
template <int Code>
__global__ void block_topk_kernel(const typename Element<Code>::storage* values, int16_t* indices, uint16_t* kept,
                                  int64_t numel, int64_t block_size, int64_t k_block, int64_t k_last,
                                  int64_t full_blocks) {
  __shared__ int histogram[2048];
  __shared__ int scratch[33];
  __shared__ uint32_t selected_prefix;
  __shared__ int selected_needed;
  const int64_t blocks = full_blocks + (k_last > 0 ? 1 : 0);
  for (int64_t block = blockIdx.x; block < blocks; block += gridDim.x) {
    const int64_t start = block * block_size;
    const int64_t length = min(block_size, numel - start);
    const int k = static_cast<int>(block < full_blocks ? k_block : k_last);
    auto magnitude = [&](int64_t j) { return float_bits(Element<Code>::load(values[start + j])) & 0x7fffffffu; };

    uint32_t prefix = 0, prefix_mask = 0;
    int needed = k;  // how many of the entries matching `prefix` are still to be kept, largest first
    const int shifts[3] = {20, 9, 0};
    const int widths[3] = {11, 11, 9};
    for (int digit = 0; digit < 3; ++digit) {
      const int shift = shifts[digit], bins = 1 << widths[digit];
      for (int bin = threadIdx.x; bin < bins; bin += blockDim.x) histogram[bin] = 0;
      __syncthreads();
      for (int64_t j = threadIdx.x; j < length; j += blockDim.x) {
        const uint32_t key = magnitude(j);
        if ((key & prefix_mask) == prefix) atomicAdd(&histogram[(key >> shift) & (bins - 1)], 1);
      }
      __syncthreads();
      // Each thread sums a run of bins, highest bins first; a prefix sum over threads finds the crossing bin.
      const int per_thread = (bins + blockDim.x - 1) / blockDim.x;
      const int high = bins - 1 - threadIdx.x * per_thread;
      int run = 0;
      for (int b = 0; b < per_thread && high - b >= 0; ++b) run += histogram[high - b];
      int unused;
      int above = block_exclusive_sum(run, &unused, scratch);
      if (above < needed && above + run >= needed) {
        int bin = high;
        while (above + histogram[bin] < needed) above += histogram[bin--];
        selected_needed = needed - above;
        selected_prefix = prefix | (static_cast<uint32_t>(bin) << shift);
      }
      __syncthreads();
      needed = selected_needed;
      prefix = selected_prefix;
      prefix_mask |= static_cast<uint32_t>(bins - 1) << shift;
      __syncthreads();
    }
    const uint32_t threshold = prefix;  // the k-th largest |a|; `needed` entries equal to it are kept

    int64_t column = block * k_block;
    int ties_left = needed;
    for (int64_t chunk = 0; chunk < length; chunk += blockDim.x) {
      const int64_t j = chunk + threadIdx.x;
      const uint32_t key = j < length ? magnitude(j) : 0u;
      const bool above = j < length && key > threshold;
      const bool tie = j < length && key == threshold;
      int ties_here;
      const int tie_rank = block_exclusive_sum(tie ? 1 : 0, &ties_here, scratch);
      const bool keep = above || (tie && tie_rank < ties_left);
      int kept_here;
      const int rank = block_exclusive_sum(keep ? 1 : 0, &kept_here, scratch);
      if (keep) {
        indices[column + rank] = static_cast<int16_t>(j);
        kept[column + rank] = float_to_bfloat16(Element<Code>::load(values[start + j]));
      }
      column += kept_here;
      ties_left -= min(ties_here, ties_left);
    }
    __syncthreads();  // the next block's histogram reuses shared memory
  }
}

// Step 4: a[i] -= float(bf16(a[i])) at the kept positions (distinct within a row).
template <int Code>
__global__ void remove_kept_kernel(typename Element<Code>::storage* values, const int16_t* indices, int64_t columns,
                                   int64_t block_size, Divider k_block) {
  for (int64_t column = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; column < columns;
       column += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t position = k_block.divide(column) * block_size + indices[column];
    values[position] = Element<Code>::store(kept_remainder(Element<Code>::load(values[position])));
  }
}

// Step 5: one warp per bucket: min and max, outward bfloat16 bounds, then two codes per byte.
template <int Code>
__global__ void quantize_kernel(const typename Element<Code>::storage* values, uint8_t* codes, uint16_t* lows,
                                uint16_t* highs, int64_t numel, int64_t bucket_size, bool stochastic, uint32_t key,
                                int64_t first_element) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  const int64_t buckets = (numel + bucket_size - 1) / bucket_size;
  for (int64_t bucket = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5; bucket < buckets;
       bucket += warps) {
    const int64_t start = bucket * bucket_size, stop = min(numel, start + bucket_size);
    float smallest = INFINITY, largest = -INFINITY;
    for (int64_t i = start + lane; i < stop; i += 32) {
      const float value = Element<Code>::load(values[i]);
      smallest = value < smallest ? value : smallest;
      largest = value > largest ? value : largest;
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float other_small = __shfl_xor_sync(0xffffffffu, smallest, offset);
      const float other_large = __shfl_xor_sync(0xffffffffu, largest, offset);
      smallest = other_small < smallest ? other_small : smallest;
      largest = other_large > largest ? other_large : largest;
    }
    const uint16_t low_bits = bfloat16_outward(smallest, /*up=*/false);
    const uint16_t high_bits = bfloat16_outward(largest, /*up=*/true);
    if (lane == 0) {
      lows[bucket] = low_bits;
      highs[bucket] = high_bits;
    }
    const float low = bfloat16_to_float(low_bits);
    const float unit = bucket_unit(low, bfloat16_to_float(high_bits));
    for (int64_t i = start + 2 * lane; i < stop; i += 64) {
      const float first_offset = stochastic ? uniform(key, first_element + i) : 0.5f;
      uint32_t byte = static_cast<uint32_t>(quantize(Element<Code>::load(values[i]), low, unit, first_offset)) << 4;
      if (i + 1 < stop) {
        const float second_offset = stochastic ? uniform(key, first_element + i + 1) : 0.5f;
        byte |= static_cast<uint32_t>(quantize(Element<Code>::load(values[i + 1]), low, unit, second_offset));
      }
      codes[i >> 1] = static_cast<uint8_t>(byte);
    }
  }
}

// p stored in its dtype: rounded to nearest, or with param_rounding="stochastic" stochastically, element `index`
// drawing from the stream `key` (float32 has nothing to round).
template <int Code>
__device__ __forceinline__ typename Element<Code>::storage round_param(float value, bool stochastic, uint32_t key,
                                                                      int64_t index) {
  if constexpr (Code == kFloat32) {
    return value;
  } else {
    return stochastic ? store_stochastically<Code>(value, uniform(key, index)) : Element<Code>::store(value);
  }
}

// Step 7's decay: p *= 1 - lr * weight_decay, every element.
template <int Code>
__global__ void decay_kernel(typename Element<Code>::storage* values, int64_t numel, float factor, bool stochastic,
                             uint32_t key) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    values[i] = round_param<Code>(Element<Code>::load(values[i]) * factor, stochastic, key, i);
  }
}

// The column of `position` among the `count` ascending block-relative indices of one window row, or -1.
__device__ __forceinline__ int find_position(const int16_t* row, int count, int position) {
  int low = 0, high = count;
  while (low < high) {
    const int middle = (low + high) >> 1;
    if (row[middle] < position) {
      low = middle + 1;
    } else {
      high = middle;
    }
  }
  return low < count && row[low] == position ? low : -1;
}

// Steps 6 and 7: each thread block takes Top-K blocks in turn. One thread per window entry (row, column) of the
// block: the entry in the first row that holds its position sums the position's entries in row order (the
// reference's order: the result is the same bits on every run) and updates the position once. Rows of a block
// are ascending (block_topk writes them so; loaded states are checked), so each row is searched by bisection.
template <int Code>
__global__ void window_update_kernel(typename Element<Code>::storage* values, const int16_t* indices,
                                     const uint16_t* window, const float* weights1, const float* weights2,
                                     int64_t rows, int64_t columns, int64_t block_size, int64_t k_block,
                                     int64_t blocks, float c1, float c2, float eps, float lr, bool stochastic,
                                     uint32_t key) {
  __shared__ int16_t staged[kStagedIndices];
  for (int64_t block = blockIdx.x; block < blocks; block += gridDim.x) {
    const int64_t first = block * k_block;
    const int block_columns = static_cast<int>(min(columns, first + k_block) - first);
    const int64_t entries = rows * block_columns;
    const bool fits = entries <= kStagedIndices;
    if (fits) {  // the block's indices as a (rows, block_columns) matrix in shared memory
      for (int64_t row = 0; row < rows; ++row) {
        for (int column = threadIdx.x; column < block_columns; column += blockDim.x) {
          staged[row * block_columns + column] = indices[row * columns + first + column];
        }
      }
    }
    __syncthreads();
    auto row_indices = [&](int64_t row) {
      return fits ? staged + row * block_columns : indices + row * columns + first;
    };
    typename Element<Code>::storage* target = values + block * block_size;
    // (row, column) of this thread's first entry; then steps of blockDim.x entries without dividing.
    int64_t row = threadIdx.x / block_columns;
    int column = static_cast<int>(threadIdx.x % block_columns);
    for (; row < rows; column += blockDim.x, row += column / block_columns, column %= block_columns) {
      const int position = row_indices(row)[column];
      float sum1 = 0.0f, sum2 = 0.0f;
      bool owner = true;
      for (int64_t other = 0; other < rows; ++other) {
        const int found = other == row ? column : find_position(row_indices(other), block_columns, position);
        if (found < 0) continue;
        if (other < row) {  // an earlier row holds the position: that entry updates it
          owner = false;
          break;
        }
        const float value = bfloat16_to_float(window[other * columns + first + found]);
        sum1 += multiply(value, weights1[other]);
        sum2 += multiply(multiply(value, value), weights2[other]);
      }
      if (!owner) continue;
      const float update = window_update(sum1, sum2, c1, c2, eps);
      target[position] = round_param<Code>(apply_update(Element<Code>::load(target[position]), lr, update),
                                           stochastic, key, block * block_size + position);
    }
    __syncthreads();  // the next block restages
  }
}

}  // namespace

cudaError_t launch_ef_dequant_add(int dtype, void* values, const uint8_t* codes, const uint16_t* lows,
                                  const uint16_t* highs, int64_t numel, int64_t bucket_size, cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  const bool known = dispatch_dtype(dtype, [&]<int Code>() {
    dequant_add_kernel<Code><<<blocks_for((numel + 1) / 2), kThreads, 0, stream>>>(
        static_cast<typename Element<Code>::storage*>(values), codes, lows, highs, numel, Divider(bucket_size));
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t launch_block_topk(int dtype, const void* values, int16_t* indices, uint16_t* kept, int64_t numel,
                              int64_t block_size, int64_t k_block, int64_t k_last, cudaStream_t stream) {
  const int64_t full_blocks = numel / block_size;
  const int64_t blocks = full_blocks + (k_last > 0 ? 1 : 0);
  if (blocks == 0) return cudaSuccess;
  const bool known = dispatch_dtype(dtype, [&]<int Code>() {
    block_topk_kernel<Code><<<blocks_for(blocks, 1), kThreads, 0, stream>>>(
        static_cast<const typename Element<Code>::storage*>(values), indices, kept, numel, block_size, k_block,
        k_last, full_blocks);
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t launch_ef_quantize(int dtype, void* values, const int16_t* indices, int64_t columns, uint8_t* codes,
                               uint16_t* lows, uint16_t* highs, int64_t numel, int64_t bucket_size,
                               int64_t block_size, int64_t k_block, bool stochastic, uint32_t key,
                               int64_t first_element, cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  const int64_t buckets = (numel + bucket_size - 1) / bucket_size;
  const bool known = dispatch_dtype(dtype, [&]<int Code>() {
    using storage = typename Element<Code>::storage;
    if (columns > 0) {
      remove_kept_kernel<Code><<<blocks_for(columns), kThreads, 0, stream>>>(
          static_cast<storage*>(values), indices, columns, block_size, Divider(k_block));
    }
    quantize_kernel<Code><<<blocks_for(buckets * 32), kThreads, 0, stream>>>(
        static_cast<const storage*>(values), codes, lows, highs, numel, bucket_size, stochastic, key, first_element);
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

cudaError_t launch_window_adam_update(int dtype, void* values, const int16_t* indices, const uint16_t* window,
                                      const float* weights1, const float* weights2, int64_t rows, int64_t columns,
                                      int64_t numel, int64_t block_size, int64_t k_block, float c1, float c2,
                                      float eps, float lr, bool decays, float decay, bool stochastic_param,
                                      uint32_t param_key, uint32_t decay_key, cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  const int64_t blocks = (columns + k_block - 1) / k_block;
  const bool known = dispatch_dtype(dtype, [&]<int Code>() {
    using storage = typename Element<Code>::storage;
    if (decays) {
      decay_kernel<Code><<<blocks_for(numel), kThreads, 0, stream>>>(static_cast<storage*>(values), numel, decay,
                                                                     stochastic_param, decay_key);
    }
    if (blocks > 0 && rows > 0) {
      window_update_kernel<Code><<<blocks_for(blocks, 1), kThreads, 0, stream>>>(
          static_cast<storage*>(values), indices, window, weights1, weights2, rows, columns, block_size, k_block,
          blocks, c1, c2, eps, lr, stochastic_param, param_key);
    }
  });
  return known ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace microadam
}  // namespace lit_microopt
