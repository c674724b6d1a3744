// How the compiled kernels register: when Python asks, not while the library loads.
//
// The ops' schemas are defined in Python (lit_microopt/ops/library.py), before the extension is loaded. A kernel
// registered from a static initializer whose signature does not match its schema (an extension built from an older
// checkout) would abort the process while it loads; registered from lit_microopt._C.register_kernels(), the
// mismatch is a Python RuntimeError, nothing is registered, and the reference serves instead.
#pragma once

#include <torch/library.h>

#ifdef LIT_MICROOPT_CUDA_EMULATION
// The tests' emulated GPU (tests/cuda_emulation) builds the CUDA glue as lit_microopt_emulated::* kernels for CPU
// tensors, whose schemas the tests copy from lit_microopt::* before loading it: a static registration is safe there.
#define LMO_REGISTER_KERNELS(KEY, library) TORCH_LIBRARY_IMPL(lit_microopt_emulated, CPU, library)
#else
namespace lit_microopt {

using KernelRegistrar = void (*)(torch::Library&);

// Adds a registrar for `key`'s kernels to the list that register_kernels() runs (defined in ops.cpp).
struct KernelRegistration {
  KernelRegistration(c10::DispatchKey key, KernelRegistrar registrar, const char* file, uint32_t line);
};

}  // namespace lit_microopt

// LMO_REGISTER_KERNELS(CPU, m) { m.impl("op", &kernel); }: like TORCH_LIBRARY_IMPL(lit_microopt, CPU, m), run
// by register_kernels(). One per dispatch key per source file.
#define LMO_REGISTER_KERNELS(KEY, library)                                                                   \
  static void lmo_register_##KEY##_kernels(torch::Library&);                                                 \
  static const ::lit_microopt::KernelRegistration lmo_##KEY##_registration(                                  \
      c10::DispatchKey::KEY, &lmo_register_##KEY##_kernels, __FILE__, __LINE__);                             \
  static void lmo_register_##KEY##_kernels(torch::Library& library)
#endif
