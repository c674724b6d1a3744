// Adam-mini's element-wise pass on the CPU, the twin of apply_moments_ in
// lit_microopt/ops/reference/adam_mini.py: weight decay, m's update, p -= step_size * m / d_row, m written
// back in its dtype (stochastically rounded when narrower than the parameter), p rounded to nearest or, with
// param_rounding="stochastic", stochastically. One pass over p, g and m.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <type_traits>

#include "../common/cpu_rounding.h"
#include "adam_mini_checks.h"
#include "adam_mini_math.h"
#include "../common/kernel_registration.h"

namespace lit_microopt {
namespace adam_mini {
namespace {

// The loop-invariant choices (weight decay, either stochastic rounding) are template arguments, so that the loop
// over a row has no branch and vectorises.
template <typename param_t, typename moment_t, bool Decays, bool StochasticMoment, bool StochasticParam>
inline void update_element(param_t& param, param_t grad, moment_t& moment, float denominator,
                           const Hyperparameters& h, int64_t index) {
  float p = static_cast<float>(param);
  if constexpr (Decays) {  // weight decay rounds p
    const float decayed = p * h.decay;
    p = static_cast<float>(StochasticParam ? round_stochastically<param_t>(decayed, uniform(h.decay_key, index))
                                           : static_cast<param_t>(decayed));
  }
  const float updated = lerp(static_cast<float>(moment), static_cast<float>(grad), h.weight);
  // m in the parameter's dtype is rounded before it is used, as the reference's in-place lerp_ does.
  const float used = std::is_same_v<param_t, moment_t> ? static_cast<float>(static_cast<moment_t>(updated)) : updated;
  const float next = apply_update(p, used, denominator, h.step_size);
  param = StochasticParam ? round_stochastically<param_t>(next, uniform(h.param_key, index))
                          : static_cast<param_t>(next);
  moment = StochasticMoment ? round_stochastically<moment_t>(updated, uniform(h.key, index))
                            : static_cast<moment_t>(updated);
}

// One row of the matrix: `width` contiguous elements from `base`, one denominator (axis 0) or one per column.
template <typename param_t, typename moment_t, bool Decays, bool StochasticMoment, bool StochasticParam>
LMO_CPU_CLONES void update_row(param_t* p, const param_t* g, moment_t* m, const float* denominators, int64_t base,
                               int64_t width, bool one_denominator, const Hyperparameters h) {
  constexpr auto element = update_element<param_t, moment_t, Decays, StochasticMoment, StochasticParam>;
  if (one_denominator) {
    const float denominator = denominators[0];
    for (int64_t j = 0; j < width; ++j) element(p[base + j], g[base + j], m[base + j], denominator, h, base + j);
  } else {
    for (int64_t j = 0; j < width; ++j) element(p[base + j], g[base + j], m[base + j], denominators[j], h, base + j);
  }
}

template <typename param_t, typename moment_t, bool Decays, bool StochasticMoment, bool StochasticParam>
void update(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg, const at::Tensor& row_denominator,
            int64_t block_axis, const Hyperparameters& h) {
  param_t* p = param.data_ptr<param_t>();
  const param_t* g = grad.data_ptr<param_t>();
  moment_t* m = exp_avg.data_ptr<moment_t>();
  const float* denominators = row_denominator.data_ptr<float>();
  const int64_t rows = row_denominator.numel();
  // The matrix is (rows, width) for block_axis 0 and (width, rows) for block_axis 1: walk it by its own rows,
  // so that the inner loop is contiguous and its denominator is one number (axis 0) or a contiguous run.
  const int64_t outer = block_axis == 0 ? rows : param.numel() / rows;
  const int64_t width = param.numel() / outer;
  at::parallel_for(0, outer, std::max<int64_t>(1, 16384 / width), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      update_row<param_t, moment_t, Decays, StochasticMoment, StochasticParam>(
          p, g, m, block_axis == 0 ? denominators + r : denominators, r * width, width, block_axis == 0, h);
    }
  });
}

// update with the choices of `h` as template arguments. param_rounding="stochastic" rounds a 16-bit p
// stochastically, each rounding with its own stream; a float32 p has nothing to round.
template <typename param_t, typename moment_t>
void update_with_choices(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg,
                         const at::Tensor& row_denominator, int64_t block_axis, const Hyperparameters& h) {
  auto run = [&]<bool Decays, bool StochasticMoment, bool StochasticParam>() {
    update<param_t, moment_t, Decays, StochasticMoment, StochasticParam>(param, grad, exp_avg, row_denominator,
                                                                         block_axis, h);
  };
  auto with_param = [&]<bool Decays, bool StochasticMoment>() {
    if constexpr (std::is_same_v<param_t, float>) {
      run.template operator()<Decays, StochasticMoment, false>();
    } else if (h.stochastic_param) {
      run.template operator()<Decays, StochasticMoment, true>();
    } else {
      run.template operator()<Decays, StochasticMoment, false>();
    }
  };
  auto with_moment = [&]<bool Decays>() {
    if (h.stochastic) {
      with_param.template operator()<Decays, true>();
    } else {
      with_param.template operator()<Decays, false>();
    }
  };
  if (h.decays) {
    with_moment.template operator()<true>();
  } else {
    with_moment.template operator()<false>();
  }
}

void adam_mini_update_cpu(at::Tensor param, const at::Tensor& grad, at::Tensor exp_avg,
                          const at::Tensor& row_denominator, int64_t block_axis, double step_size, double beta1,
                          double lr, double weight_decay, bool stochastic, int64_t key, bool stochastic_param,
                          int64_t param_key, int64_t decay_key) {
  check_kernel_device(param, "param", at::kCPU);
  check_arguments(param, grad, exp_avg, row_denominator, block_axis);
  const Hyperparameters h = make_hyperparameters(step_size, beta1, lr, weight_decay, stochastic, key, stochastic_param,
                                                 param_key, decay_key);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, param.scalar_type(), "adam_mini_update_", [&] {
    using param_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, exp_avg.scalar_type(), "adam_mini_update_", [&] {
      update_with_choices<param_t, scalar_t>(param, grad, exp_avg, row_denominator, block_axis, h);
    });
  });
}

}  // namespace

LMO_REGISTER_KERNELS(CPU, m) { m.impl("adam_mini_update_", &adam_mini_update_cpu); }

}  // namespace adam_mini
}  // namespace lit_microopt
