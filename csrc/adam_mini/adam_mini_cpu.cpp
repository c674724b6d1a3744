// Adam-mini's element-wise pass on the CPU, the twin of apply_moments_ in
// lit_microopt/ops/reference/adam_mini.py: weight decay, m's update, p -= step_size * m / d_row, m written
// back in its dtype (stochastically rounded when narrower than the parameter), p rounded to nearest or, with
// param_rounding="stochastic", stochastically. One pass over p, g and m.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../common/cpu_rounding.h"
#include "../common/cpu_tensor_tasks.h"
#include "adam_mini_checks.h"
#include "adam_mini_math.h"
#include "adam_mini_multi.h"
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

void multi_block_mean_squares_cpu(at::Tensor block_mean_sqs, at::TensorList grads, at::IntArrayRef block_axes,
                                  at::IntArrayRef segment_counts, at::IntArrayRef segment_rows,
                                  at::IntArrayRef rows_per_block) {
  constexpr const char* op = "multi_block_mean_squares_";
  check_kernel_device(block_mean_sqs, "block_mean_sqs", at::kCPU);
  const auto layouts = multi_layouts(op, grads.size(), "grads", block_axes, segment_counts, segment_rows,
                                     rows_per_block);
  check_statistics_arguments(op, block_mean_sqs, grads, layouts);
  for (size_t i = 0; i < grads.size(); ++i) {
    block_mean_squares_into(grads[i], layouts[i], segment_rows, rows_per_block,
                            block_mean_sqs.narrow(0, layouts[i].first_block, layouts[i].blocks));
  }
}

// One tensor of the element-wise pass: its pointers, its block matrix walked by its own rows, its constants, and
// the instantiation of update_row for its choices. The per-tensor op is a list of one.
struct RowsWork;
using RowsFunction = void (*)(const RowsWork&, int64_t, int64_t);

struct RowsWork {
  void* param;
  const void* grad;
  void* moment;
  const float* denominators;  // one per block row
  int64_t outer;              // rows of the walk: the block rows (axis 0) or numel / block rows (axis 1)
  int64_t width;              // elements of one row of the walk
  int64_t rows_per_chunk;     // rows of one work item of the parallel loop
  bool axis0;                 // one denominator a walked row (block axis 0), else a contiguous run of them
  Hyperparameters h;
  RowsFunction rows;
};

template <typename param_t, typename moment_t, bool Decays, bool StochasticMoment, bool StochasticParam>
void update_rows(const RowsWork& w, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    update_row<param_t, moment_t, Decays, StochasticMoment, StochasticParam>(
        static_cast<param_t*>(w.param), static_cast<const param_t*>(w.grad), static_cast<moment_t*>(w.moment),
        w.axis0 ? w.denominators + r : w.denominators, r * w.width, w.width, w.axis0, w.h);
  }
}

// The instantiation of update_rows for one tensor's choices (a float32 parameter has nothing to round).
template <typename param_t, typename moment_t>
RowsFunction rows_function(const Hyperparameters& h) {
  RowsFunction chosen = nullptr;
  auto pick = [&]<bool Decays, bool StochasticMoment>() {
    if (!std::is_same_v<param_t, float> && h.stochastic_param) {
      chosen = &update_rows<param_t, moment_t, Decays, StochasticMoment, !std::is_same_v<param_t, float>>;
    } else {
      chosen = &update_rows<param_t, moment_t, Decays, StochasticMoment, false>;
    }
  };
  auto with_moment = [&]<bool Decays>() {
    if (h.stochastic) {
      pick.template operator()<Decays, true>();
    } else {
      pick.template operator()<Decays, false>();
    }
  };
  if (h.decays) {
    with_moment.template operator()<true>();
  } else {
    with_moment.template operator()<false>();
  }
  return chosen;
}

// The element-wise pass of one tensor, whose `rows` block rows have one denominator each.
template <typename param_t, typename moment_t>
RowsWork rows_work(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                   const float* row_denominators, int64_t rows, int64_t block_axis, const Hyperparameters& h) {
  // The matrix is (rows, width) for block_axis 0 and (width, rows) for block_axis 1: walk it by its own rows,
  // so that the inner loop is contiguous and its denominator is one number (axis 0) or a contiguous run.
  const int64_t numel = param.numel();
  const int64_t outer = block_axis == 0 ? rows : numel / rows;
  const int64_t width = numel / outer;
  // Chunks of about 16384 elements (whole rows).
  const int64_t rows_per_chunk = std::max<int64_t>(1, 16384 / width);
  return {param.data_ptr(), grad.data_ptr(), exp_avg.data_ptr(), row_denominators, outer, width, rows_per_chunk,
          block_axis == 0, h, rows_function<param_t, moment_t>(h)};
}

