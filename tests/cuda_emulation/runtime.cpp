// The emulated GPU of cuda_emulation.h: launches, blocks, barriers, warp shuffles and shared memory.
//
// Fiber mode (the default): a block's threads are fibers on the calling OS thread, resumed in thread order by
// a small scheduler until each one reaches a barrier, a shuffle or its end. Runs are deterministic, and a
// block of 256 threads costs a few microseconds a barrier. Thread mode: one OS thread per CUDA thread, with
// real barriers, for ThreadSanitizer (scripts/emulated_kernels_tsan.sh).
#include <barrier>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cuda_emulation.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace cuda_emulation {
namespace {

constexpr size_t kStaticSharedLimit = 48 * 1024;  // static __shared__ bytes a block may declare
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr size_t kFiberStackBytes = 128 * 1024;

int poison = 0xff;
bool use_os_threads = false;
cudaError_t pending = cudaSuccess;
int64_t launches = 0;  // launches run or refused, for the tests that count an op's launches
thread_local ThreadContext* running = nullptr;

// Where a fiber waits.
enum class Wait { none, block_barrier, warp_barrier, exited };

// A warp's shuffle exchange: two buffers of 32 values, used alternately, so that a lane may write the next
// shuffle's value before every lane has read this one's. Thread mode adds a barrier of the warp's lanes.
struct Warp {
  uint64_t slots[2][32];
  std::mutex mutex;
  std::condition_variable released;
  unsigned arrived = 0, exited = 0, generation = 0;
};

}  // namespace

struct Block {
  dim3 grid_dim, block_dim;
  unsigned threads = 0;
  alignas(64) unsigned char shared[kStaticSharedLimit];
  size_t shared_used = 0;
  std::vector<std::pair<const void*, size_t>> shared_sites;  // declaration site, offset in `shared`
  std::mutex shared_mutex;
  std::vector<std::unique_ptr<Warp>> warps;
  std::string error;  // the first failure of this block; empty while all is well
  std::mutex error_mutex;
  std::unique_ptr<std::barrier<>> barrier;  // thread mode
};

namespace {

void reset_block(Block& block, dim3 grid, dim3 shape) {
  block.grid_dim = grid;
  block.block_dim = shape;
  block.threads = shape.x * shape.y * shape.z;
  std::memset(block.shared, poison, sizeof(block.shared));
  block.shared_used = 0;
  block.shared_sites.clear();
  block.error.clear();
  const unsigned warps = (block.threads + 31) / 32;
  block.warps.clear();
  for (unsigned w = 0; w < warps; ++w) block.warps.push_back(std::make_unique<Warp>());
}

ThreadContext thread_context(Block& block, uint3 block_index, unsigned linear) {
  const dim3 shape = block.block_dim;
  ThreadContext context{};
  context.thread_index = {linear % shape.x, linear / shape.x % shape.y, linear / (shape.x * shape.y)};
  context.block_index = block_index;
  context.block_dim = shape;
  context.grid_dim = block.grid_dim;
  context.linear = linear;
  context.block = &block;
  return context;
}

// ---- fibers -------------------------------------------------------------------------------------------

struct Fiber {
  ThreadContext context;
  Wait wait = Wait::none;
  const std::function<void()>* body = nullptr;
#if defined(__x86_64__)
  void* stack_pointer = nullptr;
#else
  ucontext_t state;
#endif
  char* stack = nullptr;
};

struct Scheduler {
#if defined(__x86_64__)
  void* stack_pointer = nullptr;
#else
  ucontext_t state;
#endif
  std::vector<Fiber> fibers;
  std::vector<std::unique_ptr<char[]>> stacks;
};

thread_local Scheduler scheduler;

}  // namespace
}  // namespace cuda_emulation

extern "C" void cuda_emulation_fiber_main(cuda_emulation::Fiber* fiber);

