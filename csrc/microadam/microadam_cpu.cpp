// MicroAdam's ops on the CPU: the same steps as lit_microopt/ops/reference/microadam.py, parallel over
// Top-K blocks or quantization buckets with at::parallel_for, on the block kernels of microadam_cpu_blocks.h.
// Inputs are the 1-D contiguous views the optimizer passes; every check names the argument that is wrong.
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
#include "microadam_cpu_blocks.h"
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
    at::parallel_for(0, buckets, span_buckets(bucket_size), [&](int64_t begin, int64_t end) {
      dequant_add_buckets(values, numel, codes, lows, highs, bucket_size, begin, end);
    });
  });
}


void block_topk_cpu(const at::Tensor& accumulator, at::Tensor indices_row, at::Tensor values_row, int64_t block_size,
                    int64_t k_block, int64_t k_last) {
  check_kernel_device(accumulator, "accumulator", at::kCPU);
  const int64_t blocks = check_window_row(accumulator, indices_row, values_row, block_size, k_block, k_last);
  const int64_t numel = accumulator.numel();
  int16_t* indices = indices_row.data_ptr<int16_t>();
  uint16_t* kept = bf16_data_mut(values_row);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, accumulator.scalar_type(), "block_topk", [&] {
    const scalar_t* values = accumulator.data_ptr<scalar_t>();
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      select_blocks(values, numel, block_size, k_block, k_last, indices, kept, begin, end);
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
    at::parallel_for(0, buckets, span_buckets(bucket_size), [&](int64_t begin, int64_t end) {
      quantize_bucket_range(values, numel, bucket_size, first_element, stochastic, static_cast<uint32_t>(key), lows,
                            highs, codes, begin, end);
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

// The compress target of a gradient (or accumulator) and the state its step writes.
CompressTarget compress_target(const at::Tensor& accumulator, at::Tensor& indices_row, at::Tensor& values_row,
                               at::Tensor& error_feedback, at::Tensor& bucket_min, at::Tensor& bucket_max,
                               int64_t block_size, int64_t k_block, uint32_t key) {
  const int64_t numel = accumulator.numel(), full_blocks = numel / block_size;
  return CompressTarget{accumulator.data_ptr(), accumulator.scalar_type(), numel, full_blocks,
                        indices_row.numel() - full_blocks * k_block, indices_row.data_ptr<int16_t>(),
                        bf16_data_mut(values_row), error_feedback.data_ptr<uint8_t>(), bf16_data_mut(bucket_min),
                        bf16_data_mut(bucket_max), key};
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
  const CompressTarget target = compress_target(accumulator, indices_row, values_row, error_feedback, bucket_min,
                                                bucket_max, block_size, k_block, static_cast<uint32_t>(key));
  with_float_type(target.dtype, [&](auto type) {
    using scalar_t = decltype(type);
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      BlockBuffers buffers(block_size);
      for (int64_t block = begin; block < end; ++block) {
        compress_block<scalar_t>(target, block, block_size, k_block, bucket_size, stochastic, buffers);
      }
    });
  });
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
    compress.push_back(compress_target(g[i], indices_row, values_row, codes, lows, highs, block_size, k_block, s.key));
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
      blocks, [&] { return std::make_pair(BlockBuffers(block_size), WindowSums(block_size)); },
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