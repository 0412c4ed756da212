// Reductions over the quad (4 lanes) that holds one row of an m16n8 accumulator tile: thread lane owns columns
// 2 (lane % 4) and + 1 of every 8-column n-tile of rows lane / 4 and lane / 4 + 8, so a row's values are spread over
// lanes 4 g .. 4 g + 3. The same layout is mma.sync's C fragment and wgmma's per-warp slice of an m64 accumulator.
#pragma once

namespace sla::cuda {

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xFFFFFFFFu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xFFFFFFFFu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xFFFFFFFFu, x, 1);
  return x + __shfl_xor_sync(0xFFFFFFFFu, x, 2);
}

}  // namespace sla::cuda
