// Fragment loads of mma.sync m16n8k16 operands from swizzled b16 tiles (cuda/common/tile_io.cuh layout), and the
// C -> A re-packing that lets a probability tile computed by one product feed the next. Fragment layouts are the
// ones listed in cuda/common/ptx.cuh.
#pragma once

#include <cstdint>

#include "cuda/common/numeric.cuh"
#include "cuda/common/ptx.cuh"
#include "cuda/common/tile_io.cuh"

namespace sla::cuda::bwd {

// A fragment (16 x 16) at (row0, col0) of a row-major tile X[row][col] with kCols columns.
template <int kCols>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], uint32_t tile, int row0, int col0, int lane) {
  const int row = row0 + (lane % 8) + 8 * ((lane / 8) % 2);
  const int col = col0 + 8 * (lane / 16);
  ldmatrix_x4(a, tile + swizzle<kCols / 8>(row, col / 8));
}

// B fragments of two n-tiles (n0..n0+7 -> b[0], b[1]; n0+8..n0+15 -> b[2], b[3]) for k in [k0, k0 + 16), from a tile
// stored n-major, Y[n][k] (e.g. K[key][d] as the B operand of Q K^T).
template <int kCols>
__device__ __forceinline__ void load_b_nmajor(uint32_t (&b)[4], uint32_t tile, int n0, int k0, int lane) {
  const int row = n0 + (lane % 8) + 8 * (lane / 16);
  const int col = k0 + 8 * ((lane / 8) % 2);
  ldmatrix_x4(b, tile + swizzle<kCols / 8>(row, col / 8));
}

// The same two n-tiles from a tile stored k-major, Z[k][n] (e.g. K[key][d] as the B operand of dS K).
template <int kCols>
__device__ __forceinline__ void load_b_kmajor(uint32_t (&b)[4], uint32_t tile, int k0, int n0, int lane) {
  const int row = k0 + (lane % 8) + 8 * ((lane / 8) % 2);
  const int col = n0 + 8 * (lane / 16);
  ldmatrix_x4_trans(b, tile + swizzle<kCols / 8>(row, col / 8));
}

template <class T>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const uint32_t b[2] = {b0, b1};
  mma_16816(c, a, b, typename ElementTraits<T>::MmaTag{});
}

// A fragment for k-step kk of the next product from the fp32 C fragments of n-tiles 2 kk and 2 kk + 1.
template <class T>
__device__ __forceinline__ void c_to_a(uint32_t (&a)[4], const float (&c0)[4], const float (&c1)[4]) {
  a[0] = ElementTraits<T>::pack2(c0[0], c0[1]);
  a[1] = ElementTraits<T>::pack2(c0[2], c0[3]);
  a[2] = ElementTraits<T>::pack2(c1[0], c1[1]);
  a[3] = ElementTraits<T>::pack2(c1[2], c1[3]);
}

}  // namespace sla::cuda::bwd
