// The op max_magnitudes_ on the CPU: the largest magnitude of every tensor of a list, in one parallel loop over
// (tensor, chunk) pairs. Magnitudes are compared as the bits of |x| (sign cleared): for floats of one sign the bits
// are ordered like the values, and a NaN's bits are above infinity's, so the maximum is exact and a NaN anywhere
// makes the result a NaN, in an integer loop that vectorises.
#include <ATen/core/Tensor.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu_tensor_tasks.h"
#include "kernel_registration.h"
#include "numerics.h"
#include "tensor_checks.h"

namespace lit_microopt {
namespace {

constexpr int64_t kChunkElements = 1 << 16;

template <typename bits_t>
LMO_CPU_CLONES bits_t largest_magnitude_bits(const bits_t* values, int64_t count, bits_t sign_bit) {
  const bits_t magnitude_mask = static_cast<bits_t>(~sign_bit);
  bits_t largest = 0;
  for (int64_t i = 0; i < count; ++i) {
    const bits_t magnitude = values[i] & magnitude_mask;
    largest = magnitude > largest ? magnitude : largest;
  }
  return largest;
}

// The magnitude bits of elements [begin, end) of `tensor`, widened to those of a float32 value.
uint32_t chunk_magnitude(const at::Tensor& tensor, int64_t begin, int64_t end) {
  switch (tensor.scalar_type()) {
    case at::kFloat:
      return largest_magnitude_bits(static_cast<const uint32_t*>(tensor.data_ptr()) + begin, end - begin,
                                    uint32_t{0x80000000u});
    case at::kBFloat16:
      return static_cast<uint32_t>(largest_magnitude_bits(static_cast<const uint16_t*>(tensor.data_ptr()) + begin,
                                                          end - begin, uint16_t{0x8000u}))
             << 16;
    default: {  // float16: its bits are ordered like its magnitudes too, and the conversion keeps NaN a NaN
      const uint16_t bits = largest_magnitude_bits(static_cast<const uint16_t*>(tensor.data_ptr()) + begin, end - begin,
                                                   uint16_t{0x8000u});
      return float_bits(static_cast<float>(c10::Half(bits, c10::Half::from_bits())));
    }
  }
}

void max_magnitudes_cpu(at::Tensor out, at::TensorList tensors) {
  check_kernel_device(out, "out", at::kCPU);
  check_operand(out, "out", out, at::kFloat);
  TORCH_CHECK_VALUE(out.numel() == static_cast<int64_t>(tensors.size()), "lit_microopt: out must hold one entry per "
                    "tensor (", tensors.size(), "), got ", out.numel());
  std::vector<int64_t> chunks(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    check_operand(tensors[i], "tensors", out);
    const at::ScalarType dtype = tensors[i].scalar_type();
    TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, "lit_microopt: tensors[",
                      i, "] must be float32, bfloat16 or float16, got ", dtype);
    chunks[i] = (tensors[i].numel() + kChunkElements - 1) / kChunkElements;
  }
  // Each tensor's chunks in a row of their own: an empty tensor has none, and its magnitude stays 0.
  std::vector<std::vector<uint32_t>> chunk_bits(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) chunk_bits[i].assign(chunks[i], 0u);
  parallel_for_tensor_units(chunks, [&](size_t i, int64_t chunk) {
    const int64_t start = chunk * kChunkElements;
    chunk_bits[i][chunk] = chunk_magnitude(tensors[i], start, std::min(start + kChunkElements, tensors[i].numel()));
  });
  float* result = out.data_ptr<float>();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::vector<uint32_t>& bits = chunk_bits[i];
    result[i] = bits_float(bits.empty() ? 0u : *std::max_element(bits.begin(), bits.end()));
  }
}

}  // namespace

LMO_REGISTER_KERNELS(CPU, m) { m.impl("max_magnitudes_", &max_magnitudes_cpu); }

}  // namespace lit_microopt
