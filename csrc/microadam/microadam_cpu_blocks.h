// MicroAdam's CPU work on one Top-K block, on raw pointers: steps 2 to 5 (compress_block) and steps 6 and 7
// (update_block), and the per-bucket and per-block pieces they are made of. microadam_cpu.cpp wraps them in ops
// (tensor checks, parallel loops). No ATen here beyond the scalar types: the pieces can be compiled and timed alone.
// Included by microadam_cpu.cpp only.
#pragma once

#include <c10/core/ScalarType.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__)
#include <immintrin.h>
#define LMO_CPU_AVX2_KERNELS 1
#else
#define LMO_CPU_AVX2_KERNELS 0
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../common/cpu_rounding.h"
#include "microadam_math.h"

namespace lit_microopt {
namespace microadam {
namespace {

// Calls f(count) with count a compile-time constant when it is the default bucket size (64): the bucket loops
// below then compile to straight-line vector code, without the loop set-up a run-time length costs per bucket.
// f is a lambda marked LMO_CPU_INLINE_LAMBDA, so that it is compiled into its caller's AVX2 clone.
template <typename F>
LMO_CPU_INLINE void with_bucket_length(int64_t count, F&& f) {
  if (count == 64) {
    f(std::integral_constant<int64_t, 64>{});
  } else {
    f(count);
  }
}

// Buckets are processed in batches of this many: each stage of a bucket's work (its range, then its elements)
// runs for the whole batch before the next, so that the buckets' short dependency chains overlap instead of
// running one after the other.
constexpr int64_t kBucketBatch = 32;

// Q^-1's numbers of a bucket: its lower end and its unit u (step 5).
struct BucketScale {
  float low, unit;
};

LMO_CPU_INLINE BucketScale bucket_scale(uint16_t low_bits, uint16_t high_bits) {
  const float low = bfloat16_to_float(low_bits);
  return BucketScale{low, bucket_unit(low, bfloat16_to_float(high_bits))};
}

// 4-bit codes, element 2j in the high nibble of byte j, one per byte (a loop over byte pairs, which vectorises).
LMO_CPU_INLINE void unpack_codes(const uint8_t* packed, int64_t count, uint8_t* codes) {
  for (int64_t i = 0; i < (count + 1) / 2; ++i) {
    codes[2 * i] = packed[i] >> 4;
    codes[2 * i + 1] = packed[i] & 0xfu;
  }
}

#if LMO_CPU_AVX2_KERNELS
// add_dequantized_bucket of 64 float32 elements from their 32 bytes of codes, in AVX2 instructions: the nibbles
// split and interleaved into 64 codes in element order, then g + (code * u + lo), element by element.
__attribute__((target("avx2"))) inline void add_dequantized_64_avx2(const float* gradient, const uint8_t* packed,
                                                                     BucketScale scale, float* out) {
  const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(packed));
  const __m256i nibble = _mm256_set1_epi8(0x0f);
  const __m256i high = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), nibble);  // element 2i's code
  const __m256i low = _mm256_and_si256(bytes, nibble);                         // element 2i + 1's
  // Interleaving works within 128-bit halves: each half of `first` and `second` holds 16 elements, out of order
  // by halves, which two lane permutations put back.
  const __m256i first = _mm256_unpacklo_epi8(high, low), second = _mm256_unpackhi_epi8(high, low);
  alignas(32) uint8_t codes[64];
  _mm256_store_si256(reinterpret_cast<__m256i*>(codes), _mm256_permute2x128_si256(first, second, 0x20));
  _mm256_store_si256(reinterpret_cast<__m256i*>(codes + 32), _mm256_permute2x128_si256(first, second, 0x31));
  const __m256 unit = _mm256_set1_ps(scale.unit), bottom = _mm256_set1_ps(scale.low);
  for (int group = 0; group < 8; ++group) {
    const __m128i group_codes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + 8 * group));
    const __m256 code = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(group_codes));
    const __m256 dequantized = _mm256_add_ps(_mm256_mul_ps(code, unit), bottom);
    _mm256_storeu_ps(out + 8 * group, _mm256_add_ps(_mm256_loadu_ps(gradient + 8 * group), dequantized));
  }
}
#endif

