// MicroAdam's ops on the CPU: the same steps as lit_microopt/ops/reference/microadam.py, parallel over
// Top-K blocks or quantization buckets with at::parallel_for. Inputs are the 1-D contiguous views the
// optimizer passes; every check names the argument that is wrong.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../common/cpu_rounding.h"
#include "../common/cpu_tensor_tasks.h"
#include "microadam_checks.h"
#include "microadam_chunks.h"
#include "microadam_math.h"
#include "microadam_step.h"
#include "../common/kernel_registration.h"

namespace lit_microopt {
namespace microadam {
namespace {

const uint16_t* bf16_data(const at::Tensor& tensor) {
  return reinterpret_cast<const uint16_t*>(tensor.data_ptr<at::BFloat16>());
}
uint16_t* bf16_data_mut(at::Tensor& tensor) { return reinterpret_cast<uint16_t*>(tensor.data_ptr<at::BFloat16>()); }

// 4-bit codes, element 2j in the high nibble of byte j, to and from one code per byte. Written as loops over
// byte pairs, which the compiler vectorises (a code read per element, as unpack_code does, is not).
LMO_CPU_CLONES void unpack_codes(const uint8_t* packed, int64_t count, uint8_t* codes) {
  for (int64_t i = 0; i < (count + 1) / 2; ++i) {
    codes[2 * i] = packed[i] >> 4;
    codes[2 * i + 1] = packed[i] & 0xfu;
  }
}

LMO_CPU_CLONES void pack_codes(const uint8_t* codes, int64_t count, uint8_t* packed) {
  for (int64_t i = 0; i < (count + 1) / 2; ++i) packed[i] = static_cast<uint8_t>((codes[2 * i] << 4) | codes[2 * i + 1]);
}

// Step 2 on one bucket of `count` elements: out = g + Q^-1(e), computed in float32 and stored as out_t.
// `codes` is scratch space for count + 1 codes.
template <typename scalar_t, typename out_t>
LMO_CPU_CLONES void add_dequantized_bucket(const scalar_t* gradient, const uint8_t* packed, uint16_t low_bits,
                                           uint16_t high_bits, int64_t count, uint8_t* codes, out_t* out) {
  const float low = bfloat16_to_float(low_bits);
  const float unit = bucket_unit(low, bfloat16_to_float(high_bits));
  unpack_codes(packed, count, codes);
  for (int64_t j = 0; j < count; ++j) {
    const float sum = static_cast<float>(gradient[j]) + dequantize(codes[j], low, unit);
    out[j] = static_cast<out_t>(sum);  // rounded to the gradient's dtype by the op, kept float32 by the fused pass
  }
}

void ef_dequant_add_cpu(at::Tensor accumulator, const at::Tensor& error_feedback, const at::Tensor& bucket_min,
                        const at::Tensor& bucket_max, int64_t bucket_size) {
  check_kernel_device(accumulator, "accumulator", at::kCPU);
  check_bucket_state(accumulator, error_feedback, bucket_min, bucket_max, bucket_size);
  const int64_t numel = accumulator.numel();
  const int64_t buckets = (numel + bucket_size - 1) / bucket_size;
  const uint8_t* codes = error_feedback.data_ptr<uint8_t>();
  const uint16_t* lows = bf16_data(bucket_min);
  const uint16_t* highs = bf16_data(bucket_max);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, accumulator.scalar_type(), "ef_dequant_add_", [&] {
    scalar_t* values = accumulator.data_ptr<scalar_t>();
    at::parallel_for(0, buckets, std::max<int64_t>(1, 32768 / bucket_size), [&](int64_t begin, int64_t end) {
      std::vector<uint8_t> scratch(bucket_size + 1);
      for (int64_t bucket = begin; bucket < end; ++bucket) {
        const int64_t start = bucket * bucket_size, count = std::min(bucket_size, numel - start);
        add_dequantized_bucket(values + start, codes + (start >> 1), lows[bucket], highs[bucket], count,
                               scratch.data(), values + start);
      }
    });
  });
}

// Step 3 on one block held as floats: the k entries of largest |a| (ties: lowest positions first), written in
// position order. The block is read as `rows` rows of `columns` elements. Any bound that k column maxima reach
// is at most the k-th largest |a| (those columns hold k distinct entries that reach it), so only columns whose
// maximum reaches the bound can hold a kept entry. The bound is the lower edge of the histogram bin that holds
// the k-th largest column maximum. One vectorised pass over the block, then work on about k * rows entries.
constexpr int kBinShift = 20;  // bins of |a|'s bits: the exponent and 3 bits of mantissa
constexpr int kBins = 1 << (31 - kBinShift);

struct SelectBuffers {
  explicit SelectBuffers(int64_t block_size)
      : column_max(block_size), magnitudes(block_size), histogram(kBins), flagged(block_size),
        candidates(block_size) {}
  std::vector<uint32_t> column_max, magnitudes;
  std::vector<int32_t> histogram, flagged, candidates;  // flagged columns and candidate positions, ascending
};

// |value| as bits: ordered like the magnitudes (NaN above infinity, as torch.topk ranks it).
inline uint32_t magnitude_bits(float value) { return float_bits(value) & 0x7fffffffu; }

LMO_CPU_CLONES void column_maxima(const float* values, int64_t length, int64_t columns, uint32_t* column_max) {
  std::fill(column_max, column_max + columns, 0u);
  for (int64_t base = 0; base < length; base += columns) {
    const float* row = values + base;
    const int64_t count = std::min(columns, length - base);
    for (int64_t column = 0; column < count; ++column) {
      const uint32_t magnitude = magnitude_bits(row[column]);
      column_max[column] = magnitude > column_max[column] ? magnitude : column_max[column];
    }
  }
}

// The lower edge of the bin that holds the k-th largest column maximum (k <= columns).
uint32_t column_bound(const uint32_t* column_max, int64_t columns, int64_t k, std::vector<int32_t>& histogram) {
  std::fill(histogram.begin(), histogram.end(), 0);
  uint32_t top = 0;
  for (int64_t column = 0; column < columns; ++column) {
    const uint32_t bin = column_max[column] >> kBinShift;
    ++histogram[bin];
    top = bin > top ? bin : top;
  }
  int64_t above = 0;
  uint32_t bin = top;
  while (above + histogram[bin] < k) above += histogram[bin--];
  return bin << kBinShift;
}

void select_block(const float* values, int64_t length, int64_t k, int16_t* indices, uint16_t* kept,
                  SelectBuffers& buffers) {
  if (k <= 0) return;
  // Up to 8 rows, while the flagged columns (about k of them) stay a small part of the block.
  const int64_t rows = std::clamp<int64_t>(length / (8 * k), 1, 8);
  const int64_t columns = (length + rows - 1) / rows;
  uint32_t* column_max = buffers.column_max.data();
  column_maxima(values, length, columns, column_max);
  const uint32_t bound = column_bound(column_max, columns, k, buffers.histogram);
  // Branch-free compaction (a write at every step, the count moves only when kept): whether an entry passes
  // is a coin toss the branch predictor would lose.
  int32_t* flagged = buffers.flagged.data();
  int64_t flagged_count = 0;
  for (int64_t column = 0; column < columns; ++column) {
    flagged[flagged_count] = static_cast<int32_t>(column);
    flagged_count += column_max[column] >= bound;
  }
  // Row by row over the flagged columns: positions come out ascending.
  int32_t* candidates = buffers.candidates.data();
  int64_t size = 0;  // at least k
  for (int64_t base = 0; base < length; base += columns) {
    const int64_t count = std::min(columns, length - base);
    for (int64_t i = 0; i < flagged_count && flagged[i] < count; ++i) {
      const int64_t position = base + flagged[i];
      candidates[size] = static_cast<int32_t>(position);
      size += magnitude_bits(values[position]) >= bound;
    }
  }
  // The k-th largest among the candidates (at least k of them) is the k-th largest of the block.
  uint32_t* magnitudes = buffers.magnitudes.data();
  for (int64_t i = 0; i < size; ++i) magnitudes[i] = magnitude_bits(values[candidates[i]]);
  std::nth_element(magnitudes, magnitudes + (size - k), magnitudes + size);
  const uint32_t threshold = magnitudes[size - k];
  int64_t ties = k;  // entries equal to the threshold that are kept, lowest positions first
  for (int64_t i = size - k; i < size; ++i) ties -= magnitudes[i] > threshold;
  int64_t column = 0;
  for (int64_t i = 0; i < size; ++i) {
    const int32_t position = candidates[i];
    const uint32_t magnitude = magnitude_bits(values[position]);
    if (magnitude > threshold || (magnitude == threshold && ties-- > 0)) {
      indices[column] = static_cast<int16_t>(position);
      kept[column] = float_to_bfloat16(values[position]);
      ++column;
    }
  }
}

// Smallest and largest of values[0, length), in 8 independent lanes so that the loop vectorises (a plain
// running minimum is a chain of dependent comparisons).
LMO_CPU_CLONES void extremes(const float* values, int64_t length, float* smallest, float* largest) {
  constexpr int kLanes = 8;
  float low[kLanes], high[kLanes];
  for (int lane = 0; lane < kLanes; ++lane) low[lane] = high[lane] = values[0];
  int64_t j = 0;
  for (; j + kLanes <= length; j += kLanes) {
    for (int lane = 0; lane < kLanes; ++lane) {
      const float value = values[j + lane];
      low[lane] = value < low[lane] ? value : low[lane];
      high[lane] = value > high[lane] ? value : high[lane];
    }
  }
  for (; j < length; ++j) {
    low[0] = values[j] < low[0] ? values[j] : low[0];
    high[0] = values[j] > high[0] ? values[j] : high[0];
  }
  for (int lane = 1; lane < kLanes; ++lane) {
    low[0] = low[lane] < low[0] ? low[lane] : low[0];
    high[0] = high[lane] > high[0] ? high[lane] : high[0];
  }
  *smallest = low[0];
  *largest = high[0];
}

// Step 5 on one bucket held as floats: outward bfloat16 bounds, then two 4-bit codes per byte. `first` is the
// bucket's first element index in the tensor (the random stream is indexed by it).
LMO_CPU_CLONES void quantize_bucket(const float* values, int64_t length, int64_t first, bool stochastic, uint32_t stream,
                     uint16_t* low_bits, uint16_t* high_bits, uint8_t* codes, uint8_t* scratch) {
  float smallest, largest;
  extremes(values, length, &smallest, &largest);
  *low_bits = bfloat16_outward(smallest, /*up=*/false);
  *high_bits = bfloat16_outward(largest, /*up=*/true);
  const float low = bfloat16_to_float(*low_bits);
  const float unit = bucket_unit(low, bfloat16_to_float(*high_bits));
  // Codes first (a loop the compiler vectorises), then two per byte.
  if (stochastic) {
    for (int64_t j = 0; j < length; ++j) scratch[j] = quantize(values[j], low, unit, uniform(stream, first + j));
  } else {
    for (int64_t j = 0; j < length; ++j) scratch[j] = quantize(values[j], low, unit, 0.5f);
  }
  if (length % 2) scratch[length] = 0;
  pack_codes(scratch, length, codes);
}

template <typename scalar_t>
LMO_CPU_CLONES void load_floats(const scalar_t* source, int64_t length, float* destination) {
  for (int64_t j = 0; j < length; ++j) destination[j] = static_cast<float>(source[j]);
}

void block_topk_cpu(const at::Tensor& accumulator, at::Tensor indices_row, at::Tensor values_row, int64_t block_size,
                    int64_t k_block, int64_t k_last) {
  check_kernel_device(accumulator, "accumulator", at::kCPU);
  const int64_t blocks = check_window_row(accumulator, indices_row, values_row, block_size, k_block, k_last);
  const int64_t numel = accumulator.numel();
  const int64_t full_blocks = numel / block_size;
  int16_t* indices = indices_row.data_ptr<int16_t>();
  uint16_t* kept = bf16_data_mut(values_row);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, accumulator.scalar_type(), "block_topk", [&] {
    const scalar_t* values = accumulator.data_ptr<scalar_t>();
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      SelectBuffers buffers(block_size);
      std::vector<float> block_values(block_size);
      for (int64_t block = begin; block < end; ++block) {
        const int64_t start = block * block_size, length = std::min(block_size, numel - start);
        load_floats(values + start, length, block_values.data());
        select_block(block_values.data(), length, block < full_blocks ? k_block : k_last,
                     indices + block * k_block, kept + block * k_block, buffers);
      }
    });
  });
}

