// MicroAdam's step 3 on the CPU, on raw pointers: the Top-K of one block held as floats. Part of the block kernels of
// microadam_cpu_blocks.h.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "microadam_math.h"

namespace lit_microopt {
namespace microadam {
namespace {

// Step 3 on one block held as floats: the k entries of largest |a| (ties: lowest positions first), written in
// position order. The block is read as `rows` rows of `columns` elements. Any bound that k column maxima reach
// is at most the k-th largest |a| (those columns hold k distinct entries that reach it), so only columns whose
// maximum reaches the bound can hold a kept entry. The bound is the lower edge of the bin (of |a|'s bits) that holds
// the k-th largest column maximum: fine bins keep the candidates few. One vectorised pass over the block, a few
// over the column maxima, then work on about k * rows entries.
constexpr int kBinShift = 16;  // bins of |a|'s bits: the exponent and 7 bits of mantissa

struct SelectBuffers {
  explicit SelectBuffers(int64_t block_size)
      : column_max(block_size), magnitudes(block_size), flagged(block_size),
        candidates(block_size) {}
  std::vector<uint32_t> column_max, magnitudes;
  std::vector<int32_t> flagged, candidates;  // flagged columns and candidate positions, ascending
};

// |value| as bits: ordered like the magnitudes (NaN above infinity, as torch.topk ranks it).
inline uint32_t magnitude_bits(float value) { return float_bits(value) & 0x7fffffffu; }

LMO_CPU_INLINE void column_maxima(const float* values, int64_t length, int64_t columns, uint32_t* column_max) {
  std::fill(column_max, column_max + columns, 0u);
  for (int64_t base = 0; base < length; base += columns) {
    const float* row = values + base;
    const int64_t count = std::min(columns, length - base);
    for (int64_t column = 0; column < count; ++column) {
      const uint32_t magnitude = magnitude_bits(row[column]);
      column_max[column] = magnitude > column_max[column] ? magnitude : column_max[column];
    }
  }
}

// How many column maxima reach `bound` (a loop that vectorises).
LMO_CPU_INLINE int64_t count_reaching(const uint32_t* column_max, int64_t columns, uint32_t bound) {
  int32_t count = 0;
  for (int64_t column = 0; column < columns; ++column) count += column_max[column] >= bound;
  return count;
}

// The lower edge of the bin that holds the k-th largest column maximum (k <= columns): the largest bin edge that
// k column maxima reach. Searched down from the top bin, by steps that double and then by halving, with one
// counting pass per try: the bin is usually a few below the top.
LMO_CPU_INLINE uint32_t column_bound(const uint32_t* column_max, int64_t columns, int64_t k) {
  uint32_t top = 0;
  for (int64_t column = 0; column < columns; ++column) top = column_max[column] > top ? column_max[column] : top;
  const auto reached = [&](uint32_t bin) LMO_CPU_INLINE_LAMBDA {
    return count_reaching(column_max, columns, bin << kBinShift) >= k;
  };
  // Fewer than k maxima reach bin `failed` (at first the one above the top), k or more reach bin `found` (bin 0:
  // every column reaches it, and k <= columns).
  uint32_t failed = (top >> kBinShift) + 1, found = 0;
  for (uint32_t step = 1; failed > step; step *= 2) {
    if (reached(failed - step)) {
      found = failed - step;
      break;
    }
    failed -= step;
  }
  while (failed - found > 1) {
    const uint32_t middle = found + (failed - found) / 2;
    if (reached(middle)) {
      found = middle;
    } else {
      failed = middle;
    }
  }
  return found << kBinShift;
}

LMO_CPU_INLINE void select_block(const float* values, int64_t length, int64_t k, int16_t* indices, uint16_t* kept,
                  SelectBuffers& buffers) {
  if (k <= 0) return;
  // Up to 8 rows, while the flagged columns (about k of them) stay a small part of the block.
  const int64_t rows = std::clamp<int64_t>(length / (8 * k), 1, 8);
  const int64_t columns = (length + rows - 1) / rows;
  uint32_t* column_max = buffers.column_max.data();
  column_maxima(values, length, columns, column_max);
  const uint32_t bound = column_bound(column_max, columns, k);
  // Branch-free compaction (a write at every step, the count moves only when kept): whether an entry passes
  // is a coin toss the branch predictor would lose.
  int32_t* flagged = buffers.flagged.data();
  int64_t flagged_count = 0;
  for (int64_t column = 0; column < columns; ++column) {
    flagged[flagged_count] = static_cast<int32_t>(column);
    flagged_count += column_max[column] >= bound;
  }
  // Row by row over the flagged columns: positions come out ascending.
  int32_t* candidates = buffers.candidates.data();
  int64_t size = 0;  // at least k
  for (int64_t base = 0; base < length; base += columns) {
    const int64_t count = std::min(columns, length - base);
    for (int64_t i = 0; i < flagged_count && flagged[i] < count; ++i) {
      const int64_t position = base + flagged[i];
      candidates[size] = static_cast<int32_t>(position);
      size += magnitude_bits(values[position]) >= bound;
    }
  }
  // The k-th largest among the candidates (at least k of them) is the k-th largest of the block.
  uint32_t* magnitudes = buffers.magnitudes.data();
  for (int64_t i = 0; i < size; ++i) magnitudes[i] = magnitude_bits(values[candidates[i]]);
  std::nth_element(magnitudes, magnitudes + (size - k), magnitudes + size);
  const uint32_t threshold = magnitudes[size - k];
  int64_t ties = k;  // entries equal to the threshold that are kept, lowest positions first
  for (int64_t i = size - k; i < size; ++i) ties -= magnitudes[i] > threshold;
  int64_t column = 0;
  for (int64_t i = 0; i < size; ++i) {
    const int32_t position = candidates[i];
    const uint32_t magnitude = magnitude_bits(values[position]);
    if (magnitude > threshold || (magnitude == threshold && ties-- > 0)) {
      indices[column] = static_cast<int16_t>(position);
      kept[column] = float_to_bfloat16(values[position]);
      ++column;
    }
  }
}

}  // namespace
}  // namespace microadam
}  // namespace lit_microopt
