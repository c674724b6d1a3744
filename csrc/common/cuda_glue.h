// What the C++ glue of every CUDA op needs besides the argument checks (tensor_checks.h): the dtype code of a
// tensor, and the conversion of a launch's cudaError_t into a Python exception.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

namespace lit_microopt {

// The tests also compile the glue against an emulated GPU (tests/cuda_emulation) whose memory is the CPU's:
// there the ops register as lit_microopt_emulated::* for CPU tensors (kernel_registration.h), with the same
// checks and launches.
#ifdef LIT_MICROOPT_CUDA_EMULATION
constexpr c10::DeviceType kCudaKernelDevice = c10::DeviceType::CPU;
#else
constexpr c10::DeviceType kCudaKernelDevice = c10::DeviceType::CUDA;
#endif

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
