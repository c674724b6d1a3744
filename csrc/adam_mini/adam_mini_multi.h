// Adam-mini's multi-tensor ops (multi_block_mean_squares_, multi_adam_mini_update_: one call per param group, not
// per tensor), the part shared by the CPU kernel (adam_mini_cpu.cpp), the CUDA glue (adam_mini_cuda_ops.cpp) and the
// tests' emulated CUDA op: the layouts read from the int lists, the argument checks, the block statistics, v's
// update and the block denominators.
//
// The statistics, v and the denominators are the reference's own ATen ops (block_mean_squares and
// block_denominators_ of lit_microopt/ops/reference/adam_mini.py), called in the same order on tensors of the same
// shapes: the per-tensor path's bits by construction on every device (a reduction's order, a fused multiply-add in
// add_'s vectorised loop, CUDA's division by a scalar as a multiplication by its reciprocal are all theirs), at a
// microsecond of C++ dispatch each instead of a Python call. Only the element-wise pass is the kernels' own.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <vector>

#include "../common/numerics.h"
#include "adam_mini_math.h"

namespace lit_microopt {
namespace adam_mini {

// One tensor's blocks (the module docstring of lit_microopt/ops/reference/adam_mini.py): the rows of its block
// matrix, cut into segments of blocks of equal height.
struct MultiLayout {
  int block_axis;
  int64_t first_segment;  // its segments in segment_rows / rows_per_block
  int64_t segments;
  int64_t rows;         // rows of the block matrix, the sum of its segments' rows
  int64_t blocks;       // entries of exp_avg_sq
  int64_t first_block;  // its statistics' offset in block_mean_sqs
};

inline void check_length(const char* op, const char* list, size_t size, const char* first, size_t expected) {
  TORCH_CHECK_VALUE(size == expected, "lit_microopt: ", op, " got ", expected, " ", first, " but ", size, " ", list,
                    "; pass one entry per tensor in every list");
}

// The layouts of `count` tensors, checked: a block axis of 0 or 1, at least one segment, segments of whole blocks.
inline std::vector<MultiLayout> multi_layouts(const char* op, size_t count, const char* first,
                                              c10::IntArrayRef block_axes, c10::IntArrayRef segment_counts,
                                              c10::IntArrayRef segment_rows, c10::IntArrayRef rows_per_block) {
  check_length(op, "block_axes", block_axes.size(), first, count);
  check_length(op, "segment_counts", segment_counts.size(), first, count);
  int64_t total_segments = 0;
  for (const int64_t segments : segment_counts) {
    TORCH_CHECK_VALUE(segments >= 1, "lit_microopt: ", op, ": every tensor needs at least one segment, got ",
                      segments, "; pass the segments of BlockLayout.segment_rows");
    total_segments += segments;
  }
  TORCH_CHECK_VALUE(static_cast<int64_t>(segment_rows.size()) == total_segments &&
                        static_cast<int64_t>(rows_per_block.size()) == total_segments,
                    "lit_microopt: ", op, ": segment_counts add up to ", total_segments,
                    " segments but segment_rows has ", segment_rows.size(), " and rows_per_block ",
                    rows_per_block.size(),
                    "; concatenate every tensor's segment_rows and rows_per_block in the tensors' order");
  std::vector<MultiLayout> layouts;
  layouts.reserve(count);
  int64_t segment = 0, first_block = 0;
  for (size_t i = 0; i < count; ++i) {
    TORCH_CHECK_VALUE(block_axes[i] == 0 || block_axes[i] == 1, "lit_microopt: ", op, ": block_axes[", i,
                      "] must be 0 or 1, got ", block_axes[i]);
    MultiLayout layout{static_cast<int>(block_axes[i]), segment, segment_counts[i], 0, 0, first_block};
    for (int64_t s = segment; s < segment + segment_counts[i]; ++s) {
      TORCH_CHECK_VALUE(segment_rows[s] >= 1 && rows_per_block[s] >= 1 && segment_rows[s] % rows_per_block[s] == 0,
                        "lit_microopt: ", op, ": tensor ", i, " has a segment of ", segment_rows[s],
                        " rows in blocks of ", rows_per_block[s],
                        "; a segment must be whole blocks of at least one row");
      layout.rows += segment_rows[s];
      layout.blocks += segment_rows[s] / rows_per_block[s];
    }
    segment += segment_counts[i];
    first_block += layout.blocks;
    layouts.push_back(layout);
  }
  return layouts;
}

// `tensor` (entry `index` of `list`) is on `device`.
inline void check_device(const at::Tensor& tensor, const char* op, const char* list, size_t index,
                         const at::Tensor& first) {
  TORCH_CHECK(tensor.device() == first.device(), "lit_microopt: ", op, ": ", list, "[", index, "] is on ",
              tensor.device(), " but block_mean_sqs is on ", first.device(),
              "; call the op once per device with that device's tensors");
}

// The grads of the layouts: on block_mean_sqs' device, with whole rows, more elements than blocks (element blocks
// take AdamW's arithmetic, adam_mini_update_), and block_mean_sqs float32, contiguous, one entry per block.
inline void check_statistics_arguments(const char* op, const at::Tensor& block_mean_sqs, at::TensorList grads,
                                       const std::vector<MultiLayout>& layouts) {
  TORCH_CHECK(block_mean_sqs.scalar_type() == at::kFloat && block_mean_sqs.is_contiguous(), "lit_microopt: ", op,
              ": block_mean_sqs must be a contiguous float32 tensor, got a ", block_mean_sqs.scalar_type(), " one",
              block_mean_sqs.is_contiguous() ? "" : " that is not contiguous");
  const int64_t blocks = layouts.empty() ? 0 : layouts.back().first_block + layouts.back().blocks;
  TORCH_CHECK_VALUE(block_mean_sqs.numel() == blocks, "lit_microopt: ", op, ": block_mean_sqs has ",
                    block_mean_sqs.numel(), " entries but the tensors have ", blocks,
                    " blocks; give it one entry per block of every tensor");
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor& grad = grads[i];
    check_device(grad, op, "grads", i, block_mean_sqs);
    TORCH_CHECK(grad.scalar_type() == at::kFloat || grad.scalar_type() == at::kBFloat16 ||
                    grad.scalar_type() == at::kHalf,
                "lit_microopt: ", op, ": grads[", i, "] must be float32, bfloat16 or float16, got ",
                grad.scalar_type());
    const MultiLayout& layout = layouts[i];
    TORCH_CHECK_VALUE(grad.numel() > 0 && grad.numel() % layout.rows == 0, "lit_microopt: ", op, ": grads[", i,
                      "] has ", grad.numel(), " elements, which do not split into its ", layout.rows,
                      " rows; leave tensors without elements out and give each its own layout");
    TORCH_CHECK_VALUE(layout.blocks < grad.numel(), "lit_microopt: ", op, ": tensor ", i, " has one block per element, "
                      "which takes AdamW's arithmetic; step it with adam_mini_update_");
  }
}

// block_mean_squares of the reference for one tensor, written into `out` (its slice of block_mean_sqs): the norm
// over each row, squared, summed over each block's rows, divided by the block's elements, op for op.
inline void block_mean_squares_into(const at::Tensor& grad, const MultiLayout& layout, c10::IntArrayRef segment_rows,
                                    c10::IntArrayRef rows_per_block, at::Tensor out) {
  const at::Tensor contiguous = grad.contiguous();
  const at::Tensor matrix = layout.block_axis == 0 ? contiguous.view({layout.rows, -1})
                                                   : contiguous.view({-1, layout.rows});
  const int64_t row_numel = grad.numel() / layout.rows;
  const int64_t dim = 1 - layout.block_axis;
  if (layout.segments == 1 && rows_per_block[layout.first_segment] == 1) {
    // One block a row: the row norms are the statistics, reduced straight into their place.
    at::linalg_vector_norm_out(out, matrix, 2, dim, false, at::kFloat).square_().div_(row_numel);
    return;
  }
  at::Tensor row_sums = at::linalg_vector_norm(matrix, 2, dim, false, at::kFloat).square_();
  int64_t row = 0, block = 0;
  for (int64_t s = layout.first_segment; s < layout.first_segment + layout.segments; ++s) {
    const int64_t rows = segment_rows[s], height = rows_per_block[s];
    at::Tensor segment = row_sums.narrow(0, row, rows);
    at::Tensor block_sums = height == 1 ? segment : segment.view({-1, height}).sum(1);
    out.narrow(0, block, rows / height).copy_(block_sums.div_(height * row_numel));
    row += rows;
    block += rows / height;
  }
}

// block_denominators_ of the reference: v_b = beta2 * v_b + (1 - beta2) * mean_b(g^2) in place, then
// sqrt(v_b / bc2) + eps per block, op for op (bc2's square root written as AdamW writes it).
inline at::Tensor block_denominators(at::Tensor& exp_avg_sq, const at::Tensor& block_mean_sq, int64_t step,
                                     double beta2, double eps) {
  exp_avg_sq.mul_(beta2).add_(block_mean_sq, 1 - beta2);
  const double bias_correction2_sqrt = std::pow(1 - std::pow(beta2, static_cast<double>(step)), 0.5);
  return (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps);
}

// row_denominators of the reference: one denominator per row of the block matrix, each block's spread over its
// rows (copies only; expanded rather than repeat_interleave'd, which would wait for the GPU to size its output).
inline at::Tensor row_denominators(const at::Tensor& block_denominators, const MultiLayout& layout,
                                   c10::IntArrayRef segment_rows, c10::IntArrayRef rows_per_block) {
  if (layout.blocks == layout.rows) return block_denominators;
  std::vector<at::Tensor> segments;
  int64_t block = 0;
  for (int64_t s = layout.first_segment; s < layout.first_segment + layout.segments; ++s) {
    const int64_t blocks = segment_rows[s] / rows_per_block[s];
    segments.push_back(
        block_denominators.narrow(0, block, blocks).view({blocks, 1}).expand({blocks, rows_per_block[s]}).reshape(-1));
    block += blocks;
  }
  return segments.size() == 1 ? segments[0] : at::cat(segments);
}

// Everything multi_adam_mini_update_ refuses, checked before anything changes: list lengths, devices (all on
// block_mean_sqs'), one parameter dtype and one moment dtype per call, contiguity, sizes.
inline void check_update_arguments(const char* op, const at::Tensor& block_mean_sqs, at::TensorList params,
                                   at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                   const std::vector<MultiLayout>& layouts, c10::ArrayRef<double> weight_decays,
                                   c10::IntArrayRef rounding_seeds) {
  check_length(op, "grads", grads.size(), "params", params.size());
  check_length(op, "exp_avgs", exp_avgs.size(), "params", params.size());
  check_length(op, "exp_avg_sqs", exp_avg_sqs.size(), "params", params.size());
  check_length(op, "weight_decays", weight_decays.size(), "params", params.size());
  check_length(op, "rounding_seeds", rounding_seeds.size(), "params", params.size());
  check_statistics_arguments(op, block_mean_sqs, grads, layouts);
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor &param = params[i], &exp_avg = exp_avgs[i], &exp_avg_sq = exp_avg_sqs[i];
    check_device(param, op, "params", i, block_mean_sqs);
    check_device(exp_avg, op, "exp_avgs", i, block_mean_sqs);
    check_device(exp_avg_sq, op, "exp_avg_sqs", i, block_mean_sqs);
    TORCH_CHECK(param.scalar_type() == params[0].scalar_type() && exp_avg.scalar_type() == exp_avgs[0].scalar_type(),
                "lit_microopt: ", op, ": params[", i, "] or exp_avgs[", i, "] has another dtype than entry 0 (",
                param.scalar_type(), " / ", exp_avg.scalar_type(), " against ", params[0].scalar_type(), " / ",
                exp_avgs[0].scalar_type(), "); call the op once per parameter dtype");
    TORCH_CHECK(exp_avg.scalar_type() == at::kFloat || exp_avg.scalar_type() == at::kBFloat16 ||
                    exp_avg.scalar_type() == at::kHalf,
                "lit_microopt: ", op, ": exp_avgs[", i, "] must be float32, bfloat16 or float16, got ",
                exp_avg.scalar_type());
    TORCH_CHECK(grads[i].scalar_type() == param.scalar_type(), "lit_microopt: ", op, ": grads[", i, "] is ",
                grads[i].scalar_type(), " but its parameter is ", param.scalar_type(),
                "; give every gradient its parameter's dtype");
    TORCH_CHECK(exp_avg_sq.scalar_type() == at::kFloat, "lit_microopt: ", op, ": exp_avg_sqs[", i,
                "] must be float32, got ", exp_avg_sq.scalar_type());
    TORCH_CHECK(param.is_contiguous() && exp_avg.is_contiguous() && exp_avg_sq.is_contiguous(), "lit_microopt: ", op,
                ": params[", i, "], exp_avgs[", i, "] and exp_avg_sqs[", i, "] must be contiguous; step a "
                "non-contiguous parameter with adam_mini_update_");
    TORCH_CHECK_VALUE(grads[i].numel() == param.numel() && exp_avg.numel() == param.numel() &&
                          exp_avg_sq.numel() == layouts[i].blocks,
                      "lit_microopt: ", op, ": tensor ", i, " has ", param.numel(), " elements, its grad ",
                      grads[i].numel(), ", its exp_avg ", exp_avg.numel(), " and its exp_avg_sq ", exp_avg_sq.numel(),
                      " for ", layouts[i].blocks, " blocks; pass each parameter with its own gradient and state");
  }
}

// The element-wise pass's constants of tensor `i`: the shared ones, its weight decay, and its keys (a moment
// narrower than the parameter rounds stochastically from stream_key; param_rounding="stochastic" rounds a 16-bit
// parameter from param_rounding_keys), derived here from its seed and the step as the reference derives them.
inline Hyperparameters multi_hyperparameters(const at::Tensor& param, const at::Tensor& exp_avg, int64_t step,
                                             double lr, double beta1, double weight_decay, int64_t seed,
                                             bool stochastic_param) {
  const bool narrower = exp_avg.element_size() < param.element_size();
  const bool rounds_param = stochastic_param && param.scalar_type() != at::kFloat;
  const ParamRoundingKeys keys = rounds_param ? param_rounding_keys(seed, step) : ParamRoundingKeys{0, 0};
  return make_hyperparameters(lr / (1 - std::pow(beta1, static_cast<double>(step))), beta1, lr, weight_decay, narrower,
                              narrower ? stream_key(seed, step) : 0, rounds_param, keys.update, keys.decay);
}

}  // namespace adam_mini
}  // namespace lit_microopt
