// The host side of the op microadam_step_, one MicroAdam step of a whole list of tensors (a param group's), shared
// by the CPU kernel (microadam_cpu.cpp), the CUDA glue (microadam_cuda_ops.cpp) and the tests' emulated CUDA ops:
// the checks of every tensor before anything changes, then each tensor's step count advanced and what follows
// from it (window row, random streams, bias corrections, row weights), as lit_microopt/ops/reference/microadam.py
// `tensor_step_` computes them in Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "../common/numerics.h"
#include "microadam_checks.h"

namespace lit_microopt {
namespace microadam {

// The tensors of one microadam_step_ call, list by list.
struct StepTensors {
  const std::vector<at::Tensor>& params;
  const std::vector<at::Tensor>& grads;
  const std::vector<at::Tensor>& window_indices;
  const std::vector<at::Tensor>& window_values;
  const std::vector<at::Tensor>& error_feedback;
  const std::vector<at::Tensor>& bucket_min;
  const std::vector<at::Tensor>& bucket_max;
  const std::vector<at::Tensor>& steps;
  const std::vector<at::Tensor>& seeds;
};

// A host counter of the state: a CPU int64 tensor of one element.
inline void check_counter(const at::Tensor& counter, const char* name) {
  TORCH_CHECK_VALUE(counter.device().is_cpu() && counter.scalar_type() == at::kLong && counter.numel() == 1,
                    "lit_microopt: ", name, " must be a CPU int64 tensor of one element, got a ",
                    counter.scalar_type(), " tensor of ", counter.numel(), " elements on ", counter.device());
}

// Every check of every tensor, before anything changes; a failure names the list position. Returns, per tensor,
// its number of Top-K blocks.
inline std::vector<int64_t> check_step_tensors(const StepTensors& t, c10::DeviceType device_type, int64_t m,
                                               int64_t block_size, int64_t k_block, int64_t bucket_size) {
  const size_t count = t.params.size();
  for (const auto* list : {&t.grads, &t.window_indices, &t.window_values, &t.error_feedback, &t.bucket_min,
                           &t.bucket_max, &t.steps, &t.seeds}) {
    TORCH_CHECK_VALUE(list->size() == count, "lit_microopt: microadam_step_ takes one entry per parameter in every "
                      "list, got ", count, " params and a list of ", list->size());
  }
  TORCH_CHECK_VALUE(m >= 1, "lit_microopt: m (the window length) must be >= 1, got ", m);
  std::vector<int64_t> blocks(count);
  for (size_t i = 0; i < count; ++i) {
    try {
      const at::Tensor& param = t.params[i];
      check_kernel_device(param, "param", device_type);
      check_operand(param, "param", t.params.front());
      check_operand(t.grads[i], "grad", param);
      TORCH_CHECK_VALUE(t.grads[i].numel() == param.numel(), "lit_microopt: grad has ", t.grads[i].numel(),
                        " elements but its parameter ", param.numel());
      check_bucket_state(t.grads[i], t.error_feedback[i], t.bucket_min[i], t.bucket_max[i], bucket_size);
      check_operand(t.window_indices[i], "window_indices", param, at::kShort);
      check_operand(t.window_values[i], "window_values", param, at::kBFloat16);
      TORCH_CHECK_VALUE(t.window_indices[i].dim() == 2 && t.window_indices[i].size(0) == m &&
                            t.window_values[i].sizes() == t.window_indices[i].sizes(),
                        "lit_microopt: window_indices and window_values must be (m, k) = (", m,
                        ", k) matrices of the same shape");
      blocks[i] = check_window_columns(param.numel(), block_size, k_block, t.window_indices[i].size(1),
                                       "window_indices");
      check_counter(t.steps[i], "step");
      check_counter(t.seeds[i], "rounding_seed");
    } catch (const c10::ValueError& error) {
      TORCH_CHECK_VALUE(false, "tensor ", i, " of the lists: ", error.what_without_backtrace());
    } catch (const c10::Error& error) {
      TORCH_CHECK(false, "tensor ", i, " of the lists: ", error.what_without_backtrace());
    }
  }
  return blocks;
}

// What one tensor's step count fixes (docs/microadam.md, steps 1, 5 to 7).
struct TensorSchedule {
  int64_t step;      // t, this step included
  int64_t row;       // the window row this step writes, (t - 1) mod m
  int64_t filled;    // rows that hold entries, min(t, m)
  uint32_t key;      // stream of the error feedback's stochastic rounding
  uint32_t update_key, decay_key;  // streams of a 16-bit parameter's stochastic roundings
  float c1, c2;      // (1 - beta) / (1 - beta^t)
  const float* weights1;  // beta1^age(row) and beta2^age(row) of the filled rows (on the host)
  const float* weights2;
};

// Row weights by step count: the tensors of a call usually share one.
class RowWeights {
 public:
  RowWeights(int64_t m, double beta1, double beta2) : m_(m), beta1_(beta1), beta2_(beta2) {}

  const std::pair<std::vector<float>, std::vector<float>>& at_step(int64_t step) {
    auto found = by_step_.find(step);
    if (found != by_step_.end()) return found->second;
    std::vector<float> weights1, weights2;
    for (int64_t row = 0; row < std::min(step, m_); ++row) {
      // age(row) = (t - 1 - row) mod m, and beta ** age as Python computes it (libm pow, then to float32).
      const double age = static_cast<double>(((step - 1 - row) % m_ + m_) % m_);
      weights1.push_back(static_cast<float>(std::pow(beta1_, age)));
      weights2.push_back(static_cast<float>(std::pow(beta2_, age)));
    }
    return by_step_.emplace(step, std::make_pair(std::move(weights1), std::move(weights2))).first->second;
  }

 private:
  int64_t m_;
  double beta1_, beta2_;
  std::map<int64_t, std::pair<std::vector<float>, std::vector<float>>> by_step_;  // nodes stay where they are
};

// Step 1 for every tensor: its step count advanced by one (after every check passed), and its schedule.
inline std::vector<TensorSchedule> advance_steps(const StepTensors& t, int64_t m, double beta1, double beta2,
                                                 RowWeights& weights) {
  std::vector<TensorSchedule> schedules;
  schedules.reserve(t.steps.size());
  for (size_t i = 0; i < t.steps.size(); ++i) {
    int64_t& counter = *t.steps[i].data_ptr<int64_t>();
    const int64_t step = ++counter;
    const int64_t seed = *t.seeds[i].data_ptr<int64_t>();
    const ParamRoundingKeys param_keys = param_rounding_keys(seed, step);
    const auto& [weights1, weights2] = weights.at_step(step);
    schedules.push_back(TensorSchedule{
        step, (step - 1) % m, std::min(step, m), stream_key(seed, step), param_keys.update, param_keys.decay,
        static_cast<float>((1.0 - beta1) / (1.0 - std::pow(beta1, static_cast<double>(step)))),
        static_cast<float>((1.0 - beta2) / (1.0 - std::pow(beta2, static_cast<double>(step)))),
        weights1.data(), weights2.data()});
  }
  return schedules;
}

}  // namespace microadam
}  // namespace lit_microopt