// Step 2 on one bucket of `count` elements: out = g + Q^-1(e), computed in float32 and stored as out_t (rounded to
// the gradient's dtype by the op, kept float32 by the fused pass). `codes` is scratch for count + 1 codes.
template <typename scalar_t, typename out_t, typename Count>
LMO_CPU_INLINE void add_dequantized_bucket(const scalar_t* gradient, const uint8_t* packed, BucketScale scale,
                                           Count length, uint8_t* codes, out_t* out) {
  const int64_t count = length;
#if LMO_CPU_AVX2_KERNELS
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<out_t, float>) {
    if (count == 64 && __builtin_cpu_supports("avx2")) return add_dequantized_64_avx2(gradient, packed, scale, out);
  }
#endif
  unpack_codes(packed, count, codes);
  for (int64_t j = 0; j < count; ++j) {
    out[j] = static_cast<out_t>(static_cast<float>(gradient[j]) + dequantize(codes[j], scale.low, scale.unit));
  }
}

// Step 2 on `length` elements (bucket_size a bucket, the last one possibly shorter), from bucket 0 of `lows`,
// `highs` and byte 0 of `packed`; `codes` is scratch for bucket_size + 1 codes.
template <typename scalar_t, typename out_t, typename Count>
LMO_CPU_INLINE void add_dequantized_buckets(const scalar_t* gradient, const uint8_t* packed, const uint16_t* lows,
                                            const uint16_t* highs, int64_t length, Count bucket_size, uint8_t* codes,
                                            out_t* out) {
  const int64_t size = bucket_size, whole = length / size;
  BucketScale scales[kBucketBatch];
  for (int64_t batch = 0; batch < whole; batch += kBucketBatch) {
    const int64_t count = std::min(kBucketBatch, whole - batch);
    for (int64_t i = 0; i < count; ++i) scales[i] = bucket_scale(lows[batch + i], highs[batch + i]);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t offset = (batch + i) * size;
      add_dequantized_bucket(gradient + offset, packed + offset / 2, scales[i], bucket_size, codes, out + offset);
    }
  }
  if (const int64_t offset = whole * size; offset < length) {
    add_dequantized_bucket(gradient + offset, packed + offset / 2, bucket_scale(lows[whole], highs[whole]),
                           length - offset, codes, out + offset);
  }
}

// Step 3 on one block held as floats: the k entries of largest |a| (ties: lowest positions first), written in
// position order. The block is read as `rows` rows of `columns` elements. Any bound that k column maxima reach
// is at most the k-th largest |a| (those columns hold k distinct entries that reach it), so only columns whose
// maximum reaches the bound can hold a kept entry. The bound is the lower edge of the bin (of |a|'s bits) that holds
// the k-th largest column maximum: fine bins keep the candidates few. One vectorised pass over the block, a few
// over the column maxima, then work on about k * rows entries.
constexpr int kBinShift = 16;  // bins of |a|'s bits: the exponent and 7 bits of mantissa

struct SelectBuffers {
  explicit SelectBuffers(int64_t block_size)
      : column_max(block_size), magnitudes(block_size), flagged(block_size),
        candidates(block_size) {}
  std::vector<uint32_t> column_max, magnitudes;
  std::vector<int32_t> flagged, candidates;  // flagged columns and candidate positions, ascending
};

// |value| as bits: ordered like the magnitudes (NaN above infinity, as torch.topk ranks it).
inline uint32_t magnitude_bits(float value) { return float_bits(value) & 0x7fffffffu; }

