// What the C++ glue of every CUDA op needs: checks that name the argument, the dtype code of a tensor,
// and the conversion of a launch's cudaError_t into a Python exception.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

namespace lit_microopt {

inline void check_cuda_tensor(const at::Tensor& tensor, const char* name, const at::Tensor& reference,
                              c10::optional<at::ScalarType> dtype = c10::nullopt) {
  TORCH_CHECK(tensor.is_cuda(), "lit_microopt: ", name, " must be a CUDA tensor for the CUDA kernel");
  TORCH_CHECK(tensor.device() == reference.device(), "lit_microopt: ", name, " is on ", tensor.device(),
              " but the parameter is on ", reference.device(), "; keep an optimizer's tensors on one device");
  TORCH_CHECK(tensor.is_contiguous(), "lit_microopt: ", name, " must be contiguous");
  if (dtype) TORCH_CHECK(tensor.scalar_type() == *dtype, "lit_microopt: ", name, " must be ", *dtype, ", got ",
                         tensor.scalar_type());
}

// 0 float32, 1 bfloat16, 2 float16 (DtypeCode of cuda_elements.cuh).
inline int dtype_code(const at::Tensor& tensor, const char* name) {
  switch (tensor.scalar_type()) {
    case at::kFloat: return 0;
    case at::kBFloat16: return 1;
    case at::kHalf: return 2;
    default: TORCH_CHECK(false, "lit_microopt: ", name, " must be float32, bfloat16 or float16, got ", tensor.scalar_type());
  }
}

inline void check_launch(cudaError_t error, const char* op) {
  TORCH_CHECK(error == cudaSuccess, "lit_microopt: CUDA kernel of ", op, " failed: ", cudaGetErrorString(error));
}

}  // namespace lit_microopt