#if defined(__x86_64__)
// switch_stack(save, load): pushes the callee-saved registers and the floating-point control words on the
// current stack, stores the stack pointer in *save, then loads `load` and pops the same from it. A new fiber's
// stack is laid out so that the pops end in the trampoline, which calls cuda_emulation_fiber_main(rbx).
extern "C" void cuda_emulation_switch_stack(void** save, void* load);
extern "C" void cuda_emulation_fiber_trampoline();
asm(R"(
  .text
  .p2align 4
  .globl cuda_emulation_switch_stack
  .hidden cuda_emulation_switch_stack
  .type cuda_emulation_switch_stack, @function
cuda_emulation_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw (%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr 8(%rsp)
  fldcw (%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_emulation_switch_stack, .-cuda_emulation_switch_stack

  .p2align 4
  .globl cuda_emulation_fiber_trampoline
  .hidden cuda_emulation_fiber_trampoline
  .type cuda_emulation_fiber_trampoline, @function
cuda_emulation_fiber_trampoline:
  movq %rbx, %rdi
  pushq $0
  call cuda_emulation_fiber_main
  ud2
  .size cuda_emulation_fiber_trampoline, .-cuda_emulation_fiber_trampoline
)");
#endif

namespace cuda_emulation {
namespace {

void start_fiber(Fiber& fiber, char* stack) {
  fiber.stack = stack;
#if defined(__x86_64__)
  // 16-byte aligned top; the frame below it is what cuda_emulation_switch_stack pops (see its comment).
  auto top = reinterpret_cast<uintptr_t>(stack + kFiberStackBytes) & ~uintptr_t{15};
  auto* frame = reinterpret_cast<uint64_t*>(top - 80);
  uint32_t mxcsr;
  uint16_t control_word;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(control_word));
  std::memset(frame, 0, 80);
  std::memcpy(reinterpret_cast<char*>(frame), &control_word, sizeof(control_word));
  std::memcpy(reinterpret_cast<char*>(frame) + 8, &mxcsr, sizeof(mxcsr));
  frame[6] = reinterpret_cast<uint64_t>(&fiber);  // rbx
  frame[8] = reinterpret_cast<uint64_t>(&cuda_emulation_fiber_trampoline);
  fiber.stack_pointer = frame;
#else
  getcontext(&fiber.state);
  fiber.state.uc_stack.ss_sp = stack;
  fiber.state.uc_stack.ss_size = kFiberStackBytes;
  fiber.state.uc_link = nullptr;
  makecontext(&fiber.state, reinterpret_cast<void (*)()>(&cuda_emulation_fiber_main), 1, &fiber);
#endif
}

void resume(Fiber& fiber) {
  running = &fiber.context;
#if defined(__x86_64__)
  cuda_emulation_switch_stack(&scheduler.stack_pointer, fiber.stack_pointer);
#else
  swapcontext(&scheduler.state, &fiber.state);
#endif
  running = nullptr;
}

// Called on a fiber: back to the scheduler, until it resumes this fiber.
void suspend(Fiber& fiber) {
#if defined(__x86_64__)
  cuda_emulation_switch_stack(&fiber.stack_pointer, scheduler.stack_pointer);
#else
  swapcontext(&fiber.state, &scheduler.state);
#endif
}

Fiber& current_fiber() { return *static_cast<Fiber*>(running->fiber); }

std::string describe_stall(const Block& block, const std::vector<Fiber>& fibers) {
  unsigned at_block = 0, at_warp = 0, exited = 0;
  for (const Fiber& fiber : fibers) {
    at_block += fiber.wait == Wait::block_barrier;
    at_warp += fiber.wait == Wait::warp_barrier;
    exited += fiber.wait == Wait::exited;
  }
  return "threads wait at different barriers (" + std::to_string(at_block) + " at __syncthreads, " +
         std::to_string(at_warp) + " in a warp shuffle whose warp is not all there, " + std::to_string(exited) +
         " returned, of " + std::to_string(block.threads) + ")";
}

// Runs one block's fibers until all have returned; returns the block's failure, if any.
void run_block_as_fibers(Block& block, uint3 block_index, const std::function<void()>& body) {
  std::vector<Fiber>& fibers = scheduler.fibers;
  fibers.resize(block.threads);
  while (scheduler.stacks.size() < block.threads) scheduler.stacks.emplace_back(new char[kFiberStackBytes]);
  for (unsigned t = 0; t < block.threads; ++t) {
    Fiber& fiber = fibers[t];
    fiber.context = thread_context(block, block_index, t);
    fiber.context.fiber = &fiber;
    fiber.wait = Wait::none;
    fiber.body = &body;
    start_fiber(fiber, scheduler.stacks[t].get());
  }
  for (;;) {
    for (Fiber& fiber : fibers) {
      if (fiber.wait != Wait::none) continue;
      resume(fiber);
      if (!block.error.empty()) return;  // the other fibers are abandoned where they stand
    }
    unsigned live = 0, at_block = 0;
    for (const Fiber& fiber : fibers) {
      live += fiber.wait != Wait::exited;
      at_block += fiber.wait == Wait::block_barrier;
    }
    if (live == 0) return;
    if (at_block == live) {  // every live thread reached __syncthreads
      for (Fiber& fiber : fibers)
        if (fiber.wait == Wait::block_barrier) fiber.wait = Wait::none;
      continue;
    }
    bool released = false;
    for (unsigned first = 0; first < block.threads; first += 32) {
      bool whole = first + 32 <= block.threads;
      for (unsigned t = first; whole && t < first + 32; ++t) whole = fibers[t].wait == Wait::warp_barrier;
      if (!whole) continue;
      for (unsigned t = first; t < first + 32; ++t) fibers[t].wait = Wait::none;
      released = true;
    }
    if (!released) {
      block.error = describe_stall(block, fibers);
      return;
    }
  }
}

// ---- OS threads ---------------------------------------------------------------------------------------

[[noreturn]] void abort_with(const std::string& message) {
  std::fprintf(stderr, "cuda emulation: %s\n", message.c_str());
  std::abort();
}

void run_block_as_threads(Block& block, uint3 block_index, const std::function<void()>& body) {
  block.barrier = std::make_unique<std::barrier<>>(block.threads);
  std::vector<ThreadContext> contexts;
  for (unsigned t = 0; t < block.threads; ++t) contexts.push_back(thread_context(block, block_index, t));
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < block.threads; ++t) {
    threads.emplace_back([&block, &body, context = &contexts[t]] {
      running = context;
      body();
      Warp& warp = *block.warps[context->linear / 32];
      {
        const std::lock_guard<std::mutex> lock(warp.mutex);
        ++warp.exited;
      }
      warp.released.notify_all();
      block.barrier->arrive_and_drop();
    });
  }
  for (std::thread& thread : threads) thread.join();
  block.barrier.reset();
}

void warp_barrier_of_threads(Warp& warp, const char* what) {
  std::unique_lock<std::mutex> lock(warp.mutex);
  if (warp.exited) abort_with(std::string(what) + ": a lane of the warp has returned; the full mask needs all 32");
  const unsigned generation = warp.generation;
  if (++warp.arrived == 32) {
    warp.arrived = 0;
    ++warp.generation;
    warp.released.notify_all();
    return;
  }
  warp.released.wait(lock, [&] { return warp.generation != generation || warp.exited > 0; });
  if (warp.generation == generation) abort_with(std::string(what) + ": a lane of the warp returned instead");
}

}  // namespace

ThreadContext* current_thread() { return running; }

void configure(int poison_byte, bool os_threads) {
  poison = poison_byte & 0xff;
  use_os_threads = os_threads;
}

int64_t launch_count() { return launches; }

void record_error(cudaError_t error) {
  if (error != cudaSuccess) pending = error;
}

void fail(const char* message) {
  Block& block = *running->block;
  if (use_os_threads) abort_with(message);
  if (block.error.empty()) block.error = message;
  Fiber& fiber = current_fiber();
  fiber.wait = Wait::exited;
  suspend(fiber);  // never resumed: the launch reports the failure
  std::abort();
}

void sync_threads() {
  if (use_os_threads) {
    running->block->barrier->arrive_and_wait();
    return;
  }
  Fiber& fiber = current_fiber();
  fiber.wait = Wait::block_barrier;
  suspend(fiber);
}

uint64_t exchange(unsigned mask, uint64_t value, unsigned source_lane, const char* what) {
  ThreadContext& thread = *running;
  Block& block = *thread.block;
  if (mask != 0xffffffffu) {
    const std::string message = std::string(what) + " with mask " + std::to_string(mask) +
                                ": only the full mask 0xffffffff is emulated";
    fail(message.c_str());
  }
  if (block.threads % 32 != 0) {
    const std::string message = std::string(what) + " in a block of " + std::to_string(block.threads) +
                                " threads: the full mask needs whole warps";
    fail(message.c_str());
  }
  Warp& warp = *block.warps[thread.linear / 32];
  const unsigned buffer = thread.shuffles++ & 1u;
  warp.slots[buffer][thread.linear & 31u] = value;
  if (use_os_threads) {
    warp_barrier_of_threads(warp, what);
  } else {
    Fiber& fiber = current_fiber();
    fiber.wait = Wait::warp_barrier;
    suspend(fiber);
  }
  return warp.slots[buffer][source_lane];
}

void* shared_storage(const void* site, size_t bytes, size_t alignment) {
  Block& block = *running->block;
  size_t offset = 0, end = 0;
  {
    const std::lock_guard<std::mutex> lock(block.shared_mutex);
    for (const auto& [known, known_offset] : block.shared_sites)
      if (known == site) return block.shared + known_offset;
    offset = (block.shared_used + alignment - 1) / alignment * alignment;
    end = offset + bytes;
    if (end <= kStaticSharedLimit) {
      block.shared_sites.emplace_back(site, offset);
      block.shared_used = end;
      return block.shared + offset;
    }
  }
  const std::string message = "the kernel declares at least " + std::to_string(end) +
                              " bytes of static shared memory; a block may have at most 49152 (48 KB)";
  fail(message.c_str());
}

cudaError_t run_grid(dim3 grid, dim3 shape, size_t dynamic_shared_bytes, const std::function<void()>& body) {
  ++launches;
  const uint64_t threads = uint64_t{shape.x} * shape.y * shape.z;
  const bool valid_block = shape.x >= 1 && shape.y >= 1 && shape.z >= 1 && shape.x <= 1024 && shape.y <= 1024 &&
                           shape.z <= 64 && threads <= kMaxThreadsPerBlock;
  const bool valid_grid = grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 2147483647u && grid.y <= 65535 &&
                          grid.z <= 65535;
  if (!valid_block || !valid_grid) return cudaErrorInvalidConfiguration;
  if (dynamic_shared_bytes != 0) throw std::runtime_error("cuda emulation: dynamic shared memory is not emulated");
  auto block = std::make_unique<Block>();
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        reset_block(*block, grid, shape);
        const uint3 index{x, y, z};
        if (use_os_threads) {
          run_block_as_threads(*block, index, body);
        } else {
          run_block_as_fibers(*block, index, body);
        }
        if (!block->error.empty()) {
          throw std::runtime_error("cuda emulation: block (" + std::to_string(x) + ", " + std::to_string(y) + ", " +
                                   std::to_string(z) + "): " + block->error);
        }
      }
    }
  }
  return cudaSuccess;
}

}  // namespace cuda_emulation

extern "C" void cuda_emulation_fiber_main(cuda_emulation::Fiber* fiber) {
  (*fiber->body)();
  fiber->wait = cuda_emulation::Wait::exited;
  cuda_emulation::suspend(*fiber);
  std::abort();  // a returned fiber is never resumed
}

extern "C" cudaError_t cuda_emulation_get_last_error(void) {
  const cudaError_t error = cuda_emulation::pending;
  cuda_emulation::pending = cudaSuccess;
  return error;
}

extern "C" cudaError_t cuda_emulation_peek_at_last_error(void) { return cuda_emulation::pending; }

extern "C" const char* cuda_emulation_get_error_string(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidValue: return "invalid argument";
    default: return "an emulated CUDA error";
  }
}
