// The PyTorch side of Adam-mini's CUDA op: checks, the tensor's device and current stream, the launcher.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/cuda_glue.h"
#include "adam_mini_checks.h"
#include "adam_mini_cuda.h"
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

}  // namespace

LMO_REGISTER_KERNELS(CUDA, m) { m.impl("adam_mini_update_", &adam_mini_update_cuda); }

}  // namespace adam_mini
}  // namespace lit_microopt
