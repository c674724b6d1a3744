// CUDA's built-ins on the CPU, so that the project's real .cu files compile with g++ and run their kernels on
// CPU threads. Force-included (g++ -include) before a .cu file that rewrite.py has prepared: its kernel launches
// `kernel<<<grid, block, shared, stream>>>(args)` become `cuda_emulation::launch(&kernel, grid, block, shared,
// stream)(args)`, and its `__shared__` declarations become references into the block's shared-memory arena.
//
// What a launch does (runtime.cpp):
// - blocks run one after the other; the threads of a block run as fibers (deterministic, the default) or as
//   one OS thread each (for ThreadSanitizer), with threadIdx/blockIdx/blockDim/gridDim set per thread;
// - __syncthreads is a barrier of the block's live threads (a thread that returned drops out);
// - __shfl_*_sync take the full mask only, with all 32 lanes of a whole warp present: anything else fails;
// - shared memory is poisoned with a configurable byte before every block, and at most 48 KB of it is static;
// - launch limits are those of the hardware: at most 1024 threads a block, grid sizes within range.
// A failure inside a kernel (a partial shuffle mask, threads waiting at different barriers, too much shared
// memory) makes the launch throw std::runtime_error with the reason.
#pragma once

#include "runtime_names.h"

#include <cuda_runtime.h>

#include <atomic>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

namespace cuda_emulation {

struct Block;

// What one emulated CUDA thread sees of itself.
struct ThreadContext {
  uint3 thread_index;
  uint3 block_index;
  dim3 block_dim;
  dim3 grid_dim;
  unsigned linear;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
  Block* block;
  void* fiber;      // the thread's fiber (fiber mode), else nullptr
  unsigned shuffles;  // shuffles this thread took part in: selects the exchange buffer
};

// The thread that is running now (set by the scheduler before it resumes a fiber).
ThreadContext* current_thread();

// Runs `body` once for every thread of every block of the grid. Throws std::runtime_error when a kernel
// breaks one of the emulated rules; returns cudaErrorInvalidConfiguration for a launch the hardware refuses.
cudaError_t run_grid(dim3 grid, dim3 block, size_t dynamic_shared_bytes, const std::function<void()>& body);

// Keeps a launch's error for the next cudaGetLastError (a later success does not clear it, as in CUDA).
void record_error(cudaError_t error);

// The storage of one `__shared__` variable of the current block: `site` identifies the declaration.
void* shared_storage(const void* site, size_t bytes, size_t alignment);

void sync_threads();
uint64_t exchange(unsigned mask, uint64_t value, unsigned source_lane, const char* what);
[[noreturn]] void fail(const char* message);

// Settings of the next launches: the byte that fills shared memory before every block, and whether a
// block's threads run as OS threads instead of fibers.
void configure(int poison_byte, bool os_threads);

// Launches run (or refused) so far: what the tests read to count an op's launches.
int64_t launch_count();

// The result of `cuda_emulation::launch(&kernel, grid, block, ...)`: called with the kernel's arguments,
// copies them as a launch does and runs the grid.
template <typename... Params>
struct Launch {
  void (*kernel)(Params...);
  dim3 grid, block;
  size_t shared_bytes;

  template <typename... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(Params), "a kernel launch with the wrong number of arguments");
    const std::tuple<std::decay_t<Params>...> arguments(static_cast<Params>(std::forward<Args>(args))...);
    const auto kernel_function = kernel;
    record_error(run_grid(grid, block, shared_bytes, [&] {
      std::tuple<std::decay_t<Params>...> copy = arguments;  // every thread gets its own copy, as on a GPU
      std::apply(kernel_function, copy);
    }));
  }
};

template <typename... Params, typename Grid, typename BlockShape>
Launch<Params...> launch(void (*kernel)(Params...), Grid grid, BlockShape block, size_t shared_bytes = 0,
                         cudaStream_t = nullptr) {
  return Launch<Params...>{kernel, dim3(grid), dim3(block), shared_bytes};
}

template <typename T>
T& shared_variable(const void* site) {
  return *static_cast<T*>(shared_storage(site, sizeof(T), alignof(T) < 16 ? 16 : alignof(T)));
}

template <typename T>
T shuffle(unsigned mask, T value, unsigned source_lane, const char* what) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>, "shuffle of a large type");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = exchange(mask, bits, source_lane, what);
  T result;
  std::memcpy(&result, &bits, sizeof(T));
  return result;
}

inline unsigned lane() { return current_thread()->linear & 31u; }

}  // namespace cuda_emulation

// The built-in variables.
#define threadIdx (::cuda_emulation::current_thread()->thread_index)
#define blockIdx (::cuda_emulation::current_thread()->block_index)
#define blockDim (::cuda_emulation::current_thread()->block_dim)
#define gridDim (::cuda_emulation::current_thread()->grid_dim)
#define warpSize 32

inline void __syncthreads() { ::cuda_emulation::sync_threads(); }

template <typename T>
T __shfl_sync(unsigned mask, T value, int source_lane, int width = 32) {
  if (width != 32) ::cuda_emulation::fail("__shfl_sync: only width 32 is emulated");
  return ::cuda_emulation::shuffle(mask, value, static_cast<unsigned>(source_lane) & 31u, "__shfl_sync");
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  if (width != 32) ::cuda_emulation::fail("__shfl_xor_sync: only width 32 is emulated");
  return ::cuda_emulation::shuffle(mask, value, (::cuda_emulation::lane() ^ static_cast<unsigned>(lane_mask)) & 31u,
                                   "__shfl_xor_sync");
}

// Lanes below `delta` keep their own value (their source would be below lane 0).
template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  if (width != 32) ::cuda_emulation::fail("__shfl_up_sync: only width 32 is emulated");
  const unsigned lane = ::cuda_emulation::lane();
  return ::cuda_emulation::shuffle(mask, value, lane >= delta ? lane - delta : lane, "__shfl_up_sync");
}

// Lanes whose source would be past lane 31 keep their own value.
template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  if (width != 32) ::cuda_emulation::fail("__shfl_down_sync: only width 32 is emulated");
  const unsigned lane = ::cuda_emulation::lane();
  return ::cuda_emulation::shuffle(mask, value, lane + delta < 32 ? lane + delta : lane, "__shfl_down_sync");
}

// Atomics return the old value, as CUDA's do.
template <typename T>
T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}

template <typename T>
T atomicExch(T* address, T value) {
  return std::atomic_ref<T>(*address).exchange(value);
}

template <typename T>
T atomicCAS(T* address, T expected, T desired) {
  std::atomic_ref<T>(*address).compare_exchange_strong(expected, desired);
  return expected;
}

template <typename T>
T atomicMin(T* address, T value) {
  std::atomic_ref<T> target(*address);
  T old = target.load();
  while (value < old && !target.compare_exchange_weak(old, value)) {
  }
  return old;
}

template <typename T>
T atomicMax(T* address, T value) {
  std::atomic_ref<T> target(*address);
  T old = target.load();
  while (value > old && !target.compare_exchange_weak(old, value)) {
  }
  return old;
}

template <typename T>
T atomicOr(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_or(value);
}

// CUDA's integer min and max for device code (the host headers declare none for g++).
template <typename A, typename B>
constexpr std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
template <typename A, typename B>
constexpr std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}

template <typename T>
T __ldg(const T* address) {
  return *address;
}
