// MicroAdam's CPU work on one Top-K block, on raw pointers: steps 2 to 5 (compress_block, from the bucket pieces of
// microadam_cpu_buckets.h and the Top-K of microadam_cpu_topk.h) and steps 6 and 7 (update_block), and the loops of
// the per-tensor ops. microadam_cpu.cpp wraps them in ops (tensor checks, parallel loops). No ATen here beyond the
// scalar types: the pieces can be compiled and timed alone. Included by microadam_cpu.cpp only.
#pragma once

#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../common/cpu_rounding.h"
#include "microadam_cpu_buckets.h"
#include "microadam_cpu_topk.h"
#include "microadam_math.h"

namespace lit_microopt {
namespace microadam {
namespace {

template <typename scalar_t>
LMO_CPU_INLINE void load_floats(const scalar_t* source, int64_t length, float* destination) {
  for (int64_t j = 0; j < length; ++j) destination[j] = static_cast<float>(source[j]);
}

// The loops of the per-tensor ops over a range of their work units (buckets or blocks), each a whole function
// compiled for AVX2 and for any x86-64 (the helpers above are inlined into them).

// Step 2 in place on buckets [first_bucket, last_bucket) of a tensor of `numel` elements (the op ef_dequant_add_).
template <typename scalar_t>
LMO_CPU_CLONES void dequant_add_buckets(scalar_t* values, int64_t numel, const uint8_t* packed, const uint16_t* lows,
                                        const uint16_t* highs, int64_t bucket_size, int64_t first_bucket,
                                        int64_t last_bucket) {
  std::vector<uint8_t> codes(bucket_size + 1);
  const int64_t start = first_bucket * bucket_size, length = std::min(last_bucket * bucket_size, numel) - start;
  with_bucket_length(bucket_size, [&](auto size) LMO_CPU_INLINE_LAMBDA {
    add_dequantized_buckets(values + start, packed + start / 2, lows + first_bucket, highs + first_bucket, length,
                            size, codes.data(), values + start);
  });
}

// Step 3 on Top-K blocks [first_block, last_block) of a tensor (the op block_topk): `k_block` entries from a whole
// block, `k_last` from a shorter last one.
template <typename scalar_t>
LMO_CPU_CLONES void select_blocks(const scalar_t* values, int64_t numel, int64_t block_size, int64_t k_block,
                                  int64_t k_last, int16_t* indices, uint16_t* kept, int64_t first_block,
                                  int64_t last_block) {
  SelectBuffers buffers(block_size);
  std::vector<float> block_values(block_size);
  for (int64_t block = first_block; block < last_block; ++block) {
    const int64_t start = block * block_size, length = std::min(block_size, numel - start);
    load_floats(values + start, length, block_values.data());
    select_block(block_values.data(), length, start + block_size <= numel ? k_block : k_last,
                 indices + block * k_block, kept + block * k_block, buffers);
  }
}

// Step 5 on buckets [first_bucket, last_bucket) of a tensor (the op ef_quantize_, once the kept entries are
// removed), in spans of about kSpanElements elements converted to float32. `first_element` is the tensor's first
// element's index in the random stream's numbering.
constexpr int64_t kSpanElements = 8192;

LMO_CPU_INLINE int64_t span_buckets(int64_t bucket_size) { return std::max<int64_t>(1, kSpanElements / bucket_size); }

template <typename scalar_t>
LMO_CPU_CLONES void quantize_bucket_range(const scalar_t* values, int64_t numel, int64_t bucket_size,
                                          int64_t first_element, bool stochastic, uint32_t stream, uint16_t* lows,
                                          uint16_t* highs, uint8_t* codes, int64_t first_bucket, int64_t last_bucket) {
  std::vector<float> span(span_buckets(bucket_size) * bucket_size);
  for (int64_t bucket = first_bucket; bucket < last_bucket; bucket += span_buckets(bucket_size)) {
    const int64_t end = std::min(last_bucket, bucket + span_buckets(bucket_size));
    const int64_t start = bucket * bucket_size, length = std::min(end * bucket_size, numel) - start;
    load_floats(values + start, length, span.data());
    with_bucket_length(bucket_size, [&](auto size) LMO_CPU_INLINE_LAMBDA {
      quantize_buckets(span.data(), length, size, first_element + start, stochastic, stream, lows + bucket,
                       highs + bucket, codes + start / 2);
    });
  }
}

// Steps 2 to 5 of one tensor, block by block: its gradient and the state these steps change.
struct CompressTarget {
  const void* gradient;
  at::ScalarType dtype;
  int64_t numel, full_blocks, k_last;
  int16_t* indices;  // the window row this step writes
  uint16_t* kept;
  uint8_t* codes;
  uint16_t *lows, *highs;
  uint32_t key;

