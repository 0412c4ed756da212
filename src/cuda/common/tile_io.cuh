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
__device__ __forceinline__ void load_tile_async(uint32_t smem, const uint16_t* gmem, int64_t row_stride,
                                                int valid_rows, int tid) {
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

namespace sla::cuda {

// ldmatrix lane addresses for the four operand shapes of the m16n8k16 kernels. Tiles are swizzled rows of kChunks
// 16-byte chunks; `row0` and `col0` are element offsets (col0 a multiple of 8). Each call loads one x4 group.

// A (16 x 16) from a row-major [m][k] tile.
template <int kChunks>
__device__ __forceinline__ void ldsm_a(uint32_t (&r)[4], uint32_t tile, int m0, int k0, int lane) {
  ldmatrix_x4(r, tile + swizzle<kChunks>(m0 + (lane & 15), (k0 >> 3) + (lane >> 4)));
}
// A (16 x 16) from a [k][m] tile (A transposed in memory, e.g. phi(K) for phi(K)^T V).
template <int kChunks>
__device__ __forceinline__ void ldsm_a_trans(uint32_t (&r)[4], uint32_t tile, int m0, int k0, int lane) {
  ldmatrix_x4_trans(r, tile + swizzle<kChunks>(k0 + (lane & 7) + ((lane >> 4) << 3), (m0 >> 3) + ((lane >> 3) & 1)));
}
// B for two n-tiles (n0, n0 + 8) x k16 from a [k][n] tile (e.g. V for P V): r[0..1] = tile n0, r[2..3] = n0 + 8.
template <int kChunks>
__device__ __forceinline__ void ldsm_b_kn(uint32_t (&r)[4], uint32_t tile, int n0, int k0, int lane) {
  ldmatrix_x4_trans(r, tile + swizzle<kChunks>(k0 + (lane & 7) + (((lane >> 3) & 1) << 3), (n0 >> 3) + (lane >> 4)));
}

}  // namespace sla::cuda

namespace sla::cuda {

// Lane parts of the ldmatrix addresses above, for loops over many 16x16 blocks of one tile. In a tile whose base is
// aligned to its row size (kChunks * 16 bytes), block (rows r0.., chunks 2c, 2c + 1) with r0 a multiple of 16 sits
// at (base + lane_part + r0 * row_bytes) ^ (c << 5): the swizzle XOR then touches only the chunk bits, so a loop
// keeps one address register per operand instead of one per block.
template <int kChunks>
struct LdsmLane {
  static constexpr int kRowBytes = kChunks * 16;
  static __device__ __forceinline__ uint32_t a(int lane) {  // as ldsm_a
    const int row = lane & 15;
    return static_cast<uint32_t>(row * kRowBytes + (((lane >> 4) ^ (row & 7)) << 4));
  }
  // B for two n-tiles x k16 from an [n][k] tile (e.g. K for Q K^T): rows n0 + (lane & 7) + 8 (lane >> 4), chunk
  // (k0 >> 3) + ((lane >> 3) & 1).
  static __device__ __forceinline__ uint32_t b_nk(int lane) {
    const int row = (lane & 7) + ((lane >> 4) << 3);
    return static_cast<uint32_t>(row * kRowBytes + ((((lane >> 3) & 1) ^ (lane & 7)) << 4));
  }
  static __device__ __forceinline__ uint32_t b_kn(int lane) {  // as ldsm_b_kn
    const int row = (lane & 7) + (((lane >> 3) & 1) << 3);
    return static_cast<uint32_t>(row * kRowBytes + (((lane >> 4) ^ (lane & 7)) << 4));
  }
};

}  // namespace sla::cuda