LMO_CPU_INLINE void column_maxima(const float* values, int64_t length, int64_t columns, uint32_t* column_max) {
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

// How many column maxima reach `bound` (a loop that vectorises).
LMO_CPU_INLINE int64_t count_reaching(const uint32_t* column_max, int64_t columns, uint32_t bound) {
  int32_t count = 0;
  for (int64_t column = 0; column < columns; ++column) count += column_max[column] >= bound;
  return count;
}

// The lower edge of the bin that holds the k-th largest column maximum (k <= columns): the largest bin edge that
// k column maxima reach. Searched down from the top bin, by steps that double and then by halving, with one
// counting pass per try: the bin is usually a few below the top.
LMO_CPU_INLINE uint32_t column_bound(const uint32_t* column_max, int64_t columns, int64_t k) {
  uint32_t top = 0;
  for (int64_t column = 0; column < columns; ++column) top = column_max[column] > top ? column_max[column] : top;
  const auto reached = [&](uint32_t bin) LMO_CPU_INLINE_LAMBDA {
    return count_reaching(column_max, columns, bin << kBinShift) >= k;
  };
  // Fewer than k maxima reach bin `failed` (at first the one above the top), k or more reach bin `found` (bin 0:
  // every column reaches it, and k <= columns).
  uint32_t failed = (top >> kBinShift) + 1, found = 0;
  for (uint32_t step = 1; failed > step; step *= 2) {
    if (reached(failed - step)) {
      found = failed - step;
      break;
    }
    failed -= step;
  }
  while (failed - found > 1) {
    const uint32_t middle = found + (failed - found) / 2;
    if (reached(middle)) {
      found = middle;
    } else {
      failed = middle;
    }
  }
  return found << kBinShift;
}

LMO_CPU_INLINE void select_block(const float* values, int64_t length, int64_t k, int16_t* indices, uint16_t* kept,
                  SelectBuffers& buffers) {
  if (k <= 0) return;
  // Up to 8 rows, while the flagged columns (about k of them) stay a small part of the block.
  const int64_t rows = std::clamp<int64_t>(length / (8 * k), 1, 8);
  const int64_t columns = (length + rows - 1) / rows;
  uint32_t* column_max = buffers.column_max.data();
  column_maxima(values, length, columns, column_max);
  const uint32_t bound = column_bound(column_max, columns, k);
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

// Smallest and largest of values[0, length). Lane l of 8 runs through elements l, l + 8, l + 16, ... (a loop over
// lanes around a loop over rows, which the compiler turns into one vector of lanes), then the lanes are combined;
// the elements past the last whole row of 8 go to lane 0.
template <typename Count>
LMO_CPU_INLINE void extremes(const float* values, Count length, float* smallest, float* largest) {
  constexpr int64_t kLanes = 8;
  const int64_t count = length, rows = count / kLanes;
  if (rows == 0) {
    float low = values[0], high = values[0];
    for (int64_t j = 1; j < count; ++j) {
      low = values[j] < low ? values[j] : low;
      high = values[j] > high ? values[j] : high;
    }
    *smallest = low;
    *largest = high;
    return;
  }
  float low[kLanes], high[kLanes];
  for (int64_t lane = 0; lane < kLanes; ++lane) {
    float lane_low = values[lane], lane_high = values[lane];
    for (int64_t row = 1; row < rows; ++row) {
      const float value = values[row * kLanes + lane];
      lane_low = value < lane_low ? value : lane_low;
      lane_high = value > lane_high ? value : lane_high;
    }
    low[lane] = lane_low;
    high[lane] = lane_high;
  }
  for (int64_t j = rows * kLanes; j < count; ++j) {
    low[0] = values[j] < low[0] ? values[j] : low[0];
    high[0] = values[j] > high[0] ? values[j] : high[0];
  }
  for (int64_t lane = 1; lane < kLanes; ++lane) {
    low[0] = low[lane] < low[0] ? low[lane] : low[0];
    high[0] = high[lane] > high[0] ? high[lane] : high[0];
  }
  *smallest = low[0];
  *largest = high[0];
}

// Step 5's range of a bucket from its extremes: outward bfloat16 bounds (written to the state) and Q^-1's numbers.
LMO_CPU_INLINE BucketScale bucket_range(float smallest, float largest, uint16_t* low_bits, uint16_t* high_bits) {
  *low_bits = bfloat16_outward(smallest, /*up=*/false);
  *high_bits = bfloat16_outward(largest, /*up=*/true);
  return bucket_scale(*low_bits, *high_bits);
}

#if LMO_CPU_AVX2_KERNELS
// encode_bucket of 64 elements with round to nearest, in AVX2 instructions: the same operations element by element
// (max with 0 is the `> 0 ?` select, as MAXPS defines it), then the codes narrowed to bytes in element order and
// paired into nibbles (16 * code(2i) + code(2i + 1)). The compiler's own vectorisation of encode_bucket spends
// most of its time shuffling elements into even and odd ones.
__attribute__((target("avx2"))) inline void encode_64_nearest_avx2(const float* values, BucketScale scale,
                                                                    uint8_t* codes) {
  const __m256 low = _mm256_set1_ps(scale.low);
  const __m256 unit = _mm256_set1_ps(scale.unit > 0.0f ? scale.unit : INFINITY);
  const __m256 half = _mm256_set1_ps(0.5f), zero = _mm256_setzero_ps();
  const __m256i fifteen = _mm256_set1_epi32(15);
  __m256i code[8];
  for (int group = 0; group < 8; ++group) {
    const __m256 difference = _mm256_sub_ps(_mm256_loadu_ps(values + 8 * group), low);
    const __m256 scaled = _mm256_add_ps(_mm256_div_ps(difference, unit), half);
    code[group] = _mm256_min_epi32(_mm256_cvttps_epi32(_mm256_max_ps(scaled, zero)), fifteen);
  }
  // Packing works within 128-bit halves: 32 -> 16 -> 8 bits leaves 4-element runs out of order, which one dword
  // permutation puts back.
  const __m256i run_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i in_order[2];
  for (int half_index = 0; half_index < 2; ++half_index) {
    const __m256i* quarter = code + 4 * half_index;
    const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(quarter[0], quarter[1]),
                                              _mm256_packus_epi32(quarter[2], quarter[3]));
    in_order[half_index] = _mm256_permutevar8x32_epi32(bytes, run_order);
  }
  const __m256i nibble_weights = _mm256_set1_epi16(0x0110);  // byte 2i weighs 16, byte 2i + 1 weighs 1
  const __m256i paired = _mm256_packus_epi16(_mm256_maddubs_epi16(in_order[0], nibble_weights),
                                             _mm256_maddubs_epi16(in_order[1], nibble_weights));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes), _mm256_permute4x64_epi64(paired, 0xd8));
}
#endif

