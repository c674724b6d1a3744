// Stands in for PyTorch's header when the CUDA glue is compiled against the emulated GPU: one device.
#pragma once

#include <c10/core/Device.h>

namespace c10::cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};

}  // namespace c10::cuda
