// The schema of every op, declared once. CPU and CUDA implementations register against these names in
// their own files; fake (meta) implementations are registered from Python (lit_microopt/ops/dispatch.py).
#include <Python.h>
#include <torch/library.h>

#ifndef LIT_MICROOPT_CUDA_ARCHS
#define LIT_MICROOPT_CUDA_ARCHS ""
#endif

namespace {
std::string cuda_architectures() { return LIT_MICROOPT_CUDA_ARCHS; }
}  // namespace

TORCH_LIBRARY(lit_microopt, m) {
  m.def("ef_dequant_add_(Tensor(a!) accumulator, Tensor error_feedback, Tensor bucket_min, Tensor bucket_max, "
        "int bucket_size) -> ()");
  m.def("block_topk(Tensor accumulator, Tensor(a!) indices_row, Tensor(b!) values_row, int block_size, "
        "int k_block, int k_last) -> ()");
  m.def("ef_quantize_(Tensor(a!) accumulator, Tensor indices_row, Tensor(b!) error_feedback, "
        "Tensor(c!) bucket_min, Tensor(d!) bucket_max, int bucket_size, int block_size, int k_block, "
        "bool stochastic, int key) -> ()");
  // Steps 2 to 5 fused: what the three ops above do, in one pass when Top-K blocks are whole buckets.
  m.def("ef_compress_(Tensor(a!) accumulator, Tensor(b!) indices_row, Tensor(c!) values_row, "
        "Tensor(d!) error_feedback, Tensor(e!) bucket_min, Tensor(f!) bucket_max, int bucket_size, int block_size, "
        "int k_block, int k_last, bool stochastic, int key) -> ()");
  // stochastic_param: param_rounding="stochastic", a 16-bit parameter rounded stochastically after the weight decay
  // (stream decay_key) and after the update (stream param_key); float32 parameters ignore it.
  m.def("window_adam_update_(Tensor(a!) param, Tensor window_indices, Tensor window_values, "
        "Tensor row_weights1, Tensor row_weights2, int block_size, int k_block, float c1, float c2, "
        "float eps, float lr, float weight_decay, bool stochastic_param=False, int param_key=0, "
        "int decay_key=0) -> ()");
  m.def("adam_mini_update_(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor row_denominator, "
        "int block_axis, float step_size, float beta1, float lr, float weight_decay, bool stochastic, "
        "int key, bool stochastic_param=False, int param_key=0, int decay_key=0) -> ()");
  // The CUDA architectures compiled in ("" without CUDA kernels), for the kernels report.
  m.def("cuda_architectures() -> str", &cuda_architectures);
}

// A Python module with no functions: importing it loads this library, which registers the ops.
static struct PyModuleDef module_definition = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_definition); }