// Steps 4 and 5: remove the kept entries' bfloat16 values, then quantize the remainder per bucket. The random
// stream of stochastic rounding is indexed by element from `first_element` (a chunk's offset in its tensor).
void quantize_remainder(at::Tensor accumulator, const at::Tensor& indices_row, at::Tensor error_feedback,
                        at::Tensor bucket_min, at::Tensor bucket_max, int64_t bucket_size, int64_t block_size,
                        int64_t k_block, bool stochastic, int64_t key, int64_t first_element) {
  const int64_t numel = accumulator.numel();
  const int64_t buckets = (numel + bucket_size - 1) / bucket_size;
  const int64_t columns = indices_row.numel();
  const int16_t* indices = indices_row.data_ptr<int16_t>();
  uint8_t* codes = error_feedback.data_ptr<uint8_t>();
  uint16_t* lows = bf16_data_mut(bucket_min);
  uint16_t* highs = bf16_data_mut(bucket_max);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, accumulator.scalar_type(), "ef_quantize_", [&] {
    scalar_t* values = accumulator.data_ptr<scalar_t>();
    at::parallel_for(0, columns, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t column = begin; column < end; ++column) {
        const int64_t position = window_position(column, indices[column], k_block, block_size);
        values[position] = static_cast<scalar_t>(kept_remainder(static_cast<float>(values[position])));
      }
    });
    at::parallel_for(0, buckets, std::max<int64_t>(1, 32768 / bucket_size), [&](int64_t begin, int64_t end) {
      std::vector<float> bucket_values(bucket_size);
      std::vector<uint8_t> scratch(bucket_size + 1);
      for (int64_t bucket = begin; bucket < end; ++bucket) {
        const int64_t start = bucket * bucket_size, length = std::min(bucket_size, numel - start);
        load_floats(values + start, length, bucket_values.data());
        quantize_bucket(bucket_values.data(), length, first_element + start, stochastic, static_cast<uint32_t>(key),
                        lows + bucket, highs + bucket, codes + (start >> 1), scratch.data());
      }
    });
  });
}

