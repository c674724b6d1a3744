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
  bool stochastic_param;  // param_rounding="stochastic": round a 16-bit p stochastically after decay and update
  uint32_t param_key;     // the random stream of the update's rounding
  uint32_t decay_key;     // the random stream of the decay's rounding
};

inline Hyperparameters make_hyperparameters(double step_size, double beta1, double lr, double weight_decay,
                                            bool stochastic, int64_t key, bool stochastic_param, int64_t param_key,
                                            int64_t decay_key) {
  return {static_cast<float>(step_size), static_cast<float>(1.0 - beta1),
          static_cast<float>(1.0 - lr * weight_decay), weight_decay != 0.0, stochastic, static_cast<uint32_t>(key),
          stochastic_param, static_cast<uint32_t>(param_key), static_cast<uint32_t>(decay_key)};
}

// torch.lerp's formula: start + weight * (end - start) for small weights.
LMO_HOST_DEVICE float lerp(float start, float end, float weight) {
  return fabsf(weight) < 0.5f ? start + weight * (end - start) : end - (end - start) * (1.0f - weight);
}

// p - step_size * (m / d). (The reference's addcdiv_ may round its float32 intermediate differently, an ulp at
// most; its stochastic path, whose random choice sees that intermediate, computes this formula itself.)
LMO_HOST_DEVICE float apply_update(float param, float moment, float denominator, float step_size) {
  return param - step_size * (moment / denominator);
}

}  // namespace adam_mini
}  // namespace lit_microopt
