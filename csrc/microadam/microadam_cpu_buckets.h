// MicroAdam's CPU work on quantization buckets, on raw pointers: step 2 (g + Q^-1(e)) and step 5 (bucket ranges and
// 4-bit codes), bucket by bucket and over runs of buckets, with AVX2 code for the default bucket size. Part of the
// block kernels of microadam_cpu_blocks.h.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__)
#include <immintrin.h>
#define LMO_CPU_AVX2_KERNELS 1
#else
#define LMO_CPU_AVX2_KERNELS 0
#endif

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

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

#if LMO_CPU_AVX2_KERNELS
// Whether the AVX2 code below runs: where the processor has AVX2, unless PyTorch's ATEN_CPU_CAPABILITY asks for the
// baseline ("default"), as it does of PyTorch's own kernels; that is how the tests run the portable code too.
inline bool use_avx2_code() {
  static const bool use = __builtin_cpu_supports("avx2") && [] {
    const char* capability = std::getenv("ATEN_CPU_CAPABILITY");
    return capability == nullptr || std::strcmp(capability, "default") != 0;
  }();
  return use;
}
#endif

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
    if (count == 64 && use_avx2_code()) return add_dequantized_64_avx2(gradient, packed, scale, out);
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
  if (count == 64 && !stochastic && use_avx2_code()) return encode_64_nearest_avx2(values, scale, codes);
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

}  // namespace
}  // namespace microadam
}  // namespace lit_microopt