void ef_quantize_cpu(at::Tensor accumulator, const at::Tensor& indices_row, at::Tensor error_feedback,
                     at::Tensor bucket_min, at::Tensor bucket_max, int64_t bucket_size, int64_t block_size,
                     int64_t k_block, bool stochastic, int64_t key) {
  check_kernel_device(accumulator, "accumulator", at::kCPU);
  check_bucket_state(accumulator, error_feedback, bucket_min, bucket_max, bucket_size);
  check_operand(indices_row, "indices_row", accumulator, at::kShort);
  check_window_columns(accumulator.numel(), block_size, k_block, indices_row.numel(), "indices_row");
  quantize_remainder(accumulator, indices_row, error_feedback, bucket_min, bucket_max, bucket_size, block_size, k_block,
                     stochastic, key, 0);
}

// Calls f(scalar_t{}) with the C++ type of a float dtype the ops take (float32, bfloat16, float16).
template <typename F>
void with_float_type(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(float{});
    case at::kBFloat16: return f(c10::BFloat16{});
    case at::kHalf: return f(c10::Half{});
    default: TORCH_CHECK(false, "lit_microopt: float32, bfloat16 or float16 expected, got ", dtype);
  }
}

// Steps 2 to 5 of one tensor, block by block: its gradient and the state these steps change.
struct CompressTarget {
  const void* gradient;
  at::ScalarType dtype;
  int64_t numel, full_blocks, k_last;
  int16_t* indices;  // the window row this step writes
  uint16_t* kept;
  uint8_t* codes;
  uint16_t *lows, *highs;
  uint32_t key;