  int64_t blocks(int64_t block_size) const { return (numel + block_size - 1) / block_size; }
};

// A thread's buffers for whole blocks: the float32 accumulator, the Top-K selection's, a bucket's codes one per byte.
struct BlockBuffers {
  explicit BlockBuffers(int64_t block_size) : select(block_size), a(block_size), codes(block_size + 1) {}
  SelectBuffers select;
  std::vector<float> a;
  std::vector<uint8_t> codes;
};

// Steps 2 to 5 of one Top-K block made of whole buckets, in one pass: the block is dequantized into a float32
// buffer (the accumulator is float32 whatever the gradient's dtype), its Top-K written to the window, the kept
// entries removed and its buckets quantized, all while it sits in cache. The gradient is not written back.
template <typename scalar_t>
LMO_CPU_CLONES void compress_block(const CompressTarget& t, int64_t block, int64_t block_size, int64_t k_block,
                                   int64_t bucket_size, bool stochastic, BlockBuffers& buffers) {
  const scalar_t* gradient = static_cast<const scalar_t*>(t.gradient);
  float* a = buffers.a.data();
  const int64_t start = block * block_size, length = std::min(block_size, t.numel - start);
  // Step 2 (the block starts on a bucket boundary).
  const int64_t first_bucket = start / bucket_size;
  with_bucket_length(bucket_size, [&](auto size) LMO_CPU_INLINE_LAMBDA {
    add_dequantized_buckets(gradient + start, t.codes + start / 2, t.lows + first_bucket, t.highs + first_bucket,
                            length, size, buffers.codes.data(), a);
  });
  // Step 3.
  int16_t* block_indices = t.indices + block * k_block;
  const int64_t k = block < t.full_blocks ? k_block : t.k_last;
  select_block(a, length, k, block_indices, t.kept + block * k_block, buffers.select);
  // Step 4.
  for (int64_t column = 0; column < k; ++column) {
    float& value = a[block_indices[column]];
    value = kept_remainder(value);
  }
  // Step 5.
  with_bucket_length(bucket_size, [&](auto size) LMO_CPU_INLINE_LAMBDA {
    quantize_buckets(a, length, size, start, stochastic, t.key, t.lows + first_bucket, t.highs + first_bucket,
                     t.codes + start / 2);
  });
}
// Step 7's decay: p *= 1 - lr * weight_decay, rounded to p's dtype.
template <typename scalar_t>
LMO_CPU_INLINE void scale(scalar_t* values, int64_t count, float factor) {
  for (int64_t i = 0; i < count; ++i) values[i] = static_cast<scalar_t>(static_cast<float>(values[i]) * factor);
}

// The same decay with param_rounding="stochastic": each product rounded stochastically, element `first + i` drawing
// from the stream `key`.
template <typename scalar_t>
LMO_CPU_INLINE void scale_stochastically(scalar_t* values, int64_t first, int64_t count, float factor, uint32_t key) {
  for (int64_t i = 0; i < count; ++i) {
    values[i] = round_stochastically<scalar_t>(static_cast<float>(values[i]) * factor, uniform(key, first + i));
  }
}

// Step 6's sums for one Top-K block: S1 and S2 in block-sized buffers (zero between blocks), and a bitmap of the
// positions the window holds. Positions are then visited in ascending order: the parameter's memory is read
// as a stream the prefetcher follows, not in the window's random order.
struct WindowSums {
  explicit WindowSums(int64_t block_size) : sum1(block_size, 0.0f), sum2(block_size, 0.0f), held((block_size + 63) / 64, 0) {}