// Steps 1, 2, 4 and 5 of every tensor of `work` in one parallel loop over (tensor, chunk of rows).
void run_rows(const std::vector<RowsWork>& work) {
  std::vector<int64_t> chunks;
  for (const RowsWork& item : work) chunks.push_back((item.outer + item.rows_per_chunk - 1) / item.rows_per_chunk);
  parallel_for_tensor_units(chunks, [&](size_t tensor, int64_t chunk) {
    const RowsWork& item = work[tensor];
    const int64_t row_begin = chunk * item.rows_per_chunk;
    item.rows(item, row_begin, std::min(row_begin + item.rows_per_chunk, item.outer));
  });
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
      run_rows({rows_work<param_t, scalar_t>(param, grad, exp_avg, row_denominator.data_ptr<float>(),
                                             row_denominator.numel(), block_axis, h)});
    });
  });
}

void multi_adam_mini_update_cpu(const at::Tensor& block_mean_sqs, at::TensorList params, at::TensorList grads,
                                at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::IntArrayRef block_axes,
                                at::IntArrayRef segment_counts, at::IntArrayRef segment_rows,
                                at::IntArrayRef rows_per_block, at::ArrayRef<double> weight_decays,
                                at::IntArrayRef rounding_seeds, int64_t step, double lr, double beta1, double beta2,
                                double eps, bool stochastic_param) {
  constexpr const char* op = "multi_adam_mini_update_";
  check_kernel_device(block_mean_sqs, "block_mean_sqs", at::kCPU);
  const auto layouts = multi_layouts(op, params.size(), "params", block_axes, segment_counts, segment_rows,
                                     rows_per_block);
  check_update_arguments(op, block_mean_sqs, params, grads, exp_avgs, exp_avg_sqs, layouts, weight_decays,
                         rounding_seeds);
  if (params.empty()) return;

  // Step 3 and the denominators, tensor by tensor with the reference's ATen ops; then every block's denominator
  // spread over its rows (plain copies: the reference's repeat_interleave, without a call per tensor).
  std::vector<at::Tensor> denominators, contiguous_grads;
  int64_t spread_rows = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor exp_avg_sq = exp_avg_sqs[i];
    denominators.push_back(block_denominators(
        exp_avg_sq, block_mean_sqs.narrow(0, layouts[i].first_block, layouts[i].blocks), step, beta2, eps));
    contiguous_grads.push_back(grads[i].contiguous());
    if (layouts[i].blocks != layouts[i].rows) spread_rows += layouts[i].rows;
  }
  std::vector<float> spread(spread_rows);
  std::vector<RowsWork> work;
  float* next_spread = spread.data();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, params[0].scalar_type(), op, [&] {
    using param_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, exp_avgs[0].scalar_type(), op, [&] {
      for (size_t i = 0; i < params.size(); ++i) {
        const MultiLayout& layout = layouts[i];
        const float* row_denominators = denominators[i].data_ptr<float>();
        if (layout.blocks != layout.rows) {
          float* rows = next_spread;
          for (int64_t s = layout.first_segment, block = 0; s < layout.first_segment + layout.segments; ++s) {
            for (int64_t r = 0; r < segment_rows[s]; ++r) {
              *next_spread++ = row_denominators[block + r / rows_per_block[s]];
            }
            block += segment_rows[s] / rows_per_block[s];
          }
          row_denominators = rows;
        }
        const Hyperparameters h = multi_hyperparameters(params[i], exp_avgs[i], step, lr, beta1, weight_decays[i],
                                                        rounding_seeds[i], stochastic_param);
        work.push_back(rows_work<param_t, scalar_t>(params[i], contiguous_grads[i], exp_avgs[i], row_denominators,
                                                    layout.rows, layout.block_axis, h));
      }
    });
  });
  // Small tensors share a thread-pool wake-up instead of paying one each.
  run_rows(work);
}

}  // namespace

LMO_REGISTER_KERNELS(CPU, m) {
  m.impl("adam_mini_update_", &adam_mini_update_cpu);
  m.impl("multi_block_mean_squares_", &multi_block_mean_squares_cpu);
  m.impl("multi_adam_mini_update_", &multi_adam_mini_update_cpu);
}

}  // namespace adam_mini
}  // namespace lit_microopt