  CompressTarget(const at::Tensor& accumulator, at::Tensor& indices_row, at::Tensor& values_row,
                 at::Tensor& error_feedback, at::Tensor& bucket_min, at::Tensor& bucket_max, int64_t block_size,
                 int64_t k_block, uint32_t key_)
      : gradient(accumulator.data_ptr()), dtype(accumulator.scalar_type()), numel(accumulator.numel()),
        full_blocks(numel / block_size), k_last(indices_row.numel() - full_blocks * k_block),
        indices(indices_row.data_ptr<int16_t>()), kept(bf16_data_mut(values_row)),
        codes(error_feedback.data_ptr<uint8_t>()), lows(bf16_data_mut(bucket_min)), highs(bf16_data_mut(bucket_max)),
        key(key_) {}

  int64_t blocks(int64_t block_size) const { return (numel + block_size - 1) / block_size; }
};

// A thread's buffers for whole blocks: the float32 accumulator, the Top-K selection's, the codes'.
struct BlockBuffers {
  BlockBuffers(int64_t block_size, int64_t bucket_size) : select(block_size), a(block_size), scratch(bucket_size + 1) {}
  SelectBuffers select;
  std::vector<float> a;
  std::vector<uint8_t> scratch;
};

// Steps 2 to 5 of one Top-K block made of whole buckets, in one pass: the block is dequantized into a float32
// buffer (the accumulator is float32 whatever the gradient's dtype), its Top-K written to the window, the kept
// entries removed and its buckets quantized, all while it sits in cache. The gradient is not written back.
template <typename scalar_t>
void compress_block(const CompressTarget& t, int64_t block, int64_t block_size, int64_t k_block, int64_t bucket_size,
                    bool stochastic, BlockBuffers& buffers) {
  const scalar_t* gradient = static_cast<const scalar_t*>(t.gradient);
  float* a = buffers.a.data();
  const int64_t start = block * block_size, length = std::min(block_size, t.numel - start);
  // Step 2, bucket by bucket (the block starts on a bucket boundary).
  for (int64_t offset = 0; offset < length; offset += bucket_size) {
    const int64_t first = start + offset, bucket = first / bucket_size;
    add_dequantized_bucket(gradient + first, t.codes + (first >> 1), t.lows[bucket], t.highs[bucket],
                           std::min(bucket_size, length - offset), buffers.scratch.data(), a + offset);
  }
  // Step 3.
  int16_t* block_indices = t.indices + block * k_block;
  const int64_t k = block < t.full_blocks ? k_block : t.k_last;
  select_block(a, length, k, block_indices, t.kept + block * k_block, buffers.select);
  // Step 4.
  for (int64_t column = 0; column < k; ++column) {
    float& value = a[block_indices[column]];
    value = kept_remainder(value);
  }
  // Step 5.
  for (int64_t offset = 0; offset < length; offset += bucket_size) {
    const int64_t bucket = (start + offset) / bucket_size;
    quantize_bucket(a + offset, std::min(bucket_size, length - offset), start + offset, stochastic, t.key,
                    t.lows + bucket, t.highs + bucket, t.codes + ((start + offset) >> 1), buffers.scratch.data());
  }
}

