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

// Each step's work on one unit (a byte of codes, a Top-K block, a window column, a bucket, an element) is a device
// function, called by the kernel of the per-tensor op (a grid-stride loop over one tensor's units) and by the
// list kernel of microadam_step_ (a grid-stride loop over the units of every item of a list): one copy of each
// step's arithmetic for both.

// The kernel's element type chosen at run time, for a list whose items differ in dtype: one launch for them all.
template <typename Function>
__device__ __forceinline__ void dispatch_dtype_device(int code, Function&& function) {
  if (code == kBFloat16) {
    function.template operator()<kBFloat16>();
  } else if (code == kFloat16) {
    function.template operator()<kFloat16>();
  } else {
    function.template operator()<kFloat32>();  // the glue passes only the three codes
  }
}

// The item of a list launch that holds unit `unit` of kind `kind`: the last one whose first[kind] <= unit.
template <typename Item>
__device__ __forceinline__ int item_of(const Item* items, int count, int kind, int64_t unit) {
  int low = 0, high = count - 1;
  while (low < high) {
    const int middle = (low + high + 1) >> 1;
    if (items[middle].first[kind] <= unit) {
      low = middle;
    } else {
      high = middle - 1;
    }
  }
  return low;
}

// A grid-stride loop over the `total` units of kind `kind` of a list launch, starting at `unit` in steps of
// `stride`: run(item, local, units) steps `local` (the unit's index within the item) through the item's
// `units` units, so that the item is looked up once per item a thread visits, not once per unit.
template <typename Item, typename Run>
__device__ __forceinline__ void for_each_item_unit(const Item* items, int count, int kind, int64_t total,
                                                   int64_t unit, Run&& run) {
  while (unit < total) {
    const int index = item_of(items, count, kind, unit);
    const Item& item = items[index];
    const int64_t first = item.first[kind];
    const int64_t end = index + 1 < count ? items[index + 1].first[kind] : total;
    int64_t local = unit - first;
    run(item, local, end - first);
    unit = first + local;
  }
}

// Step 2 for byte j of the codes: a[2j], a[2j + 1] = g + Q^-1(e) (two elements of one bucket: buckets are even).
// `source` holds g; it is `values` itself for the per-tensor op.
template <int SourceCode, int Code>
__device__ __forceinline__ void dequant_add_byte(const typename Element<SourceCode>::storage* source,
                                                 typename Element<Code>::storage* values, const uint8_t* codes,
                                                 const uint16_t* lows, const uint16_t* highs, int64_t numel,
                                                 const Divider& bucket_size, int64_t j) {
  const uint32_t byte = codes[j];
  const int64_t bucket = bucket_size.divide(2 * j);
  const float low = bfloat16_to_float(lows[bucket]);
  const float unit = bucket_unit(low, bfloat16_to_float(highs[bucket]));
  for (int half = 0; half < 2; ++half) {
    const int64_t i = 2 * j + half;
    if (i >= numel) break;
    const uint32_t code = half == 0 ? byte >> 4 : byte & 0xfu;
    values[i] = Element<Code>::store(Element<SourceCode>::load(source[i]) + dequantize(code, low, unit));
  }
}

// Step 2: a += Q^-1(e); one thread per byte of codes.
template <int Code>
__global__ void dequant_add_kernel(typename Element<Code>::storage* values, const uint8_t* codes,
                                   const uint16_t* lows, const uint16_t* highs, int64_t numel, Divider bucket_size) {
  const int64_t bytes = (numel + 1) / 2;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < bytes;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dequant_add_byte<Code, Code>(values, values, codes, lows, highs, numel, bucket_size, j);
  }
}

// Step 2 of a list: a = float32(g) + Q^-1(e) into each item's float32 accumulator.
__global__ void dequant_add_list_kernel(const CompressItem* items, int count, int64_t bytes, Divider bucket_size) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for_each_item_unit(items, count, kCompressBytes, bytes, blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                     [&](const CompressItem& item, int64_t& j, int64_t units) {
                       dispatch_dtype_device(item.source_code, [&]<int Source>() {
                         const auto* source = static_cast<const typename Element<Source>::storage*>(item.source);
                         for (; j < units; j += stride) {
                           dequant_add_byte<Source, kFloat32>(source, item.accumulator, item.codes, item.lows,
                                                              item.highs, item.numel, bucket_size, j);
                         }
                       });
                     });
}

// Shared memory of one thread block's Top-K selection.
struct TopKShared {
  int histogram[2048];
  int scratch[33];
  uint32_t selected_prefix;
  int selected_needed;
};

// Step 3 for Top-K block `block` of a tensor, by the whole thread block. A three-digit radix select (11, 11 and
// 9 bits of |a|'s bits) finds the k-th largest magnitude exactly; a block-wide prefix sum then writes the kept
// entries in position order, ties to the lowest positions, exactly as the CPU kernel and the reference do.
template <int Code>
__device__ __forceinline__ void topk_block(const typename Element<Code>::storage* values, int16_t* indices,
                                           uint16_t* kept, int64_t numel, int64_t block_size, int64_t k_block,
                                           int64_t k_last, int64_t full_blocks, int64_t block, TopKShared& shared) {
  int* const histogram = shared.histogram;
  int* const scratch = shared.scratch;
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
      shared.selected_needed = needed - above;
      shared.selected_prefix = prefix | (static_cast<uint32_t>(bin) << shift);
    }
    __syncthreads();
    needed = shared.selected_needed;
    prefix = shared.selected_prefix;
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

