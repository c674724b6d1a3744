// Stochastic rounding of a float32 value to a CPU kernel's element type (at::BFloat16, at::Half, float), with the
// formulas of numerics.h: the twin of stochastic_round in lit_microopt/ops/reference/random.py, shared by the
// CPU kernels of both optimizers (Adam-mini's first moment, either optimizer's 16-bit parameters).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

#include "numerics.h"

namespace lit_microopt {

// `value` rounded to T up or down at random, unbiased, with the stream's number `random` in [0, 1); float32
// (nothing narrower to round to) is the identity. A value that T holds exactly stays itself.
template <typename T>
inline T round_stochastically(float value, float random) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return T(stochastic_bfloat16(value, random), T::from_bits());
  } else if constexpr (std::is_same_v<T, c10::Half>) {
    return T(stochastic_float16(value, static_cast<c10::Half>(value).x, random), T::from_bits());
  } else {
    return static_cast<T>(value);
  }
}

}  // namespace lit_microopt