// Steps 2 to 5 in one pass per Top-K block when blocks are made of whole buckets (compress_block). Otherwise the
// three steps run one after the other, on float32 chunks of a bfloat16 or float16 gradient.
void ef_compress_cpu(at::Tensor accumulator, at::Tensor indices_row, at::Tensor values_row, at::Tensor error_feedback,
                     at::Tensor bucket_min, at::Tensor bucket_max, int64_t bucket_size, int64_t block_size,
                     int64_t k_block, int64_t k_last, bool stochastic, int64_t key) {
  check_kernel_device(accumulator, "accumulator", at::kCPU);
  check_bucket_state(accumulator, error_feedback, bucket_min, bucket_max, bucket_size);
  const int64_t blocks = check_window_row(accumulator, indices_row, values_row, block_size, k_block, k_last);
  if (block_size % bucket_size != 0) {  // blocks and buckets straddle each other: one op after the other
    compress_in_float32(accumulator, indices_row, values_row, error_feedback, bucket_min, bucket_max, bucket_size,
                        block_size, k_block, k_last, stochastic, key, ef_dequant_add_cpu, block_topk_cpu,
                        quantize_remainder);
    return;
  }
  const CompressTarget target(accumulator, indices_row, values_row, error_feedback, bucket_min, bucket_max, block_size,
                              k_block, static_cast<uint32_t>(key));
  with_float_type(target.dtype, [&](auto type) {
    using scalar_t = decltype(type);
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      BlockBuffers buffers(block_size, bucket_size);
      for (int64_t block = begin; block < end; ++block) {
        compress_block<scalar_t>(target, block, block_size, k_block, bucket_size, stochastic, buffers);
      }
    });
  });
}

