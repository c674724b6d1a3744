// The op max_magnitudes_ on CUDA: PyTorch's multi-tensor infinity norm, one per dtype of the list, written into `out`
// (a NaN anywhere in a tensor makes its norm a NaN, as on the CPU).
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>
#include <torch/library.h>

#include <limits>
#include <map>
#include <vector>

#include "cuda_glue.h"
#include "kernel_registration.h"
#include "tensor_checks.h"

namespace lit_microopt {
namespace {

void max_magnitudes_cuda(at::Tensor out, at::TensorList tensors) {
  check_kernel_device(out, "out", kCudaKernelDevice);
  check_operand(out, "out", out, at::kFloat);
  TORCH_CHECK_VALUE(out.numel() == static_cast<int64_t>(tensors.size()), "lit_microopt: out must hold one entry per "
                    "tensor (", tensors.size(), "), got ", out.numel());
  std::map<at::ScalarType, std::pair<std::vector<int64_t>, std::vector<at::Tensor>>> by_dtype;  // non-empty tensors
  for (size_t i = 0; i < tensors.size(); ++i) {
    check_operand(tensors[i], "tensors", out);
    const at::ScalarType dtype = tensors[i].scalar_type();
    TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, "lit_microopt: tensors[",
                      i, "] must be float32, bfloat16 or float16, got ", dtype);
    if (tensors[i].numel() > 0) {
      by_dtype[dtype].first.push_back(static_cast<int64_t>(i));
      by_dtype[dtype].second.push_back(tensors[i]);
    }
  }
  out.zero_();
  for (const auto& [dtype, entries] : by_dtype) {
    const auto norms = at::_foreach_norm(entries.second, std::numeric_limits<double>::infinity());
    const at::Tensor positions = at::tensor(entries.first).to(out.device());
    out.index_copy_(0, positions, at::stack(norms).to(at::kFloat));
  }
}

}  // namespace

LMO_REGISTER_KERNELS(CUDA, m) { m.impl("max_magnitudes_", &max_magnitudes_cuda); }

}  // namespace lit_microopt
