// The self-test kernels (self_test_kernels.cu) and the emulation's settings as ops of lit_microopt_emulated.
#include <torch/library.h>

#include <string>

#include <cuda_runtime_api.h>

cudaError_t run_self_test(const char* name, void* out, int64_t numel, int blocks, int threads);

namespace cuda_emulation {
void configure(int poison_byte, bool os_threads);
int64_t launch_count();
}  // namespace cuda_emulation

namespace {

int64_t self_test(const std::string& kernel, at::Tensor out, int64_t blocks, int64_t threads) {
  TORCH_CHECK(out.is_contiguous(), "self_test: out must be contiguous");
  return static_cast<int64_t>(
      run_self_test(kernel.c_str(), out.data_ptr(), out.numel(), static_cast<int>(blocks), static_cast<int>(threads)));
}

void configure(int64_t poison_byte, bool os_threads) {
  cuda_emulation::configure(static_cast<int>(poison_byte), os_threads);
}

int64_t launches() { return cuda_emulation::launch_count(); }

}  // namespace

TORCH_LIBRARY_IMPL(lit_microopt_emulated, CPU, m) { m.impl("self_test", &self_test); }
TORCH_LIBRARY_IMPL(lit_microopt_emulated, CompositeExplicitAutograd, m) {
  m.impl("configure", &configure);
  m.impl("launches", &launches);
}