// Step 7's decay: p *= 1 - lr * weight_decay, rounded to p's dtype.
template <typename scalar_t>
LMO_CPU_CLONES void scale(scalar_t* values, int64_t count, float factor) {
  for (int64_t i = 0; i < count; ++i) values[i] = static_cast<scalar_t>(static_cast<float>(values[i]) * factor);
}

// The same decay with param_rounding="stochastic": each product rounded stochastically, element `first + i` drawing
// from the stream `key`.
template <typename scalar_t>
LMO_CPU_CLONES void scale_stochastically(scalar_t* values, int64_t first, int64_t count, float factor, uint32_t key) {
  for (int64_t i = 0; i < count; ++i) {
    values[i] = round_stochastically<scalar_t>(static_cast<float>(values[i]) * factor, uniform(key, first + i));
  }
}

// Step 6's sums for one Top-K block: S1 and S2 in block-sized buffers (zero between blocks), and a bitmap of the
// positions the window holds. Positions are then visited in ascending order: the parameter's memory is read
// as a stream the prefetcher follows, not in the window's random order.
struct WindowSums {
  explicit WindowSums(int64_t block_size) : sum1(block_size, 0.0f), sum2(block_size, 0.0f), held((block_size + 63) / 64, 0) {}

  // Row by row, columns in order, over window columns [first, last): each position's entries are summed in
  // row order, the summation order of the reference and of the CUDA kernel.
  LMO_CPU_CLONES void accumulate(const int16_t* indices, const uint16_t* window, const float* weights1,
                                 const float* weights2, int64_t rows, int64_t columns, int64_t first, int64_t last) {
    for (int64_t row = 0; row < rows; ++row) {
      for (int64_t column = first; column < last; ++column) {
        const int32_t j = indices[row * columns + column];
        const float value = bfloat16_to_float(window[row * columns + column]);
        sum1[j] += multiply(value, weights1[row]);
        sum2[j] += multiply(multiply(value, value), weights2[row]);
        held[j >> 6] |= uint64_t{1} << (j & 63);
      }
    }
  }

  // Calls visit(j, S1[j], S2[j]) once per held position, ascending, and leaves the buffers zero.
  template <typename Visit>
  void drain(Visit&& visit) {
    for (size_t word = 0; word < held.size(); ++word) {
      for (uint64_t bits = held[word]; bits != 0; bits &= bits - 1) {
        const int64_t j = static_cast<int64_t>(word) * 64 + __builtin_ctzll(bits);
        visit(j, sum1[j], sum2[j]);
        sum1[j] = sum2[j] = 0.0f;
      }
      held[word] = 0;
    }
  }

  std::vector<float> sum1, sum2;
  std::vector<uint64_t> held;
};

// Steps 6 and 7 of one tensor, block by block: the parameter, its window's filled rows and the step's numbers.
struct UpdateTarget {
  void* values;
  at::ScalarType dtype;
  int64_t numel, rows, columns;
  const int16_t* indices;  // (rows, columns), row-major
  const uint16_t* window;
  const float *weights1, *weights2;
  float c1, c2;
  uint32_t update_stream, decay_stream;

