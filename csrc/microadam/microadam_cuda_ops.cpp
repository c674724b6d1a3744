// The PyTorch side of MicroAdam's CUDA ops: argument checks, the tensor's own device and current stream,
// then the launchers of microadam_cuda.cu. Registered for the CUDA dispatch key of the ops in ops.cpp.
#include <ATen/ops/from_blob.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/cuda_glue.h"
#include "microadam_checks.h"
#include "microadam_chunks.h"
#include "microadam_cuda.h"
#include "microadam_step.h"
#include "../common/kernel_registration.h"

namespace lit_microopt {
namespace microadam {
namespace {

const uint16_t* bf16(const at::Tensor& tensor) { return reinterpret_cast<const uint16_t*>(tensor.data_ptr()); }
uint16_t* bf16_mut(at::Tensor& tensor) { return reinterpret_cast<uint16_t*>(tensor.data_ptr()); }

void ef_dequant_add_cuda(at::Tensor accumulator, const at::Tensor& error_feedback, const at::Tensor& bucket_min,
                         const at::Tensor& bucket_max, int64_t bucket_size) {
  check_kernel_device(accumulator, "accumulator", kCudaKernelDevice);
  check_bucket_state(accumulator, error_feedback, bucket_min, bucket_max, bucket_size);
  const c10::cuda::CUDAGuard guard(accumulator.device());
  check_launch(launch_ef_dequant_add(dtype_code(accumulator, "accumulator"), accumulator.data_ptr(),
                                     error_feedback.data_ptr<uint8_t>(), bf16(bucket_min), bf16(bucket_max),
                                     accumulator.numel(), bucket_size, c10::cuda::getCurrentCUDAStream()),
               "ef_dequant_add_");
}

void block_topk_cuda(const at::Tensor& accumulator, at::Tensor indices_row, at::Tensor values_row,
                     int64_t block_size, int64_t k_block, int64_t k_last) {
  check_kernel_device(accumulator, "accumulator", kCudaKernelDevice);
  check_window_row(accumulator, indices_row, values_row, block_size, k_block, k_last);
  const c10::cuda::CUDAGuard guard(accumulator.device());
  check_launch(launch_block_topk(dtype_code(accumulator, "accumulator"), accumulator.data_ptr(),
                                 indices_row.data_ptr<int16_t>(), bf16_mut(values_row), accumulator.numel(),
                                 block_size, k_block, k_last, c10::cuda::getCurrentCUDAStream()),
               "block_topk");
}

// Steps 4 and 5 (the random stream indexed from `first_element`, a chunk's offset in its tensor).
void quantize_remainder(at::Tensor& accumulator, const at::Tensor& indices_row, at::Tensor& error_feedback,
                        at::Tensor& bucket_min, at::Tensor& bucket_max, int64_t bucket_size, int64_t block_size,
                        int64_t k_block, bool stochastic, int64_t key, int64_t first_element) {
  const c10::cuda::CUDAGuard guard(accumulator.device());
  check_launch(launch_ef_quantize(dtype_code(accumulator, "accumulator"), accumulator.data_ptr(),
                                  indices_row.data_ptr<int16_t>(), indices_row.numel(),
                                  error_feedback.data_ptr<uint8_t>(), bf16_mut(bucket_min), bf16_mut(bucket_max),
                                  accumulator.numel(), bucket_size, block_size, k_block, stochastic,
                                  static_cast<uint32_t>(key), first_element, c10::cuda::getCurrentCUDAStream()),
               "ef_quantize_");
}

void ef_quantize_cuda(at::Tensor accumulator, const at::Tensor& indices_row, at::Tensor error_feedback,
                      at::Tensor bucket_min, at::Tensor bucket_max, int64_t bucket_size, int64_t block_size,
                      int64_t k_block, bool stochastic, int64_t key) {
  check_kernel_device(accumulator, "accumulator", kCudaKernelDevice);
  check_bucket_state(accumulator, error_feedback, bucket_min, bucket_max, bucket_size);
  check_operand(indices_row, "indices_row", accumulator, at::kShort);
  check_window_columns(accumulator.numel(), block_size, k_block, indices_row.numel(), "indices_row");
  quantize_remainder(accumulator, indices_row, error_feedback, bucket_min, bucket_max, bucket_size, block_size, k_block,
                     stochastic, key, 0);
}

// Steps 2 to 5: the three kernels one after the other on the current stream, on the gradient buffer for a
// float32 gradient, else on float32 chunks of it (the accumulator is float32 whatever the gradient's dtype).
void ef_compress_cuda(at::Tensor accumulator, at::Tensor indices_row, at::Tensor values_row, at::Tensor error_feedback,
                      at::Tensor bucket_min, at::Tensor bucket_max, int64_t bucket_size, int64_t block_size,
                      int64_t k_block, int64_t k_last, bool stochastic, int64_t key) {
  // Every argument is checked before the first kernel runs: a refused call changes nothing.
  check_kernel_device(accumulator, "accumulator", kCudaKernelDevice);
  check_bucket_state(accumulator, error_feedback, bucket_min, bucket_max, bucket_size);
  check_window_row(accumulator, indices_row, values_row, block_size, k_block, k_last);
  compress_in_float32(accumulator, indices_row, values_row, error_feedback, bucket_min, bucket_max, bucket_size,
                      block_size, k_block, k_last, stochastic, key, ef_dequant_add_cuda, block_topk_cuda,
                      quantize_remainder);
}

void window_adam_update_cuda(at::Tensor param, const at::Tensor& window_indices, const at::Tensor& window_values,
                             const at::Tensor& row_weights1, const at::Tensor& row_weights2, int64_t block_size,
                             int64_t k_block, double c1, double c2, double eps, double lr, double weight_decay,
                             bool stochastic_param, int64_t param_key, int64_t decay_key) {
  check_kernel_device(param, "param", kCudaKernelDevice);
  const int64_t rows = check_window(param, window_indices, window_values, row_weights1, row_weights2, block_size,
                                    k_block);
  const c10::cuda::CUDAGuard guard(param.device());
  check_launch(launch_window_adam_update(
                   dtype_code(param, "param"), param.data_ptr(), window_indices.data_ptr<int16_t>(),
                   bf16(window_values), row_weights1.data_ptr<float>(), row_weights2.data_ptr<float>(), rows,
                   window_indices.size(1), param.numel(), block_size, k_block, static_cast<float>(c1),
                   static_cast<float>(c2), static_cast<float>(eps), static_cast<float>(lr), weight_decay > 0,
                   static_cast<float>(1.0 - lr * weight_decay), stochastic_param, static_cast<uint32_t>(param_key),
                   static_cast<uint32_t>(decay_key), c10::cuda::getCurrentCUDAStream()),
               "window_adam_update_");
}

// One MicroAdam step (steps 1 to 7) of every tensor of a list: the schedules on the host, then each tensor's
// kernels in turn on the current stream (the row weights copied to the device once per distinct step count).
void microadam_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList window_indices,
                         at::TensorList window_values, at::TensorList error_feedback, at::TensorList bucket_min,
                         at::TensorList bucket_max, at::TensorList steps, at::TensorList seeds, double lr,
                         double beta1, double beta2, double eps, double weight_decay, int64_t m, int64_t block_size,
                         int64_t k_block, int64_t bucket_size, bool stochastic, bool stochastic_param) {
  const std::vector<at::Tensor> p = params.vec(), g = grads.vec(), wi = window_indices.vec(), wv = window_values.vec(),
                                e = error_feedback.vec(), lo = bucket_min.vec(), hi = bucket_max.vec(),
                                st = steps.vec(), se = seeds.vec();
  const StepTensors tensors{p, g, wi, wv, e, lo, hi, st, se};
  check_step_tensors(tensors, kCudaKernelDevice, m, block_size, k_block, bucket_size);
  RowWeights row_weights(m, beta1, beta2);
  const std::vector<TensorSchedule> schedules = advance_steps(tensors, m, beta1, beta2, row_weights);
  std::map<const float*, at::Tensor> device_weights;  // by host weights (every tensor is on one device)
  auto on_device = [&](const float* weights, int64_t rows) -> const at::Tensor& {
    auto found = device_weights.find(weights);
    if (found != device_weights.end()) return found->second;
    at::Tensor host = at::from_blob(const_cast<float*>(weights), {rows}, at::TensorOptions().dtype(at::kFloat));
    return device_weights.emplace(weights, host.to(p.front().device())).first->second;
  };
  for (size_t i = 0; i < p.size(); ++i) {
    const TensorSchedule& s = schedules[i];
    const int64_t full_blocks = p[i].numel() / block_size;
    const int64_t k_last = wi[i].size(1) - full_blocks * k_block;
    at::Tensor indices_row = wi[i].select(0, s.row), values_row = wv[i].select(0, s.row);
    compress_in_float32(g[i].view(-1), indices_row, values_row, e[i], lo[i], hi[i], bucket_size, block_size, k_block, k_last,
                        stochastic, s.key, ef_dequant_add_cuda, block_topk_cuda, quantize_remainder);
    const at::Tensor& weights1 = on_device(s.weights1, s.filled);
    const at::Tensor& weights2 = on_device(s.weights2, s.filled);
    window_adam_update_cuda(p[i].view(-1), wi[i].narrow(0, 0, s.filled), wv[i].narrow(0, 0, s.filled), weights1, weights2,
                            block_size, k_block, s.c1, s.c2, eps, lr, weight_decay, stochastic_param, s.update_key,
                            s.decay_key);
  }
}

}  // namespace

LMO_REGISTER_KERNELS(CUDA, m) {
  m.impl("ef_dequant_add_", &ef_dequant_add_cuda);
  m.impl("block_topk", &block_topk_cuda);
  m.impl("ef_quantize_", &ef_quantize_cuda);
  m.impl("window_adam_update_", &window_adam_update_cuda);
  m.impl("ef_compress_", &ef_compress_cuda);
  m.impl("microadam_step_", &microadam_step_cuda);
}

}  // namespace microadam
}  // namespace lit_microopt