// Step 5's codes of one bucket held as floats, two per byte: element 2i's code in the high nibble, 2i + 1's in
// the low one. `first` is the bucket's first element index in the tensor (the random stream is indexed by it).
template <typename Count>
LMO_CPU_INLINE void encode_bucket(const float* values, Count length, BucketScale scale, int64_t first, bool stochastic,
                                  uint32_t stream, uint8_t* codes) {
  const int64_t count = length, pairs = count / 2;
  const float low = scale.low, unit = scale.unit;
#if LMO_CPU_AVX2_KERNELS
  if (count == 64 && !stochastic && __builtin_cpu_supports("avx2")) return encode_64_nearest_avx2(values, scale, codes);
#endif
  if (stochastic) {
    for (int64_t i = 0; i < pairs; ++i) {
      const int64_t j = 2 * i;
      codes[i] = static_cast<uint8_t>((quantize(values[j], low, unit, uniform(stream, first + j)) << 4) |
                                      quantize(values[j + 1], low, unit, uniform(stream, first + j + 1)));
    }
  } else {
    for (int64_t i = 0; i < pairs; ++i) {
      codes[i] = static_cast<uint8_t>((quantize(values[2 * i], low, unit, 0.5f) << 4) |
                                      quantize(values[2 * i + 1], low, unit, 0.5f));
    }
  }
  if (count % 2) {
    const float offset = stochastic ? uniform(stream, first + count - 1) : 0.5f;
    codes[pairs] = static_cast<uint8_t>(quantize(values[count - 1], low, unit, offset) << 4);
  }
}

