// Adam-mini's per-element formulas, shared by adam_mini_cpu.cpp and adam_mini_cuda.cu. Mirrors
// apply_moments_ in lit_microopt/ops/reference/adam_mini.py; float32 arithmetic, products rounded before sums.
#pragma once

#include "../common/numerics.h"

namespace lit_microopt {
namespace adam_mini {

struct Hyperparameters {
  float step_size;   // lr / bc1
  float weight;      // 1 - beta1, the lerp weight of m's update
  float decay;       // 1 - lr * weight_decay
  bool decays;       // weight_decay != 0
  bool stochastic;   // m is narrower than the parameter: round it stochastically
  uint32_t key;      // the random stream of that rounding
};

inline Hyperparameters make_hyperparameters(double step_size, double beta1, double lr, double weight_decay,
                                            bool stochastic, int64_t key) {
  return {static_cast<float>(step_size), static_cast<float>(1.0 - beta1),
          static_cast<float>(1.0 - lr * weight_decay), weight_decay != 0.0, stochastic, static_cast<uint32_t>(key)};
}

// torch.lerp's formula: start + weight * (end - start) for small weights.
LMO_HOST_DEVICE float lerp(float start, float end, float weight) {
  return fabsf(weight) < 0.5f ? start + weight * (end - start) : end - (end - start) * (1.0f - weight);
}

// p + (-step_size) * (m / d), as addcdiv_ computes it.
LMO_HOST_DEVICE float apply_update(float param, float moment, float denominator, float step_size) {
  return param - step_size * (moment / denominator);
}

// Unbiased stochastic rounding of a float to bfloat16: add 16 random bits below the kept ones, truncate.
LMO_HOST_DEVICE uint16_t stochastic_bfloat16(float value, float random) {
  const int32_t noise = static_cast<int32_t>(random * 65536.0f);
  return static_cast<uint16_t>((float_bits(value) + static_cast<uint32_t>(noise)) >> 16);
}

// Unbiased stochastic rounding between a 16-bit float `nearest` and its neighbour on the other side of
// `value`, given both as floats and the neighbour's bits: keep `nearest` unless random < error / gap.
LMO_HOST_DEVICE bool take_neighbour(float value, float nearest, float neighbour, float random) {
  const float probability = (value - nearest) / (neighbour - nearest);
  return random < probability;
}

}  // namespace adam_mini
}  // namespace lit_microopt