  // Row by row, columns in order, over window columns [first, last): each position's entries are summed in
  // row order, the summation order of the reference and of the CUDA kernel.
  LMO_CPU_INLINE void accumulate(const int16_t* indices, const uint16_t* window, const float* weights1,
                                 const float* weights2, int64_t rows, int64_t columns, int64_t first, int64_t last) {
    for (int64_t row = 0; row < rows; ++row) {
      for (int64_t column = first; column < last; ++column) {
        const int32_t j = indices[row * columns + column];
        const float value = bfloat16_to_float(window[row * columns + column]);
        sum1[j] += multiply(value, weights1[row]);
        sum2[j] += multiply(multiply(value, value), weights2[row]);
        held[j >> 6] |= uint64_t{1} << (j & 63);
      }
    }
  }

  // Calls visit(j, S1[j], S2[j]) once per held position, ascending, and leaves the buffers zero.
  template <typename Visit>
  void drain(Visit&& visit) {
    for (size_t word = 0; word < held.size(); ++word) {
      for (uint64_t bits = held[word]; bits != 0; bits &= bits - 1) {
        const int64_t j = static_cast<int64_t>(word) * 64 + __builtin_ctzll(bits);
        visit(j, sum1[j], sum2[j]);
        sum1[j] = sum2[j] = 0.0f;
      }
      held[word] = 0;
    }
  }

  std::vector<float> sum1, sum2;
  std::vector<uint64_t> held;
};

// Steps 6 and 7 of one tensor, block by block: the parameter, its window's filled rows and the step's numbers.
struct UpdateTarget {
  void* values;
  at::ScalarType dtype;
  int64_t numel, rows, columns;
  const int16_t* indices;  // (rows, columns), row-major
  const uint16_t* window;
  const float *weights1, *weights2;
  float c1, c2;
  uint32_t update_stream, decay_stream;

  int64_t blocks(int64_t k_block) const { return (columns + k_block - 1) / k_block; }
};

// The settings every tensor of a call shares.
struct UpdateSettings {
  int64_t block_size, k_block;
  float eps, lr;
  bool decays;           // weight_decay > 0
  float decay;           // 1 - lr * weight_decay
  bool stochastic_param;  // param_rounding="stochastic"
};

// Steps 6 and 7 of one Top-K block: the decay of its elements, the window's moments (WindowSums), then one update
// per position the window holds. Blocks are independent: a block's positions only take its own window columns.
template <typename scalar_t>
LMO_CPU_CLONES void update_block(const UpdateTarget& t, int64_t block, const UpdateSettings& s, WindowSums& sums) {
  // param_rounding="stochastic" rounds a 16-bit p stochastically, after the decay and after the update, each with
  // its own stream indexed by the element's position in the tensor; float32 has nothing to round.
  const bool stochastic = s.stochastic_param && !std::is_same_v<scalar_t, float>;
  const int64_t offset = block * s.block_size, length = std::min(s.block_size, t.numel - offset);
  scalar_t* target = static_cast<scalar_t*>(t.values) + offset;
  if (s.decays) {
    if (stochastic) {
      scale_stochastically(target, offset, length, s.decay, t.decay_stream);
    } else {
      scale(target, length, s.decay);
    }
  }
  const int64_t first = block * s.k_block, last = std::min(t.columns, first + s.k_block);
  sums.accumulate(t.indices, t.window, t.weights1, t.weights2, t.rows, t.columns, first, last);
  sums.drain([&](int64_t j, float sum1, float sum2) {
    const float update = window_update(sum1, sum2, t.c1, t.c2, s.eps);
    const float next = apply_update(static_cast<float>(target[j]), s.lr, update);
    target[j] = stochastic ? round_stochastically<scalar_t>(next, uniform(t.update_stream, offset + j))
                           : static_cast<scalar_t>(next);
  });
}

UpdateSettings update_settings(int64_t block_size, int64_t k_block, double eps, double lr, double weight_decay,
                               bool stochastic_param) {
  return UpdateSettings{block_size, k_block, static_cast<float>(eps), static_cast<float>(lr), weight_decay > 0,
                        static_cast<float>(1.0 - lr * weight_decay), stochastic_param};
}

}  // namespace
}  // namespace microadam
}  // namespace lit_microopt
