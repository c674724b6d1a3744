// The PyTorch side of Adam-mini's CUDA op: checks, the tensor's device and current stream, the launcher.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "../common/cuda_glue.h"
#include "adam_mini_checks.h"
#include "adam_mini_cuda.h"
#include "adam_mini_multi.h"
#include "../common/kernel_registration.h"

namespace lit_microopt {
namespace adam_mini {
namespace {

void adam_mini_update_cuda(at::Tensor param, const at::Tensor& grad, at::Tensor exp_avg,
                           const at::Tensor& row_denominator, int64_t block_axis, double step_size, double beta1,
                           double lr, double weight_decay, bool stochastic, int64_t key, bool stochastic_param,
                           int64_t param_key, int64_t decay_key) {
  check_kernel_device(param, "param", kCudaKernelDevice);
  check_arguments(param, grad, exp_avg, row_denominator, block_axis);
  const c10::cuda::CUDAGuard guard(param.device());
  const Hyperparameters h = make_hyperparameters(step_size, beta1, lr, weight_decay, stochastic, key, stochastic_param,
                                                 param_key, decay_key);
  check_launch(launch_adam_mini_update(dtype_code(param, "param"), dtype_code(exp_avg, "exp_avg"), param.data_ptr(),
                                       grad.data_ptr(), exp_avg.data_ptr(), row_denominator.data_ptr<float>(),
                                       param.numel(), row_denominator.numel(), static_cast<int>(block_axis), h,
                                       c10::cuda::getCurrentCUDAStream()),
               "adam_mini_update_");
}

// The block statistics are the reference's ATen ops (adam_mini_multi.h), on the GPU as on the CPU.
void multi_block_mean_squares_cuda(at::Tensor block_mean_sqs, at::TensorList grads, at::IntArrayRef block_axes,
                                   at::IntArrayRef segment_counts, at::IntArrayRef segment_rows,
                                   at::IntArrayRef rows_per_block) {
  constexpr const char* op = "multi_block_mean_squares_";
  check_kernel_device(block_mean_sqs, "block_mean_sqs", kCudaKernelDevice);
  const auto layouts = multi_layouts(op, grads.size(), "grads", block_axes, segment_counts, segment_rows,
                                     rows_per_block);
  check_statistics_arguments(op, block_mean_sqs, grads, layouts);
  const c10::cuda::CUDAGuard guard(block_mean_sqs.device());
  for (size_t i = 0; i < grads.size(); ++i) {
    block_mean_squares_into(grads[i], layouts[i], segment_rows, rows_per_block,
                            block_mean_sqs.narrow(0, layouts[i].first_block, layouts[i].blocks));
  }
}

// v and the denominators with the reference's ATen ops, then the element-wise pass of every tensor in one launch,
// its tensors described by an array copied to the device (from pinned memory, asynchronously).
void multi_adam_mini_update_cuda(const at::Tensor& block_mean_sqs, at::TensorList params, at::TensorList grads,
                                 at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::IntArrayRef block_axes,
                                 at::IntArrayRef segment_counts, at::IntArrayRef segment_rows,
                                 at::IntArrayRef rows_per_block, at::ArrayRef<double> weight_decays,
                                 at::IntArrayRef rounding_seeds, int64_t step, double lr, double beta1, double beta2,
                                 double eps, bool stochastic_param) {
  constexpr const char* op = "multi_adam_mini_update_";
  check_kernel_device(block_mean_sqs, "block_mean_sqs", kCudaKernelDevice);
  const auto layouts = multi_layouts(op, params.size(), "params", block_axes, segment_counts, segment_rows,
                                     rows_per_block);
  check_update_arguments(op, block_mean_sqs, params, grads, exp_avgs, exp_avg_sqs, layouts, weight_decays,
                         rounding_seeds);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(block_mean_sqs.device());
  const int param_code = dtype_code(params[0], "params"), moment_code = dtype_code(exp_avgs[0], "exp_avgs");
  // Kept alive until the launch: the caching allocator reuses their memory only after the stream's work.
  std::vector<at::Tensor> denominators, contiguous_grads;
  std::vector<MultiTensor> tensors;
  int64_t chunks = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const MultiLayout& layout = layouts[i];
    at::Tensor exp_avg_sq = exp_avg_sqs[i];
    denominators.push_back(row_denominators(
        block_denominators(exp_avg_sq, block_mean_sqs.narrow(0, layout.first_block, layout.blocks), step, beta2, eps),
        layout, segment_rows, rows_per_block));
    contiguous_grads.push_back(grads[i].contiguous());
    const int64_t numel = params[i].numel();
    tensors.push_back({params[i].data_ptr(), contiguous_grads.back().data_ptr(), exp_avgs[i].data_ptr(),
                       denominators.back().data_ptr<float>(), numel, chunks, Divider(layout.rows),
                       Divider(numel / layout.rows), layout.block_axis,
                       multi_hyperparameters(params[i], exp_avgs[i], step, lr, beta1, weight_decays[i],
                                             rounding_seeds[i], stochastic_param)});
    chunks += (numel + kMultiChunk - 1) / kMultiChunk;
  }
  const int64_t bytes = static_cast<int64_t>(tensors.size() * sizeof(MultiTensor));
#ifdef LIT_MICROOPT_CUDA_EMULATION
  const auto host_options = at::TensorOptions().dtype(at::kByte);  // the emulated GPU's memory is the CPU's
#else
  const auto host_options = at::TensorOptions().dtype(at::kByte).pinned_memory(true);
#endif
  at::Tensor host = at::empty({bytes}, host_options);
  std::memcpy(host.data_ptr(), tensors.data(), bytes);
  const at::Tensor device_tensors = host.to(block_mean_sqs.device(), /*non_blocking=*/true);
  check_launch(launch_multi_adam_mini_update(param_code, moment_code,
                                             static_cast<const MultiTensor*>(device_tensors.data_ptr()),
                                             static_cast<int>(tensors.size()), chunks,
                                             c10::cuda::getCurrentCUDAStream()),
               op);
}

}  // namespace

LMO_REGISTER_KERNELS(CUDA, m) {
  m.impl("adam_mini_update_", &adam_mini_update_cuda);
  m.impl("multi_block_mean_squares_", &multi_block_mean_squares_cuda);
  m.impl("multi_adam_mini_update_", &multi_adam_mini_update_cuda);
}

}  // namespace adam_mini
}  // namespace lit_microopt
