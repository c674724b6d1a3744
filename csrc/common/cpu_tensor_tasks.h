// The CPU kernels of the list ops (one call for a whole param group) run one at::parallel_for over the work units of
// every tensor of the list (Top-K blocks, chunks of rows or elements), laid end to end: small tensors then share
// the threads' wake-up instead of paying one each, and a large tensor is spread over every thread.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace lit_microopt {

// Calls visit(scratch, tensor, unit) for every unit of every tensor, tensor i having units[i] units (none is
// fine), in one at::parallel_for of grain 1. make_scratch() makes the buffers of each thread's share of the work.
template <typename MakeScratch, typename Visit>
void parallel_for_tensor_units(const std::vector<int64_t>& units, MakeScratch&& make_scratch, Visit&& visit) {
  std::vector<int64_t> first(units.size() + 1, 0);  // tensor i's units are tasks [first[i], first[i + 1])
  for (size_t i = 0; i < units.size(); ++i) first[i + 1] = first[i] + units[i];
  at::parallel_for(0, first.back(), 1, [&](int64_t begin, int64_t end) {
    auto scratch = make_scratch();
    size_t i = std::upper_bound(first.begin(), first.end(), begin) - first.begin() - 1;
    for (int64_t task = begin; task < end; ++task) {
      while (task >= first[i + 1]) ++i;  // skips tensors without units too
      visit(scratch, i, task - first[i]);
    }
  });
}

// The same without buffers: visit(tensor, unit).
template <typename Visit>
void parallel_for_tensor_units(const std::vector<int64_t>& units, Visit&& visit) {
  parallel_for_tensor_units(units, [] { return 0; }, [&](int, size_t tensor, int64_t unit) { visit(tensor, unit); });
}

}  // namespace lit_microopt