// Step 3: each thread block takes Top-K blocks in turn (a grid-stride loop: any number of blocks).
template <int Code>
__global__ void block_topk_kernel(const typename Element<Code>::storage* values, int16_t* indices, uint16_t* kept,
                                  int64_t numel, int64_t block_size, int64_t k_block, int64_t k_last,
                                  int64_t full_blocks) {
  __shared__ TopKShared shared;
  const int64_t blocks = full_blocks + (k_last > 0 ? 1 : 0);
  for (int64_t block = blockIdx.x; block < blocks; block += gridDim.x) {
    topk_block<Code>(values, indices, kept, numel, block_size, k_block, k_last, full_blocks, block, shared);
  }
}

// Step 3 of a list: the Top-K blocks of every item, on the float32 accumulators.
__global__ void block_topk_list_kernel(const CompressItem* items, int count, int64_t blocks, int64_t block_size,
                                       int64_t k_block) {
  __shared__ TopKShared shared;
  for_each_item_unit(items, count, kCompressBlocks, blocks, blockIdx.x,
                     [&](const CompressItem& item, int64_t& block, int64_t units) {
                       for (; block < units; block += gridDim.x) {
                         topk_block<kFloat32>(item.accumulator, item.indices, item.kept, item.numel, block_size,
                                              k_block, item.k_last, item.numel / block_size, block, shared);
                       }
                     });
}

// Step 4 for window column `column`: a[i] -= float(bf16(a[i])) at its kept position (distinct within a row).
template <int Code>
__device__ __forceinline__ void remove_kept_column(typename Element<Code>::storage* values, const int16_t* indices,
                                                   int64_t block_size, const Divider& k_block, int64_t column) {
  const int64_t position = k_block.divide(column) * block_size + indices[column];
  values[position] = Element<Code>::store(kept_remainder(Element<Code>::load(values[position])));
}

template <int Code>
__global__ void remove_kept_kernel(typename Element<Code>::storage* values, const int16_t* indices, int64_t columns,
                                   int64_t block_size, Divider k_block) {
  for (int64_t column = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; column < columns;
       column += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    remove_kept_column<Code>(values, indices, block_size, k_block, column);
  }
}

__global__ void remove_kept_list_kernel(const CompressItem* items, int count, int64_t columns, int64_t block_size,
                                        Divider k_block) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for_each_item_unit(items, count, kCompressColumns, columns,
                     blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                     [&](const CompressItem& item, int64_t& column, int64_t units) {
                       for (; column < units; column += stride) {
                         remove_kept_column<kFloat32>(item.accumulator, item.indices, block_size, k_block, column);
                       }
                     });
}

