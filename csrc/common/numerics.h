// Arithmetic shared by the CPU (C++) and CUDA kernels: bfloat16 rounding done on bits, the counter-based
// random stream and the stochastic rounding it drives. Only <cstdint>/<cmath>: no PyTorch, no CUDA headers,
// so that .cu files stay quick to compile. Every function is the exact twin of a line of the Python
// reference (lit_microopt/ops/reference), which is the definition.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define LMO_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LMO_HOST_DEVICE inline
#endif

// CPU hot loops are compiled twice, for AVX2 and for any x86-64, and the loader picks the version the
// processor runs (GCC function multi-versioning): vectorised code without giving up old processors. AVX2
// brings no fused multiply-add, so results are the same bits either way.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define LMO_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define LMO_CPU_CLONES
#endif

// The pieces a cloned function is made of are inlined into it, and so compiled for each of its targets (a call to a
// separate function would run that function's own, baseline, code). Lambdas take the attribute after their
// parameter list: [&](auto x) LMO_CPU_INLINE_LAMBDA { ... }.
#if defined(__GNUC__) && !defined(__CUDACC__)
#define LMO_CPU_INLINE inline __attribute__((always_inline))
#else
#define LMO_CPU_INLINE inline
#endif
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define LMO_CPU_INLINE_LAMBDA __attribute__((always_inline))
#else
#define LMO_CPU_INLINE_LAMBDA
#endif

namespace lit_microopt {

LMO_HOST_DEVICE uint32_t float_bits(float value) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
#endif
}

LMO_HOST_DEVICE float bits_float(uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
#endif
}

// Division by a number fixed for a whole kernel, without a 64-bit division per element (tens of instructions on
// a GPU): for dividends below 2^32, a multiply-high, an add and a shift (Granlund and Montgomery's round-up
// method, exact for every such dividend and 1 <= divisor < 2^31); larger dividends divide.
struct Divider {
  explicit Divider(int64_t value) : divisor(value), fast(value >= 1 && value < (int64_t{1} << 31)) {
    if (!fast) return;
    while ((int64_t{1} << shift) < value) ++shift;
    magic = static_cast<uint32_t>((uint64_t{1} << 32) * ((uint64_t{1} << shift) - static_cast<uint64_t>(value)) /
                                  static_cast<uint64_t>(value) + 1);
  }

  LMO_HOST_DEVICE int64_t divide(int64_t dividend) const {
    if (!fast || dividend < 0 || dividend > 0xffffffffLL) return dividend / divisor;
    const uint32_t low = static_cast<uint32_t>(dividend);
#ifdef __CUDA_ARCH__
    const uint32_t high = __umulhi(low, magic);
#else
    const uint32_t high = static_cast<uint32_t>((static_cast<uint64_t>(low) * magic) >> 32);
#endif
    return static_cast<int64_t>((static_cast<uint64_t>(high) + low) >> shift);
  }

  int64_t divisor;
  bool fast;
  uint32_t magic = 0;
  int shift = 0;
};

// bfloat16 as its 16 bits.
LMO_HOST_DEVICE float bfloat16_to_float(uint16_t bits) { return bits_float(static_cast<uint32_t>(bits) << 16); }

