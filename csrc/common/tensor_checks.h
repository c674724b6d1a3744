// The checks every op makes of its tensor arguments, each naming the argument that is wrong: on the kernel's
// device type and on the parameter's device, contiguous, of the expected dtype. Shared by the CPU kernels,
// the CUDA glue and the tests' emulated CUDA ops, so that every implementation refuses the same inputs.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace lit_microopt {

// `tensor` (the op's first argument, usually the parameter) is on a device of type `device_type`.
inline void check_kernel_device(const at::Tensor& tensor, const char* name, c10::DeviceType device_type) {
  TORCH_CHECK(tensor.device().type() == device_type, "lit_microopt: ", name, " must be a ",
              c10::DeviceTypeName(device_type), " tensor for the ", c10::DeviceTypeName(device_type),
              " kernel, got one on ", tensor.device());
}

// `tensor` sits on `reference`'s device, is contiguous and, when given, of dtype `dtype`.
inline void check_operand(const at::Tensor& tensor, const char* name, const at::Tensor& reference,
                          std::optional<at::ScalarType> dtype = std::nullopt) {
  TORCH_CHECK(tensor.device() == reference.device(), "lit_microopt: ", name, " is on ", tensor.device(),
              " but the parameter is on ", reference.device(), "; keep an optimizer's tensors on one device");
  TORCH_CHECK(tensor.is_contiguous(), "lit_microopt: ", name, " must be contiguous");
  if (dtype) {
    TORCH_CHECK(tensor.scalar_type() == *dtype, "lit_microopt: ", name, " must be ", *dtype, ", got ",
                tensor.scalar_type());
  }
}

}  // namespace lit_microopt
