// Per-thread softmax row statistics of the forward mainloops and the quad (4-lane) reductions over the columns a
// row's values are spread across in the m16n8 accumulator layout.
#pragma once

namespace sla::cuda::fwd {

// Row statistics of one thread: rows g and g + 8 of the warp's 16 (g = lane / 4).
struct RowPair {
  float v[2];
};

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xFFFFFFFFu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xFFFFFFFFu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xFFFFFFFFu, x, 1);
  return x + __shfl_xor_sync(0xFFFFFFFFu, x, 2);
}

}  // namespace sla::cuda::fwd
