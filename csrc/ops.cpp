// The extension's module: lit_microopt._C.register_kernels() registers every compiled kernel for the ops that
// lit_microopt/ops/library.py defines (their one home), all or nothing; see common/kernel_registration.h.
#include <Python.h>
#include <torch/library.h>

#include <memory>
#include <vector>

#include "common/kernel_registration.h"

#ifndef LIT_MICROOPT_CUDA_ARCHS
#define LIT_MICROOPT_CUDA_ARCHS ""
#endif

namespace lit_microopt {
namespace {

struct PendingRegistration {
  c10::DispatchKey key;
  KernelRegistrar registrar;
  const char* file;
  uint32_t line;
};

std::vector<PendingRegistration>& pending_registrations() {
  static std::vector<PendingRegistration> registrations;  // filled by static initializers, in any order
  return registrations;
}

std::string cuda_architectures() { return LIT_MICROOPT_CUDA_ARCHS; }

}  // namespace

KernelRegistration::KernelRegistration(c10::DispatchKey key, KernelRegistrar registrar, const char* file,
                                       uint32_t line) {
  pending_registrations().push_back({key, registrar, file, line});
}

}  // namespace lit_microopt

// The CUDA architectures compiled in ("" without CUDA kernels), for the kernels report. Not one of the optimizers'
// ops: defined here, where the value is known.
TORCH_LIBRARY_FRAGMENT(lit_microopt, m) { m.def("cuda_architectures() -> str", &lit_microopt::cuda_architectures); }

namespace {

PyObject* register_kernels(PyObject*, PyObject*) {
  // The libraries live as long as the process: destroying one would unregister its kernels.
  static std::vector<std::unique_ptr<torch::Library>> registered;
  if (!registered.empty()) Py_RETURN_NONE;
  std::vector<std::unique_ptr<torch::Library>> libraries;
  try {
    for (const auto& pending : lit_microopt::pending_registrations()) {
      libraries.push_back(std::make_unique<torch::Library>(torch::Library::IMPL, "lit_microopt", pending.key,
                                                           pending.file, pending.line));
      pending.registrar(*libraries.back());
    }
  } catch (const std::exception& error) {
    libraries.clear();  // unregisters what was registered before the failure
    PyErr_Format(PyExc_RuntimeError,
                 "lit_microopt's compiled kernels do not match the ops' schemas (an extension built from another "
                 "version?): %s",
                 error.what());
    return nullptr;
  }
  registered = std::move(libraries);
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"register_kernels", register_kernels, METH_NOARGS,
     "Register the compiled kernels for the ops defined by lit_microopt.ops.library (once; all or nothing)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_definition = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_definition); }
