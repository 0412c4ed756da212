// Fragment loads of mma.sync m16n8k16 operands from swizzled b16 tiles (the layout of cuda/common/tile_io.cuh), the
// products on them, and the C -> A re-packing that lets a probability tile computed by one product feed the next.
// The one set of fragment helpers every mma.sync kernel uses (forward, backward, block map, selection products);
// cuda/common/ptx.cuh has the instructions themselves and the fragment layouts.
//
// Tiles are row-major in shared memory, kCols b16 elements (kCols / 8 16-byte chunks) a row; the suffix says how the
// operand lies in the tile: A from X[m][k] (load_a) or X[k][m] (load_a_kmajor), B from Y[n][k] (load_b_nmajor) or
// Z[k][n] (load_b_kmajor). Row and column offsets are elements, the column ones multiples of 8.
#pragma once

#include <cstdint>

#include "cuda/common/numeric.cuh"
#include "cuda/common/ptx.cuh"
#include "cuda/common/tile_io.cuh"

namespace sla::cuda {

// A fragment (16 x 16) at (row0, col0) of a row-major tile X[row][col] with kCols columns.
template <int kCols>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], uint32_t tile, int row0, int col0, int lane) {
  const int row = row0 + (lane % 8) + 8 * ((lane / 8) % 2);
  const int col = col0 + 8 * (lane / 16);
  ldmatrix_x4(a, tile + swizzle<kCols / 8>(row, col / 8));
}

// A fragment from a tile stored k-major, X[k][m] (the transpose of the A operand), e.g. phi(K) for phi(K)^T V.
template <int kCols>
__device__ __forceinline__ void load_a_kmajor(uint32_t (&a)[4], uint32_t tile, int k0, int m0, int lane) {
  const int row = k0 + (lane % 8) + 8 * (lane / 16);
  const int col = m0 + 8 * ((lane / 8) % 2);
  ldmatrix_x4_trans(a, tile + swizzle<kCols / 8>(row, col / 8));
}

// B fragments of two n-tiles (n0..n0+7 -> b[0], b[1]; n0+8..n0+15 -> b[2], b[3]) for k in [k0, k0 + 16), from a tile
// stored n-major, Y[n][k] (e.g. K[key][d] as the B operand of Q K^T).
template <int kCols>
__device__ __forceinline__ void load_b_nmajor(uint32_t (&b)[4], uint32_t tile, int n0, int k0, int lane) {
  const int row = n0 + (lane % 8) + 8 * (lane / 16);
  const int col = k0 + 8 * ((lane / 8) % 2);
  ldmatrix_x4(b, tile + swizzle<kCols / 8>(row, col / 8));
}

// The same two n-tiles from a tile stored k-major, Z[k][n] (e.g. V for P V, or K[key][d] as the B operand of dS K).
template <int kCols>
__device__ __forceinline__ void load_b_kmajor(uint32_t (&b)[4], uint32_t tile, int k0, int n0, int lane) {
  const int row = k0 + (lane % 8) + 8 * ((lane / 8) % 2);
  const int col = n0 + 8 * (lane / 16);
  ldmatrix_x4_trans(b, tile + swizzle<kCols / 8>(row, col / 8));
}

// The same loads as load_a, load_a_kmajor and load_b_kmajor, with the lane's row and chunk written as bit
// operations and the tile's width in chunks: the forward's epilogue and state kernels use these. Where a kernel uses
// one or the other, ptxas schedules it differently (up to 40 instructions in a forward kernel, 220 in dq_mma_kernel),
// so they become one form once a GPU has timed it.
template <int kChunks>
__device__ __forceinline__ void ldsm_a(uint32_t (&r)[4], uint32_t tile, int m0, int k0, int lane) {
  ldmatrix_x4(r, tile + swizzle<kChunks>(m0 + (lane & 15), (k0 >> 3) + (lane >> 4)));
}
template <int kChunks>
__device__ __forceinline__ void ldsm_a_trans(uint32_t (&r)[4], uint32_t tile, int m0, int k0, int lane) {
  ldmatrix_x4_trans(r, tile + swizzle<kChunks>(k0 + (lane & 7) + ((lane >> 4) << 3), (m0 >> 3) + ((lane >> 3) & 1)));
}
template <int kChunks>
__device__ __forceinline__ void ldsm_b_kn(uint32_t (&r)[4], uint32_t tile, int n0, int k0, int lane) {
  ldmatrix_x4_trans(r, tile + swizzle<kChunks>(k0 + (lane & 7) + (((lane >> 3) & 1) << 3), (n0 >> 3) + (lane >> 4)));
}

// Lane parts of the addresses above, for loops over many 16x16 blocks of one tile. In a tile whose base is aligned to
// its row size (kChunks * 16 bytes), block (rows r0.., chunks 2c, 2c + 1) with r0 a multiple of 16 sits at
// (base + lane_part + r0 * row_bytes) ^ (c << 5): the swizzle XOR then touches only the chunk bits, so a loop keeps
// one address register per operand instead of one per block.
template <int kChunks>
struct LdsmLane {
  static constexpr int kRowBytes = kChunks * 16;
  static __device__ __forceinline__ uint32_t a(int lane) {  // as load_a
    const int row = lane & 15;
    return static_cast<uint32_t>(row * kRowBytes + (((lane >> 4) ^ (row & 7)) << 4));
  }
  static __device__ __forceinline__ uint32_t b_nk(int lane) {  // as load_b_nmajor
    const int row = (lane & 7) + ((lane >> 4) << 3);
    return static_cast<uint32_t>(row * kRowBytes + ((((lane >> 3) & 1) ^ (lane & 7)) << 4));
  }
  static __device__ __forceinline__ uint32_t b_kn(int lane) {  // as load_b_kmajor
    const int row = (lane & 7) + (((lane >> 3) & 1) << 3);
    return static_cast<uint32_t>(row * kRowBytes + (((lane >> 4) ^ (lane & 7)) << 4));
  }
};

// c += a * [b0, b1] in the element type T's tensor-core flavour (bf16 or fp16 inputs, fp32 accumulation).
template <class T>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const uint32_t b[2] = {b0, b1};
  mma_16816(c, a, b, typename ElementTraits<T>::MmaTag{});
}

// The same with bf16 operands whatever the input type (the split hi/lo products of split_mma.cuh).
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const uint32_t b[2] = {b0, b1};
  mma_16816(c, a, b, Bf16Tag{});
}

// A fragment for k-step kk of the next product from the fp32 C fragments of n-tiles 2 kk and 2 kk + 1.
template <class T>
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = ElementTraits<T>::pack2(c0[0], c0[1]);
  a[1] = ElementTraits<T>::pack2(c0[2], c0[3]);
  a[2] = ElementTraits<T>::pack2(c1[0], c1[1]);
  a[3] = ElementTraits<T>::pack2(c1[2], c1[3]);
}

}  // namespace sla::cuda
