// The PyTorch side of MicroAdam's CUDA ops: argument checks, the tensor's own device and current stream,
// then the launchers of microadam_cuda.cu. Registered for the CUDA dispatch key of the ops in ops.cpp.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <map>
#include <vector>

#include "../common/cuda_glue.h"
#include "microadam_checks.h"
#include "microadam_chunks.h"
#include "microadam_cuda.h"
#include "microadam_step.h"
#include "../common/kernel_registration.h"

namespace lit_microopt {
namespace microadam {
namespace {

const uint16_t* bf16(const at::Tensor& tensor) { return reinterpret_cast<const uint16_t*>(tensor.data_ptr()); }
uint16_t* bf16_mut(const at::Tensor& tensor) { return reinterpret_cast<uint16_t*>(tensor.data_ptr()); }

void ef_dequant_add_cuda(at::Tensor accumulator, const at::Tensor& error_feedback, const at::Tensor& bucket_min,
                         const at::Tensor& bucket_max, int64_t bucket_size) {
  check_kernel_device(accumulator, "accumulator", kCudaKernelDevice);
  check_bucket_state(accumulator, error_feedback, bucket_min, bucket_max, bucket_size);
  const c10::cuda::CUDAGuard guard(accumulator.device());
  check_launch(launch_ef_dequant_add(dtype_code(accumulator, "accumulator"), accumulator.data_ptr(),
                                     error_feedback.data_ptr<uint8_t>(), bf16(bucket_min), bf16(bucket_max),
                                     accumulator.numel(), bucket_size, c10::cuda::getCurrentCUDAStream()),
               "ef_dequant_add_");
}

void block_topk_cuda(const at::Tensor& accumulator, at::Tensor indices_row, at::Tensor values_row,
                     int64_t block_size, int64_t k_block, int64_t k_last) {
  check_kernel_device(accumulator, "accumulator", kCudaKernelDevice);
  check_window_row(accumulator, indices_row, values_row, block_size, k_block, k_last);
  const c10::cuda::CUDAGuard guard(accumulator.device());
  check_launch(launch_block_topk(dtype_code(accumulator, "accumulator"), accumulator.data_ptr(),
                                 indices_row.data_ptr<int16_t>(), bf16_mut(values_row), accumulator.numel(),
                                 block_size, k_block, k_last, c10::cuda::getCurrentCUDAStream()),
               "block_topk");
}

// Steps 4 and 5 (the random stream indexed from `first_element`, a chunk's offset in its tensor).
void quantize_remainder(at::Tensor& accumulator, const at::Tensor& indices_row, at::Tensor& error_feedback,
                        at::Tensor& bucket_min, at::Tensor& bucket_max, int64_t bucket_size, int64_t block_size,
                        int64_t k_block, bool stochastic, int64_t key, int64_t first_element) {
  const c10::cuda::CUDAGuard guard(accumulator.device());
  check_launch(launch_ef_quantize(dtype_code(accumulator, "accumulator"), accumulator.data_ptr(),
                                  indices_row.data_ptr<int16_t>(), indices_row.numel(),
                                  error_feedback.data_ptr<uint8_t>(), bf16_mut(bucket_min), bf16_mut(bucket_max),
                                  accumulator.numel(), bucket_size, block_size, k_block, stochastic,
                                  static_cast<uint32_t>(key), first_element, c10::cuda::getCurrentCUDAStream()),
               "ef_quantize_");
}

void ef_quantize_cuda(at::Tensor accumulator, const at::Tensor& indices_row, at::Tensor error_feedback,
                      at::Tensor bucket_min, at::Tensor bucket_max, int64_t bucket_size, int64_t block_size,
                      int64_t k_block, bool stochastic, int64_t key) {
  check_kernel_device(accumulator, "accumulator", kCudaKernelDevice);
  check_bucket_state(accumulator, error_feedback, bucket_min, bucket_max, bucket_size);
  check_operand(indices_row, "indices_row", accumulator, at::kShort);
  check_window_columns(accumulator.numel(), block_size, k_block, indices_row.numel(), "indices_row");
  quantize_remainder(accumulator, indices_row, error_feedback, bucket_min, bucket_max, bucket_size, block_size, k_block,
                     stochastic, key, 0);
}

// Steps 2 to 5: the three kernels one after the other on the current stream, on the gradient buffer for a
// float32 gradient, else on float32 chunks of it (the accumulator is float32 whatever the gradient's dtype).
void ef_compress_cuda(at::Tensor accumulator, at::Tensor indices_row, at::Tensor values_row, at::Tensor error_feedback,
                      at::Tensor bucket_min, at::Tensor bucket_max, int64_t bucket_size, int64_t block_size,
                      int64_t k_block, int64_t k_last, bool stochastic, int64_t key) {
  // Every argument is checked before the first kernel runs: a refused call changes nothing.
  check_kernel_device(accumulator, "accumulator", kCudaKernelDevice);
  check_bucket_state(accumulator, error_feedback, bucket_min, bucket_max, bucket_size);
  check_window_row(accumulator, indices_row, values_row, block_size, k_block, k_last);
  compress_in_float32(accumulator, indices_row, values_row, error_feedback, bucket_min, bucket_max, bucket_size,
                      block_size, k_block, k_last, stochastic, key, ef_dequant_add_cuda, block_topk_cuda,
                      quantize_remainder);
}

void window_adam_update_cuda(at::Tensor param, const at::Tensor& window_indices, const at::Tensor& window_values,
                             const at::Tensor& row_weights1, const at::Tensor& row_weights2, int64_t block_size,
                             int64_t k_block, double c1, double c2, double eps, double lr, double weight_decay,
                             bool stochastic_param, int64_t param_key, int64_t decay_key) {
  check_kernel_device(param, "param", kCudaKernelDevice);
  const int64_t rows = check_window(param, window_indices, window_values, row_weights1, row_weights2, block_size,
                                    k_block);
  const c10::cuda::CUDAGuard guard(param.device());
  check_launch(launch_window_adam_update(
                   dtype_code(param, "param"), param.data_ptr(), window_indices.data_ptr<int16_t>(),
                   bf16(window_values), row_weights1.data_ptr<float>(), row_weights2.data_ptr<float>(), rows,
                   window_indices.size(1), param.numel(), block_size, k_block, static_cast<float>(c1),
                   static_cast<float>(c2), static_cast<float>(eps), static_cast<float>(lr), weight_decay > 0,
                   static_cast<float>(1.0 - lr * weight_decay), stochastic_param, static_cast<uint32_t>(param_key),
                   static_cast<uint32_t>(decay_key), c10::cuda::getCurrentCUDAStream()),
               "window_adam_update_");
}

// The float32 scratch of a call's bfloat16 and float16 gradients holds at most this many elements (256 MB) at a
// time (steps 2 to 5 keep the accumulator in float32). A call whose 16-bit gradients hold more runs the four
// kernels of steps 2 to 5 in several passes, each over as many tensors, or chunks of whole Top-K blocks and
// buckets of a larger one, as fit; a float32 gradient is its own accumulator and needs none. The tests' emulated
// GPU sets a small limit, so that several passes run on small tensors.
#ifndef LIT_MICROOPT_STEP_SCRATCH_ELEMENTS
#define LIT_MICROOPT_STEP_SCRATCH_ELEMENTS (int64_t{1} << 26)
#endif
constexpr int64_t kStepScratchElements = LIT_MICROOPT_STEP_SCRATCH_ELEMENTS;
constexpr int kFloat32Code = 0;  // dtype_code of float32 (cuda_glue.h)

// One item of steps 2 to 5 as planned before the step counts advance: a chunk of tensor `tensor`, the pass of the
// compress kernels that takes it, and where its accumulator lies in the scratch (-1: the gradient itself).
struct PlannedChunk {
  size_t tensor;
  Chunk chunk;
  size_t pass;
  int64_t scratch_offset;
};

// The dtype codes of a list's tensors, each refused with the position of its tensor in the lists.
std::vector<int> dtype_codes(const std::vector<at::Tensor>& tensors, const char* name) {
  std::vector<int> codes;
  for (size_t i = 0; i < tensors.size(); ++i) {
    try {
      codes.push_back(dtype_code(tensors[i], name));
    } catch (const c10::Error& error) {
      TORCH_CHECK(false, "tensor ", i, " of the lists: ", error.what_without_backtrace());
    }
  }
  return codes;
}

// One MicroAdam step (steps 1 to 7) of every tensor of a list, each kernel launched once for the whole list: the
// schedules on the host, every tensor's pointers and schedule (and the row weights of each distinct step count)
// in one metadata buffer copied to the device once, then the four kernels of steps 2 to 5 (once per pass of the
// float32 scratch, see kStepScratchElements) and the one or two of steps 6 and 7, on the current stream. The
// kernels take parameters and gradients of any of the three dtypes, mixed within a list.
void microadam_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList window_indices,
                         at::TensorList window_values, at::TensorList error_feedback, at::TensorList bucket_min,
                         at::TensorList bucket_max, at::TensorList steps, at::TensorList seeds, double lr,
                         double beta1, double beta2, double eps, double weight_decay, int64_t m, int64_t block_size,
                         int64_t k_block, int64_t bucket_size, bool stochastic, bool stochastic_param) {
  const std::vector<at::Tensor> p = params.vec(), g = grads.vec(), wi = window_indices.vec(), wv = window_values.vec(),
                                e = error_feedback.vec(), lo = bucket_min.vec(), hi = bucket_max.vec(),
                                st = steps.vec(), se = seeds.vec();
  const StepTensors tensors{p, g, wi, wv, e, lo, hi, st, se};
  check_step_tensors(tensors, kCudaKernelDevice, m, block_size, k_block, bucket_size);
  const std::vector<int> param_codes = dtype_codes(p, "param"), grad_codes = dtype_codes(g, "grad");
  if (p.empty()) return;
  const c10::cuda::CUDAGuard guard(p.front().device());
  const at::TensorOptions on_device = at::TensorOptions().device(p.front().device());

  // The plan of steps 2 to 5: items in list order, a new pass when the scratch would overflow.
  std::vector<PlannedChunk> plan;
  size_t passes = 1;
  int64_t used = 0, scratch_elements = 0;
  std::vector<size_t> updated;  // the tensors with elements (an empty one has no window, no work)
  for (size_t i = 0; i < p.size(); ++i) {
    const int64_t numel = p[i].numel();
    if (numel == 0) continue;
    updated.push_back(i);
    const int64_t columns = wi[i].size(1), k_last = columns - numel / block_size * k_block;
    if (grad_codes[i] == kFloat32Code) {
      plan.push_back({i, Chunk{0, numel, 0, columns, k_last}, passes - 1, -1});
      continue;
    }
    for_each_chunk(numel, block_size, k_block, k_last, bucket_size, [&](const Chunk& chunk) {
      if (used > 0 && used + chunk.length > kStepScratchElements) {
        ++passes;
        used = 0;
      }
      plan.push_back({i, chunk, passes - 1, used});
      used += chunk.length;
      scratch_elements = std::max(scratch_elements, used);
    }, kStepScratchElements);
  }
  // The row weights of each distinct step count that this call reaches, and the metadata's layout:
  // [compress items][update items][row weights].
  std::map<int64_t, int64_t> weight_offsets;  // by step count, in floats from the weights' start
  int64_t weight_floats = 0;
  for (size_t i : updated) {
    const int64_t next = *st[i].data_ptr<int64_t>() + 1;
    if (weight_offsets.emplace(next, weight_floats).second) weight_floats += 2 * std::min(next, m);
  }
  const size_t compress_bytes = plan.size() * sizeof(CompressItem), update_bytes = updated.size() * sizeof(UpdateItem);
  const int64_t metadata_bytes = static_cast<int64_t>(compress_bytes + update_bytes) + weight_floats * 4;
  // Every allocation comes before the step counts advance: a call refused for want of memory changes nothing.
  at::Tensor scratch = at::empty({scratch_elements}, on_device.dtype(at::kFloat));
  at::Tensor metadata = at::empty({metadata_bytes}, on_device.dtype(at::kByte));
  at::TensorOptions host_options = at::TensorOptions().dtype(at::kByte);
#ifndef LIT_MICROOPT_CUDA_EMULATION
  host_options = host_options.pinned_memory(true);  // so that the copy is asynchronous on the stream
#endif
  at::Tensor host_metadata = at::empty({metadata_bytes}, host_options);

  RowWeights row_weights(m, beta1, beta2);
  const std::vector<TensorSchedule> schedules = advance_steps(tensors, m, beta1, beta2, row_weights);

  uint8_t* const host = host_metadata.data_ptr<uint8_t>();
  uint8_t* const device = metadata.data_ptr<uint8_t>();
  auto* const compress = reinterpret_cast<CompressItem*>(host);
  auto* const update = reinterpret_cast<UpdateItem*>(host + compress_bytes);
  auto* const weights = reinterpret_cast<float*>(host + compress_bytes + update_bytes);
  const auto* const device_weights = reinterpret_cast<const float*>(device + compress_bytes + update_bytes);
  for (const auto& [step, offset] : weight_offsets) {
    const auto& [weights1, weights2] = row_weights.at_step(step);
    std::copy(weights1.begin(), weights1.end(), weights + offset);
    std::copy(weights2.begin(), weights2.end(), weights + offset + weights1.size());
  }
  std::vector<size_t> pass_begin(passes + 1, plan.size());
  std::vector<std::array<int64_t, 4>> pass_totals(passes, std::array<int64_t, 4>{});
  for (size_t n = plan.size(); n-- > 0;) pass_begin[plan[n].pass] = n;
  for (size_t n = 0; n < plan.size(); ++n) {
    const PlannedChunk& planned = plan[n];
    const size_t i = planned.tensor;
    const Chunk& chunk = planned.chunk;
    const TensorSchedule& s = schedules[i];
    const int64_t row_start = s.row * wi[i].size(1) + chunk.first_column;
    std::array<int64_t, 4>& totals = pass_totals[planned.pass];
    CompressItem& item = compress[n];
    item = CompressItem{};
    item.source = static_cast<const uint8_t*>(g[i].data_ptr()) + chunk.start * g[i].element_size();
    item.accumulator = planned.scratch_offset < 0 ? g[i].data_ptr<float>()
                                                  : scratch.data_ptr<float>() + planned.scratch_offset;
    item.codes = e[i].data_ptr<uint8_t>() + chunk.start / 2;  // chunks start on a bucket, and buckets are even
    item.lows = bf16_mut(lo[i]) + chunk.start / bucket_size;
    item.highs = bf16_mut(hi[i]) + chunk.start / bucket_size;
    item.indices = wi[i].data_ptr<int16_t>() + row_start;
    item.kept = bf16_mut(wv[i]) + row_start;
    item.numel = chunk.length;
    item.k_last = chunk.k_last;
    item.first_element = chunk.start;
    item.key = s.key;
    item.source_code = grad_codes[i];
    const int64_t units[4] = {(chunk.length + 1) / 2, chunk.length / block_size + (chunk.k_last > 0 ? 1 : 0),
                              chunk.columns, (chunk.length + bucket_size - 1) / bucket_size};
    for (int kind = 0; kind < 4; ++kind) {
      item.first[kind] = totals[kind];
      totals[kind] += units[kind];
    }
  }
  int64_t update_totals[2] = {0, 0};
  for (size_t n = 0; n < updated.size(); ++n) {
    const size_t i = updated[n];
    const TensorSchedule& s = schedules[i];
    UpdateItem& item = update[n];
    item = UpdateItem{};
    item.param = p[i].data_ptr();
    item.indices = wi[i].data_ptr<int16_t>();  // rows 0 to filled - 1: the first `filled` rows of the matrix
    item.window = bf16(wv[i]);
    item.weights1 = device_weights + weight_offsets.at(s.step);
    item.weights2 = item.weights1 + s.filled;
    item.rows = s.filled;
    item.columns = wi[i].size(1);
    item.numel = p[i].numel();
    item.first[kUpdateElements] = update_totals[kUpdateElements];
    item.first[kUpdateBlocks] = update_totals[kUpdateBlocks];
    update_totals[kUpdateElements] += item.numel;
    update_totals[kUpdateBlocks] += (item.columns + k_block - 1) / k_block;
    item.c1 = s.c1;
    item.c2 = s.c2;
    item.param_key = s.update_key;
    item.decay_key = s.decay_key;
    item.param_code = param_codes[i];
  }
  metadata.copy_(host_metadata, /*non_blocking=*/true);  // the caching host allocator keeps it until copied

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto* const device_compress = reinterpret_cast<const CompressItem*>(device);
  for (size_t pass = 0; pass < passes; ++pass) {
    check_launch(launch_compress_list(device_compress + pass_begin[pass],
                                      static_cast<int>(pass_begin[pass + 1] - pass_begin[pass]),
                                      pass_totals[pass].data(), block_size, k_block, bucket_size, stochastic, stream),
                 "microadam_step_");
  }
  check_launch(launch_update_list(reinterpret_cast<const UpdateItem*>(device + compress_bytes),
                                  static_cast<int>(updated.size()), update_totals[kUpdateElements],
                                  update_totals[kUpdateBlocks], block_size, k_block, static_cast<float>(eps),
                                  static_cast<float>(lr), weight_decay > 0,
                                  static_cast<float>(1.0 - lr * weight_decay), stochastic_param, stream),
               "microadam_step_");
}

}  // namespace

LMO_REGISTER_KERNELS(CUDA, m) {
  m.impl("ef_dequant_add_", &ef_dequant_add_cuda);
  m.impl("block_topk", &block_topk_cuda);
  m.impl("ef_quantize_", &ef_quantize_cuda);
  m.impl("window_adam_update_", &window_adam_update_cuda);
  m.impl("ef_compress_", &ef_compress_cuda);
  m.impl("microadam_step_", &microadam_step_cuda);
}

}  // namespace microadam
}  // namespace lit_microopt
