// Runs every CUDA kernel of the package once on the emulated GPU in thread mode (one OS thread per CUDA
// thread), for ThreadSanitizer: a data race between the threads of a block (a missing __syncthreads, a plain
// write where an atomic is needed) is reported. Built and run by scripts/emulated_kernels_tsan.sh.
#include <cstdio>
#include <random>
#include <vector>

#include "adam_mini_cuda.h"
#include "microadam_cuda.h"

namespace cuda_emulation {
void configure(int poison_byte, bool os_threads);
}

using namespace lit_microopt;

namespace {

int failures = 0;

void expect(cudaError_t error, const char* what) {
  if (error != cudaSuccess) {
    std::fprintf(stderr, "%s: error %d\n", what, static_cast<int>(error));
    ++failures;
  }
}

uint16_t bfloat16_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return static_cast<uint16_t>(bits >> 16);
}

}  // namespace

int main() {
  cuda_emulation::configure(0xff, /*os_threads=*/true);
  const int64_t numel = 3000, block_size = 512, k_block = 52, bucket_size = 64, rows = 3;
  const int64_t full_blocks = numel / block_size, k_last = 36;  // a last block of 440 elements
  const int64_t columns = full_blocks * k_block + k_last, buckets = (numel + bucket_size - 1) / bucket_size;
  std::mt19937 generator(0);
  std::normal_distribution<float> normal;
  std::vector<float> values(numel), param(numel);
  for (float& value : values) value = normal(generator);
  for (float& value : param) value = normal(generator);
  std::vector<uint8_t> codes((numel + 1) / 2, 0x37);
  std::vector<uint16_t> lows(buckets, bfloat16_bits(-1.0f)), highs(buckets, bfloat16_bits(1.0f));
  std::vector<int16_t> indices(rows * columns);
  std::vector<uint16_t> window(rows * columns);
  std::vector<float> weights1{0.81f, 0.9f, 1.0f}, weights2{0.998f, 0.999f, 1.0f};

  expect(microadam::launch_ef_dequant_add(0, values.data(), codes.data(), lows.data(), highs.data(), numel,
                                          bucket_size, nullptr), "ef_dequant_add_");
  for (int64_t row = 0; row < rows; ++row) {
    for (float& value : values) value += normal(generator);
    expect(microadam::launch_block_topk(0, values.data(), indices.data() + row * columns, window.data() + row * columns,
                                        numel, block_size, k_block, k_last, nullptr), "block_topk");
  }
  expect(microadam::launch_ef_quantize(0, values.data(), indices.data(), columns, codes.data(), lows.data(),
                                       highs.data(), numel, bucket_size, block_size, k_block, true, 1234u, 0, nullptr),
         "ef_quantize_");
  expect(microadam::launch_window_adam_update(0, param.data(), indices.data(), window.data(), weights1.data(),
                                              weights2.data(), rows, columns, numel, block_size, k_block, 0.1f, 0.001f,
                                              1e-8f, 1e-3f, true, 0.999f, false, 0u, 0u, nullptr),
         "window_adam_update_");
  std::vector<float> grad(numel), moment(numel, 0.0f), denominators(60, 1.5f);
  for (float& value : grad) value = normal(generator);
  const adam_mini::Hyperparameters h = adam_mini::make_hyperparameters(1e-3, 0.9, 1e-3, 0.1, false, 0, false, 0, 0);
  expect(adam_mini::launch_adam_mini_update(0, 0, param.data(), grad.data(), moment.data(), denominators.data(), numel,
                                            60, 0, h, nullptr), "adam_mini_update_");
  std::printf("%s\n", failures ? "emulated kernels: FAILED" : "emulated kernels: ran under ThreadSanitizer");
  return failures ? 1 : 0;
}
