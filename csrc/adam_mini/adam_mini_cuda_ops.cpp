// The PyTorch side of Adam-mini's CUDA op: checks, the tensor's device and current stream, the launcher.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/cuda_glue.h"
#include "adam_mini_cuda.h"

namespace lit_microopt {
namespace adam_mini {
namespace {

void adam_mini_update_cuda(at::Tensor param, const at::Tensor& grad, at::Tensor exp_avg,
                           const at::Tensor& row_denominator, int64_t block_axis, double step_size, double beta1,
                           double lr, double weight_decay, bool stochastic, int64_t key) {
  check_cuda_tensor(param, "param", param);
  check_cuda_tensor(grad, "grad", param, param.scalar_type());
  check_cuda_tensor(exp_avg, "exp_avg", param);
  check_cuda_tensor(row_denominator, "row_denominator", param, at::kFloat);
  TORCH_CHECK(grad.numel() == param.numel() && exp_avg.numel() == param.numel(),
              "lit_microopt: grad and exp_avg must have the parameter's number of elements");
  TORCH_CHECK(block_axis == 0 || block_axis == 1, "lit_microopt: block_axis must be 0 or 1");
  TORCH_CHECK(row_denominator.numel() > 0 && param.numel() % row_denominator.numel() == 0,
              "lit_microopt: the parameter's elements must split evenly into row_denominator's rows");
  const c10::cuda::CUDAGuard guard(param.device());
  const Hyperparameters h = make_hyperparameters(step_size, beta1, lr, weight_decay, stochastic, key);
  check_launch(launch_adam_mini_update(dtype_code(param, "param"), dtype_code(exp_avg, "exp_avg"), param.data_ptr(),
                                       grad.data_ptr(), exp_avg.data_ptr(), row_denominator.data_ptr<float>(),
                                       param.numel(), row_denominator.numel(), static_cast<int>(block_axis), h,
                                       c10::cuda::getCurrentCUDAStream()),
               "adam_mini_update_");
}

}  // namespace

TORCH_LIBRARY_IMPL(lit_microopt, CUDA, m) { m.impl("adam_mini_update_", &adam_mini_update_cuda); }

}  // namespace adam_mini
}  // namespace lit_microopt
