// Shared-memory tiles of b16 elements for the mma.sync kernels: an XOR swizzle that keeps ldmatrix free of bank
// conflicts, and cp.async loads of a row tile from a strided (B, H, L, D) tensor with ragged tails zero-filled.
#pragma once

#include <cstdint>

#include "cuda/common/ptx.cuh"

namespace sla::cuda {

// Byte offset of 16-byte chunk `chunk` of row `row` in a tile whose rows are kChunks chunks long (kChunks * 8
// elements, kChunks >= 8). The chunk index is XORed with row % 8: the eight rows one ldmatrix phase reads then sit
// in eight different 16-byte bank groups.
template <int kChunks>
__device__ __forceinline__ uint32_t swizzle(int row, int chunk) {
  static_assert(kChunks >= 8, "the swizzle needs rows of at least 64 b16 elements");
  return static_cast<uint32_t>((row * kChunks + (chunk ^ (row & 7))) * 16);
}

// Issues cp.async for a kRows x kCols tile of b16 elements whose row r lives at gmem + r * row_stride (elements).
// Rows r >= valid_rows are zero-filled and never read. Does not commit the group.
template <int kRows, int kCols, int kThreads>
__device__ __forceinline__ void load_tile_async(uint32_t smem, const uint16_t* gmem, int64_t row_stride, int valid_rows,
                                                int tid) {
  constexpr int kChunks = kCols / 8;
  constexpr int kTotal = kRows * kChunks;
  static_assert(kTotal % kThreads == 0, "tile chunks must divide evenly among the threads");
#pragma unroll
  for (int it = 0; it < kTotal / kThreads; ++it) {
    const int idx = it * kThreads + tid;
    const int row = idx / kChunks, chunk = idx % kChunks;
    const bool valid = row < valid_rows;
    // A clamped address for the zero-filled rows: cp.async with src-size 0 reads nothing, but wants a legal pointer.
    const uint16_t* src = gmem + (valid ? row * row_stride : 0) + chunk * 8;
    cp_async_16(smem + swizzle<kChunks>(row, chunk), src, valid);
  }
}

}  // namespace sla::cuda
