// Kernels that exercise the emulated GPU itself (tests/cuda_emulation/test_emulation.py): what it promises about
// built-in variables, barriers, shuffles, atomics, shared memory and launch limits, each checked on its own.
#include <cstdint>
#include <cstring>

#include "cuda_elements.cuh"

namespace {

// Every thread writes blockIdx.x * 1000 + threadIdx.x at its global index.
__global__ void indices_kernel(int32_t* out) {
  out[blockIdx.x * blockDim.x + threadIdx.x] = static_cast<int32_t>(blockIdx.x * 1000 + threadIdx.x);
}

// Thread 0 of every block reads a shared variable that no thread wrote: the poison byte, repeated.
__global__ void poison_kernel(int32_t* out) {
  __shared__ int32_t never_written;
  if (threadIdx.x == 0) out[blockIdx.x] = never_written;
}

// Odd threads return at once; the even ones meet at __syncthreads and read each other's values.
__global__ void early_exit_kernel(int32_t* out) {
  __shared__ int32_t values[1024];
  if (threadIdx.x % 2 == 1) return;
  values[threadIdx.x] = static_cast<int32_t>(threadIdx.x) * 10;
  __syncthreads();
  out[threadIdx.x] = values[(threadIdx.x + 2) % blockDim.x];
}

// A warp-wide sum by butterfly shuffles: every lane ends with the warp's sum of lane numbers.
__global__ void shuffle_sum_kernel(int32_t* out) {
  int value = static_cast<int>(threadIdx.x);
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  out[threadIdx.x] = value;
}

// The block's exclusive prefix sum of ones, and its total, through the kernels' own helper.
__global__ void prefix_sum_kernel(int32_t* out) {
  __shared__ int scratch[33];
  int total;
  out[threadIdx.x] = lit_microopt::block_exclusive_sum(1, &total, scratch);
  if (threadIdx.x == 0) out[blockDim.x] = total;
}

__global__ void partial_mask_kernel(int32_t* out) {
  out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 1);
}

// Half of warp 0 shuffles while everyone else waits at __syncthreads: a barrier nobody can pass.
__global__ void divergent_barrier_kernel(int32_t* out) {
  if (threadIdx.x < 16) {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
  } else {
    __syncthreads();
  }
}

__global__ void atomic_count_kernel(int32_t* out) { atomicAdd(out, 1); }

__global__ void too_much_shared_kernel(int32_t* out) {
  __shared__ char big[49153];
  big[threadIdx.x] = 1;
  out[threadIdx.x] = big[0];
}

// out[0] is the divisor, out[1:] the dividends, replaced by their quotients (lit_microopt::Divider).
__global__ void divider_kernel(int64_t* out, int64_t count, lit_microopt::Divider divider) {
  for (int64_t i = 1 + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = divider.divide(out[i]);
  }
}

}  // namespace

// Runs the self-test kernel `name` on `out` (numel elements) with the given launch shape; the launch's error.
cudaError_t run_self_test(const char* name, void* out, int64_t numel, int blocks, int threads) {
  auto* ints = static_cast<int32_t*>(out);
  const auto is = [&](const char* candidate) { return std::strcmp(name, candidate) == 0; };
  if (is("indices")) indices_kernel<<<blocks, threads>>>(ints);
  else if (is("poison")) poison_kernel<<<blocks, threads>>>(ints);
  else if (is("early_exit")) early_exit_kernel<<<blocks, threads>>>(ints);
  else if (is("shuffle_sum")) shuffle_sum_kernel<<<blocks, threads>>>(ints);
  else if (is("prefix_sum")) prefix_sum_kernel<<<blocks, threads>>>(ints);
  else if (is("partial_mask")) partial_mask_kernel<<<blocks, threads>>>(ints);
  else if (is("divergent_barrier")) divergent_barrier_kernel<<<blocks, threads>>>(ints);
  else if (is("atomic_count")) atomic_count_kernel<<<blocks, threads>>>(ints);
  else if (is("too_much_shared")) too_much_shared_kernel<<<blocks, threads>>>(ints);
  else if (is("divider")) {
    auto* values = static_cast<int64_t*>(out);
    divider_kernel<<<blocks, threads>>>(values, numel, lit_microopt::Divider(values[0]));
  } else return cudaErrorInvalidValue;
  return cudaGetLastError();
}