// Step 5 on `length` elements held as floats (bucket_size a bucket, the last one possibly shorter): every bucket's
// range into `lows` and `highs` from bucket 0, its codes into `codes` from byte 0. `first` is the first element's
// index in the tensor.
template <typename Count>
LMO_CPU_INLINE void quantize_buckets(const float* values, int64_t length, Count bucket_size, int64_t first,
                                     bool stochastic, uint32_t stream, uint16_t* lows, uint16_t* highs,
                                     uint8_t* codes) {
  const int64_t size = bucket_size, whole = length / size;
  float smallest[kBucketBatch], largest[kBucketBatch];
  BucketScale scales[kBucketBatch];
  for (int64_t batch = 0; batch < whole; batch += kBucketBatch) {
    const int64_t count = std::min(kBucketBatch, whole - batch);
    for (int64_t i = 0; i < count; ++i) extremes(values + (batch + i) * size, bucket_size, &smallest[i], &largest[i]);
    for (int64_t i = 0; i < count; ++i) {
      scales[i] = bucket_range(smallest[i], largest[i], lows + batch + i, highs + batch + i);
    }
    for (int64_t i = 0; i < count; ++i) {
      const int64_t offset = (batch + i) * size;
      encode_bucket(values + offset, bucket_size, scales[i], first + offset, stochastic, stream, codes + offset / 2);
    }
  }
  if (const int64_t offset = whole * size; offset < length) {
    extremes(values + offset, length - offset, &smallest[0], &largest[0]);
    const BucketScale scale = bucket_range(smallest[0], largest[0], lows + whole, highs + whole);
    encode_bucket(values + offset, length - offset, scale, first + offset, stochastic, stream, codes + offset / 2);
  }
}

template <typename scalar_t>
LMO_CPU_INLINE void load_floats(const scalar_t* source, int64_t length, float* destination) {
  for (int64_t j = 0; j < length; ++j) destination[j] = static_cast<float>(source[j]);
}

// The loops of the per-tensor ops over a range of their work units (buckets or blocks), each a whole function
// compiled for AVX2 and for any x86-64 (the helpers above are inlined into them). Ranges are processed in spans of
// about kSpanElements elements, whole buckets, through buffers of that size.
constexpr int64_t kSpanElements = 8192;

LMO_CPU_INLINE int64_t span_buckets(int64_t bucket_size) { return std::max<int64_t>(1, kSpanElements / bucket_size); }

// Step 2 in place on buckets [first_bucket, last_bucket) of a tensor of `numel` elements (the op ef_dequant_add_).
template <typename scalar_t>
LMO_CPU_CLONES void dequant_add_buckets(scalar_t* values, int64_t numel, const uint8_t* packed, const uint16_t* lows,
                                        const uint16_t* highs, int64_t bucket_size, int64_t first_bucket,
                                        int64_t last_bucket) {
  std::vector<uint8_t> codes(span_buckets(bucket_size) * bucket_size + 1);
  for (int64_t bucket = first_bucket; bucket < last_bucket; bucket += span_buckets(bucket_size)) {
    const int64_t start = bucket * bucket_size;
    const int64_t length = std::min(std::min(last_bucket - bucket, span_buckets(bucket_size)) * bucket_size, numel - start);
    with_bucket_length(bucket_size, [&](auto size) LMO_CPU_INLINE_LAMBDA {
      add_dequantized_buckets(values + start, packed + start / 2, lows + bucket, highs + bucket, length, size,
                              codes.data(), values + start);
    });
  }
}

// Step 3 on Top-K blocks [first_block, last_block) of a tensor (the op block_topk): `k_block` entries from a whole
// block, `k_last` from a shorter last one.
template <typename scalar_t>
LMO_CPU_CLONES void select_blocks(const scalar_t* values, int64_t numel, int64_t block_size, int64_t k_block,
                                  int64_t k_last, int16_t* indices, uint16_t* kept, int64_t first_block,
                                  int64_t last_block) {
  SelectBuffers buffers(block_size);
  std::vector<float> block_values(block_size);
  for (int64_t block = first_block; block < last_block; ++block) {
    const int64_t start = block * block_size, length = std::min(block_size, numel - start);
    load_floats(values + start, length, block_values.data());
    select_block(block_values.data(), length, start + block_size <= numel ? k_block : k_last,
                 indices + block * k_block, kept + block * k_block, buffers);
  }
}

