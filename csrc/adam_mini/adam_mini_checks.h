// The argument checks of Adam-mini's op, shared by the CPU kernel, the CUDA glue and the tests' emulated CUDA op.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "../common/tensor_checks.h"

namespace lit_microopt {
namespace adam_mini {

inline void check_arguments(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                            const at::Tensor& row_denominator, int64_t block_axis) {
  check_operand(param, "param", param);
  check_operand(grad, "grad", param, param.scalar_type());
  check_operand(exp_avg, "exp_avg", param);
  check_operand(row_denominator, "row_denominator", param, at::kFloat);
  TORCH_CHECK_VALUE(grad.numel() == param.numel() && exp_avg.numel() == param.numel(),
                    "lit_microopt: grad and exp_avg must have the parameter's number of elements");
  TORCH_CHECK_VALUE(block_axis == 0 || block_axis == 1, "lit_microopt: block_axis must be 0 or 1, got ", block_axis);
  TORCH_CHECK_VALUE(row_denominator.numel() > 0 && param.numel() % row_denominator.numel() == 0,
                    "lit_microopt: the parameter's elements must split evenly into row_denominator's rows");
}

}  // namespace adam_mini
}  // namespace lit_microopt