  int64_t blocks(int64_t k_block) const { return (columns + k_block - 1) / k_block; }
};

// The settings every tensor of a call shares.
struct UpdateSettings {
  int64_t block_size, k_block;
  float eps, lr;
  bool decays;           // weight_decay > 0
  float decay;           // 1 - lr * weight_decay
  bool stochastic_param;  // param_rounding="stochastic"
};

// Steps 6 and 7 of one Top-K block: the decay of its elements, the window's moments (WindowSums), then one update
// per position the window holds. Blocks are independent: a block's positions only take its own window columns.
template <typename scalar_t>
void update_block(const UpdateTarget& t, int64_t block, const UpdateSettings& s, WindowSums& sums) {
  // param_rounding="stochastic" rounds a 16-bit p stochastically, after the decay and after the update, each with
  // its own stream indexed by the element's position in the tensor; float32 has nothing to round.
  const bool stochastic = s.stochastic_param && !std::is_same_v<scalar_t, float>;
  const int64_t offset = block * s.block_size, length = std::min(s.block_size, t.numel - offset);
  scalar_t* target = static_cast<scalar_t*>(t.values) + offset;
  if (s.decays) {
    if (stochastic) {
      scale_stochastically(target, offset, length, s.decay, t.decay_stream);
    } else {
      scale(target, length, s.decay);
    }
  }
  const int64_t first = block * s.k_block, last = std::min(t.columns, first + s.k_block);
  sums.accumulate(t.indices, t.window, t.weights1, t.weights2, t.rows, t.columns, first, last);
  sums.drain([&](int64_t j, float sum1, float sum2) {
    const float update = window_update(sum1, sum2, t.c1, t.c2, s.eps);
    const float next = apply_update(static_cast<float>(target[j]), s.lr, update);
    target[j] = stochastic ? round_stochastically<scalar_t>(next, uniform(t.update_stream, offset + j))
                           : static_cast<scalar_t>(next);
  });
}

UpdateSettings update_settings(int64_t block_size, int64_t k_block, double eps, double lr, double weight_decay,
                               bool stochastic_param) {
  return UpdateSettings{block_size, k_block, static_cast<float>(eps), static_cast<float>(lr), weight_decay > 0,
                        static_cast<float>(1.0 - lr * weight_decay), stochastic_param};
}

// Steps 6 and 7 of one tensor: its blocks in parallel.
void update_tensor(const UpdateTarget& target, const UpdateSettings& settings) {
  with_float_type(target.dtype, [&](auto type) {
    at::parallel_for(0, target.blocks(settings.k_block), 1, [&](int64_t begin, int64_t end) {
      WindowSums sums(settings.block_size);
      for (int64_t block = begin; block < end; ++block) update_block<decltype(type)>(target, block, settings, sums);
    });
  });
}

// Steps 6 and 7, block by block (update_block).
void window_adam_update_cpu(at::Tensor param, const at::Tensor& window_indices, const at::Tensor& window_values,
                            const at::Tensor& row_weights1, const at::Tensor& row_weights2, int64_t block_size,
                            int64_t k_block, double c1, double c2, double eps, double lr, double weight_decay,
                            bool stochastic_param, int64_t param_key, int64_t decay_key) {
  check_kernel_device(param, "param", at::kCPU);
  const int64_t rows = check_window(param, window_indices, window_values, row_weights1, row_weights2, block_size,
                                    k_block);
  const UpdateTarget target{param.data_ptr(), param.scalar_type(), param.numel(), rows, window_indices.size(1),
                            window_indices.data_ptr<int16_t>(), bf16_data(window_values),
                            row_weights1.data_ptr<float>(), row_weights2.data_ptr<float>(), static_cast<float>(c1),
                            static_cast<float>(c2), static_cast<uint32_t>(param_key), static_cast<uint32_t>(decay_key)};
  update_tensor(target, update_settings(block_size, k_block, eps, lr, weight_decay, stochastic_param));
}