// Step 5 for bucket `bucket`, by one warp: min and max, outward bfloat16 bounds, then two codes per byte.
template <int Code>
__device__ __forceinline__ void quantize_bucket(const typename Element<Code>::storage* values, uint8_t* codes,
                                                uint16_t* lows, uint16_t* highs, int64_t numel, int64_t bucket_size,
                                                bool stochastic, uint32_t key, int64_t first_element,
                                                int64_t bucket) {
  const int lane = threadIdx.x & 31;
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

// Step 5: one warp per bucket.
template <int Code>
__global__ void quantize_kernel(const typename Element<Code>::storage* values, uint8_t* codes, uint16_t* lows,
                                uint16_t* highs, int64_t numel, int64_t bucket_size, bool stochastic, uint32_t key,
                                int64_t first_element) {
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  const int64_t buckets = (numel + bucket_size - 1) / bucket_size;
  for (int64_t bucket = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5; bucket < buckets;
       bucket += warps) {
    quantize_bucket<Code>(values, codes, lows, highs, numel, bucket_size, stochastic, key, first_element, bucket);
  }
}

// Step 5 of a list: one warp per bucket of every item (a warp's lanes share their unit, so a bucket's warp is whole).
__global__ void quantize_list_kernel(const CompressItem* items, int count, int64_t buckets, int64_t bucket_size,
                                     bool stochastic) {
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for_each_item_unit(items, count, kCompressBuckets, buckets,
                     (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5,
                     [&](const CompressItem& item, int64_t& bucket, int64_t units) {
                       for (; bucket < units; bucket += warps) {
                         quantize_bucket<kFloat32>(item.accumulator, item.codes, item.lows, item.highs, item.numel,
                                                   bucket_size, stochastic, item.key, item.first_element, bucket);
                       }
                     });
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

// Step 7's decay of element i: p *= 1 - lr * weight_decay.
template <int Code>
__device__ __forceinline__ void decay_element(typename Element<Code>::storage* values, float factor, bool stochastic,
                                              uint32_t key, int64_t i) {
  values[i] = round_param<Code>(Element<Code>::load(values[i]) * factor, stochastic, key, i);
}

// Step 7's decay, every element.
template <int Code>
__global__ void decay_kernel(typename Element<Code>::storage* values, int64_t numel, float factor, bool stochastic,
                             uint32_t key) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    decay_element<Code>(values, factor, stochastic, key, i);
  }
}

__global__ void decay_list_kernel(const UpdateItem* items, int count, int64_t elements, float factor,
                                  bool stochastic) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for_each_item_unit(items, count, kUpdateElements, elements,
                     blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                     [&](const UpdateItem& item, int64_t& i, int64_t units) {
                       dispatch_dtype_device(item.param_code, [&]<int Code>() {
                         auto* values = static_cast<typename Element<Code>::storage*>(item.param);
                         for (; i < units; i += stride) decay_element<Code>(values, factor, stochastic, item.decay_key, i);
                       });
                     });
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

// Steps 6 and 7 for Top-K block `block` of a tensor, by the whole thread block. One thread per window entry
// (row, column) of the block: the entry in the first row that holds its position sums the position's entries in
// row order (the reference's order: the result is the same bits on every run) and updates the position once.
// Rows of a block are ascending (block_topk writes them so; loaded states are checked), so each row is searched
// by bisection.
template <int Code>
__device__ __forceinline__ void window_update_block(typename Element<Code>::storage* values, const int16_t* indices,
                                                    const uint16_t* window, const float* weights1,
                                                    const float* weights2, int64_t rows, int64_t columns,
                                                    int64_t block_size, int64_t k_block, int64_t block, float c1,
                                                    float c2, float eps, float lr, bool stochastic, uint32_t key,
                                                    int16_t* staged) {
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

// Steps 6 and 7: each thread block takes Top-K blocks in turn.
template <int Code>
__global__ void window_update_kernel(typename Element<Code>::storage* values, const int16_t* indices,
                                     const uint16_t* window, const float* weights1, const float* weights2,
                                     int64_t rows, int64_t columns, int64_t block_size, int64_t k_block,
                                     int64_t blocks, float c1, float c2, float eps, float lr, bool stochastic,
                                     uint32_t key) {
  __shared__ int16_t staged[kStagedIndices];
  for (int64_t block = blockIdx.x; block < blocks; block += gridDim.x) {
    window_update_block<Code>(values, indices, window, weights1, weights2, rows, columns, block_size, k_block, block,
                              c1, c2, eps, lr, stochastic, key, staged);
  }
}

// Steps 6 and 7 of a list: the Top-K blocks of every item, each parameter in its own dtype.
__global__ void window_update_list_kernel(const UpdateItem* items, int count, int64_t blocks, int64_t block_size,
                                          int64_t k_block, float eps, float lr, bool stochastic) {
  __shared__ int16_t staged[kStagedIndices];
  for_each_item_unit(items, count, kUpdateBlocks, blocks, blockIdx.x,
                     [&](const UpdateItem& item, int64_t& block, int64_t units) {
                       dispatch_dtype_device(item.param_code, [&]<int Code>() {
                         auto* values = static_cast<typename Element<Code>::storage*>(item.param);
                         for (; block < units; block += gridDim.x) {
                           window_update_block<Code>(values, item.indices, item.window, item.weights1, item.weights2,
                                                     item.rows, item.columns, block_size, k_block, block, item.c1,
                                                     item.c2, eps, lr, stochastic, item.param_key, staged);
                         }
                       });
                     });
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

cudaError_t launch_compress_list(const CompressItem* items, int count, const int64_t* totals, int64_t block_size,
                                 int64_t k_block, int64_t bucket_size, bool stochastic, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  // Every item has at least one unit of each kind (the glue leaves out empty tensors).
  dequant_add_list_kernel<<<blocks_for(totals[kCompressBytes]), kThreads, 0, stream>>>(
      items, count, totals[kCompressBytes], Divider(bucket_size));
  block_topk_list_kernel<<<blocks_for(totals[kCompressBlocks], 1), kThreads, 0, stream>>>(
      items, count, totals[kCompressBlocks], block_size, k_block);
  remove_kept_list_kernel<<<blocks_for(totals[kCompressColumns]), kThreads, 0, stream>>>(
      items, count, totals[kCompressColumns], block_size, Divider(k_block));
  quantize_list_kernel<<<blocks_for(totals[kCompressBuckets] * 32), kThreads, 0, stream>>>(
      items, count, totals[kCompressBuckets], bucket_size, stochastic);
  return cudaGetLastError();
}

cudaError_t launch_update_list(const UpdateItem* items, int count, int64_t elements, int64_t blocks,
                               int64_t block_size, int64_t k_block, float eps, float lr, bool decays, float decay,
                               bool stochastic_param, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (decays) {
    decay_list_kernel<<<blocks_for(elements), kThreads, 0, stream>>>(items, count, elements, decay,
                                                                     stochastic_param);
  }
  window_update_list_kernel<<<blocks_for(blocks, 1), kThreads, 0, stream>>>(items, count, blocks, block_size,
                                                                            k_block, eps, lr, stochastic_param);
  return cudaGetLastError();
}

}  // namespace microadam
}  // namespace lit_microopt