// Round to nearest, ties to even (what PyTorch's .to(torch.bfloat16) does); NaN stays NaN.
LMO_HOST_DEVICE uint16_t float_to_bfloat16(float value) {
  uint32_t bits = float_bits(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// The next 16-bit float (bfloat16 or float16: both sign-magnitude) towards -infinity (down) or +infinity
// (up), as torch.nextafter does.
LMO_HOST_DEVICE uint16_t bfloat16_next(uint16_t bits, bool up) {
  const bool negative = bits & 0x8000u;
  const uint16_t away = static_cast<uint16_t>((negative != up) ? bits + 1 : bits - 1);
  return (bits & 0x7fffu) == 0 ? static_cast<uint16_t>(up ? 0x0001u : 0x8001u) : away;  // from +0 or -0
}

// Largest bfloat16 <= value (down) or smallest bfloat16 >= value (up): the bucket range of step 5. Both
// candidates are computed and one selected: whether rounding went the wrong way is a coin toss, which a branch
// (taken twice per bucket) would mispredict half the time.
LMO_HOST_DEVICE uint16_t bfloat16_outward(float value, bool up) {
  const uint16_t rounded = float_to_bfloat16(value);
  const float back = bfloat16_to_float(rounded);
  const uint16_t next = bfloat16_next(rounded, up);
  return (up ? back < value : back > value) ? next : rounded;
}

// float16 as its 16 bits, widened exactly (as c10::Half's and CUDA's conversions do).
LMO_HOST_DEVICE float float16_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu, mantissa = bits & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float32
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-08f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 0x1fu) return bits_float(sign | 0x7f800000u | (mantissa << 13));  // infinity or NaN
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// Unbiased stochastic rounding of a float to bfloat16 (as bits): add 16 random bits below the kept ones and
// truncate, which rounds the magnitude up with probability (dropped bits) / 2^16. A bfloat16 value stays itself.
LMO_HOST_DEVICE uint16_t stochastic_bfloat16(float value, float random) {
  const int32_t noise = static_cast<int32_t>(random * 65536.0f);
  return static_cast<uint16_t>((float_bits(value) + static_cast<uint32_t>(noise)) >> 16);
}

// Unbiased stochastic rounding between a 16-bit float `nearest` and its neighbour on the other side of
// `value`, given both as floats: keep `nearest` unless random < error / gap.
LMO_HOST_DEVICE bool take_neighbour(float value, float nearest, float neighbour, float random) {
  const float probability = (value - nearest) / (neighbour - nearest);
  return random < probability;
}

// Unbiased stochastic rounding of a float to float16 (as bits), given its nearest float16 (round to nearest
// even, which the caller's own conversion computes): the nearest or its neighbour on the other side of `value`.
LMO_HOST_DEVICE uint16_t stochastic_float16(float value, uint16_t nearest, float random) {
  const float nearest_value = float16_to_float(nearest);
  const uint16_t neighbour = bfloat16_next(nearest, value - nearest_value > 0.0f);  // sign-magnitude, as bf16
  return take_neighbour(value, nearest_value, float16_to_float(neighbour), random) ? neighbour : nearest;
}

// The "lowbias32" mixer of lit_microopt/ops/reference/random.py (unsigned arithmetic wraps mod 2**32).
LMO_HOST_DEVICE uint32_t hash32(uint32_t value) {
  value ^= value >> 16;
  value *= 0x7feb352du;
  value ^= value >> 15;
  value *= 0x846ca68bu;
  value ^= value >> 16;
  return value;
}

// Uniform float in [0, 1) for element `index` of the stream `key`: 24 random bits, exact in float32.
LMO_HOST_DEVICE float uniform(uint32_t key, int64_t index) {
  return static_cast<float>(hash32(static_cast<uint32_t>(index) ^ key) >> 8) * (1.0f / 16777216.0f);
}

// The 32-bit key of one tensor's stream at one step, from its 64-bit seed and its step count: the twin of
// stream_key in lit_microopt/ops/reference/random.py (seeds and steps read as their 64 bits, low half first).
LMO_HOST_DEVICE uint32_t stream_key(int64_t seed, int64_t step) {
  const uint64_t seed_bits = static_cast<uint64_t>(seed), step_bits = static_cast<uint64_t>(step);
  uint32_t key = hash32(static_cast<uint32_t>(seed_bits));
  key = hash32(key ^ static_cast<uint32_t>(seed_bits >> 32));
  key = hash32(key ^ static_cast<uint32_t>(step_bits));
  return hash32(key ^ static_cast<uint32_t>(step_bits >> 32));
}

// The keys of the two stochastic roundings of a 16-bit parameter (param_rounding="stochastic"), after the update
// and after the weight decay: param_rounding_keys of random.py, each stream_key's key mixed with its own salt.
struct ParamRoundingKeys {
  uint32_t update;
  uint32_t decay;
};

LMO_HOST_DEVICE ParamRoundingKeys param_rounding_keys(int64_t seed, int64_t step) {
  const uint32_t key = stream_key(seed, step);
  return {hash32(key ^ 0x9E3779B9u), hash32(key ^ 0x85EBCA6Bu)};
}

}  // namespace lit_microopt