// One MicroAdam step (steps 1 to 7) of every tensor of a list. Where blocks are made of whole buckets, every
// (tensor, Top-K block) pair is one task of a single parallel loop, which takes the block through steps 2 to 7
// while it sits in cache: small tensors share the threads instead of each waking them. Otherwise each tensor takes
// the steps op after op.
void microadam_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList window_indices,
                        at::TensorList window_values, at::TensorList error_feedback, at::TensorList bucket_min,
                        at::TensorList bucket_max, at::TensorList steps, at::TensorList seeds, double lr, double beta1,
                        double beta2, double eps, double weight_decay, int64_t m, int64_t block_size, int64_t k_block,
                        int64_t bucket_size, bool stochastic, bool stochastic_param) {
  const std::vector<at::Tensor> p = params.vec(), g = grads.vec(), wi = window_indices.vec(), wv = window_values.vec(),
                                e = error_feedback.vec(), lo = bucket_min.vec(), hi = bucket_max.vec(),
                                st = steps.vec(), se = seeds.vec();
  const StepTensors tensors{p, g, wi, wv, e, lo, hi, st, se};
  const std::vector<int64_t> blocks = check_step_tensors(tensors, at::kCPU, m, block_size, k_block, bucket_size);
  RowWeights row_weights(m, beta1, beta2);
  const std::vector<TensorSchedule> schedules = advance_steps(tensors, m, beta1, beta2, row_weights);
  const UpdateSettings settings = update_settings(block_size, k_block, eps, lr, weight_decay, stochastic_param);
  std::vector<CompressTarget> compress;
  std::vector<UpdateTarget> update;
  for (size_t i = 0; i < p.size(); ++i) {
    const TensorSchedule& s = schedules[i];
    at::Tensor indices_row = wi[i].select(0, s.row), values_row = wv[i].select(0, s.row);
    at::Tensor codes = e[i], lows = lo[i], highs = hi[i];
    compress.emplace_back(g[i], indices_row, values_row, codes, lows, highs, block_size, k_block, s.key);
    update.push_back(UpdateTarget{p[i].data_ptr(), p[i].scalar_type(), p[i].numel(), s.filled, wi[i].size(1),
                                  wi[i].data_ptr<int16_t>(), bf16_data(wv[i]), s.weights1, s.weights2, s.c1, s.c2,
                                  s.update_key, s.decay_key});
  }
  if (block_size % bucket_size != 0) {  // blocks and buckets straddle each other: op after op, tensor by tensor
    for (size_t i = 0; i < p.size(); ++i) {
      const TensorSchedule& s = schedules[i];
      compress_in_float32(g[i].view(-1), wi[i].select(0, s.row), wv[i].select(0, s.row), e[i], lo[i], hi[i], bucket_size,
                          block_size, k_block, compress[i].k_last, stochastic, s.key, ef_dequant_add_cpu,
                          block_topk_cpu, quantize_remainder);
      update_tensor(update[i], settings);
    }
    return;
  }
  parallel_for_tensor_units(
      blocks, [&] { return std::make_pair(BlockBuffers(block_size, bucket_size), WindowSums(block_size)); },
      [&](auto& buffers, size_t i, int64_t block) {
        with_float_type(compress[i].dtype, [&](auto type) {
          compress_block<decltype(type)>(compress[i], block, block_size, k_block, bucket_size, stochastic,
                                         buffers.first);
        });
        with_float_type(update[i].dtype, [&](auto type) {
          update_block<decltype(type)>(update[i], block, settings, buffers.second);
        });
      });
}

}  // namespace

LMO_REGISTER_KERNELS(CPU, m) {
  m.impl("ef_dequant_add_", &ef_dequant_add_cpu);
  m.impl("block_topk", &block_topk_cpu);
  m.impl("ef_quantize_", &ef_quantize_cpu);
  m.impl("window_adam_update_", &window_adam_update_cpu);
  m.impl("ef_compress_", &ef_compress_cpu);
  m.impl("microadam_step_", &microadam_step_cpu);
}

}  // namespace microadam
}  // namespace lit_microopt