// Step 5 on buckets [first_bucket, last_bucket) of a tensor (the op ef_quantize_, once the kept entries are
// removed). `first_element` is the tensor's first element's index in the random stream's numbering.
template <typename scalar_t>
LMO_CPU_CLONES void quantize_bucket_range(const scalar_t* values, int64_t numel, int64_t bucket_size,
                                          int64_t first_element, bool stochastic, uint32_t stream, uint16_t* lows,
                                          uint16_t* highs, uint8_t* codes, int64_t first_bucket, int64_t last_bucket) {
  std::vector<float> span(span_buckets(bucket_size) * bucket_size);
  for (int64_t bucket = first_bucket; bucket < last_bucket; bucket += span_buckets(bucket_size)) {
    const int64_t start = bucket * bucket_size;
    const int64_t length = std::min(std::min(last_bucket - bucket, span_buckets(bucket_size)) * bucket_size, numel - start);
    load_floats(values + start, length, span.data());
    with_bucket_length(bucket_size, [&](auto size) LMO_CPU_INLINE_LAMBDA {
      quantize_buckets(span.data(), length, size, first_element + start, stochastic, stream, lows + bucket,
                       highs + bucket, codes + start / 2);
    });
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

  int64_t blocks(int64_t block_size) const { return (numel + block_size - 1) / block_size; }
};

// A thread's buffers for whole blocks: the float32 accumulator, the Top-K selection's, the codes'.
struct BlockBuffers {
  explicit BlockBuffers(int64_t block_size) : select(block_size), a(block_size), codes(block_size + 1) {}
  SelectBuffers select;
  std::vector<float> a;
  std::vector<uint8_t> codes;  // one per byte
};

// Steps 2 to 5 of one Top-K block made of whole buckets, in one pass: the block is dequantized into a float32
// buffer (the accumulator is float32 whatever the gradient's dtype), its Top-K written to the window, the kept
// entries removed and its buckets quantized, all while it sits in cache. The gradient is not written back.
template <typename scalar_t>
LMO_CPU_CLONES void compress_block(const CompressTarget& t, int64_t block, int64_t block_size, int64_t k_block, int64_t bucket_size,
                    bool stochastic, BlockBuffers& buffers) {
  const scalar_t* gradient = static_cast<const scalar_t*>(t.gradient);
  float* a = buffers.a.data();
  const int64_t start = block * block_size, length = std::min(block_size, t.numel - start);
  // Step 2 (the block starts on a bucket boundary).
  const int64_t first_bucket = start / bucket_size;
  with_bucket_length(bucket_size, [&](auto size) LMO_CPU_INLINE_LAMBDA {
    add_dequantized_buckets(gradient + start, t.codes + start / 2, t.lows + first_bucket, t.highs + first_bucket,
                            length, size, buffers.codes.data(), a);
  });
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
  with_bucket_length(bucket_size, [&](auto size) LMO_CPU_INLINE_LAMBDA {
    quantize_buckets(a, length, size, start, stochastic, t.key, t.lows + first_bucket, t.highs + first_bucket,
                     t.codes + start / 2);
  });
}
// Step 7's decay: p *= 1 - lr * weight_decay, rounded to p's dtype.
template <typename scalar_t>
LMO_CPU_INLINE void scale(scalar_t* values, int64_t count, float factor) {
  for (int64_t i = 0; i < count; ++i) values[i] = static_cast<scalar_t>(static_cast<float>(values[i]) * factor);
}

// The same decay with param_rounding="stochastic": each product rounded stochastically, element `first + i` drawing
// from the stream `key`.
template <typename scalar_t>
LMO_CPU_INLINE void scale_stochastically(scalar_t* values, int64_t first, int64_t count, float factor, uint32_t key) {
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
  LMO_CPU_INLINE void accumulate(const int16_t* indices, const uint16_t* window, const float* weights1,
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
LMO_CPU_CLONES void update_block(const UpdateTarget& t, int64_t block, const UpdateSettings& s, WindowSums& sums) {
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

}  // namespace
}  // namespace microadam
}  // namespace lit_microopt
