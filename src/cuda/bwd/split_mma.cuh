// Tensor-core products with fp32 operands carried as an unevaluated sum hi + lo of two bf16 values (~16 significant
// bits; see SplitBf16 in cuda/common/numeric.cuh), for the linear branch's states (G, dH, A = phi/n, phi(K)) whose
// digits matter. Products run as hi*hi' + hi*lo' + lo*hi' with fp32 accumulation. Inputs of dtype T enter exactly:
// a bf16 value is its own hi (lo = 0, the pass is skipped), an fp16 value is split once more (11 bits fit in 16).
//
// Split matrices live in global memory as two row-major bf16 arrays, hi then lo (split_matrix_* below), and are
// staged into the swizzled tiles of cuda/common/tile_io.cuh with cp.async.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "cuda/common/feature_map.cuh"
#include "cuda/common/mma_frag.cuh"
#include "cuda/common/quad_reduce.cuh"

namespace sla::cuda::bwd {

// Whether values of T are exactly representable as one bf16 (then their lo part is zero).
template <class T>
constexpr bool kExactInBf16 = std::is_same_v<T, __nv_bfloat16>;

// Registers of T pairs -> bf16 hi (and lo, for fp16) pairs.
template <class T, int N>
__device__ __forceinline__ void split_regs(const uint32_t (&x)[N], uint32_t (&hi)[N], uint32_t (&lo)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if constexpr (kExactInBf16<T>) {
      hi[i] = x[i];
      lo[i] = 0u;
    } else {
      const float2 f = ElementTraits<T>::unpack2(x[i]);
      const SplitBf16 s = split_bf16x2(f.x, f.y);
      hi[i] = s.hi;
      lo[i] = s.lo;
    }
  }
}

// c (16 x 8 n-tiles) += A (16 x K, dtype T, row-major tile at rows row0) * B (split, K x N), for n-tiles
// [n_first, n_first + kNt). B is stored k-major (B[k][n], kBKMajor) or n-major (B^T[n][k]).
template <class T, int kACols, int kBCols, bool kBKMajor, int kNt>
__device__ __forceinline__ void warp_mma_t_split(float (&c)[kNt][4], uint32_t a_tile, int row0, uint32_t bhi_tile,
                                                 uint32_t blo_tile, int k_len, int n_first, int lane) {
  for (int k0 = 0; k0 < k_len; k0 += 16) {
    uint32_t a[4], ahi[4], alo[4];
    load_a<kACols>(a, a_tile, row0, k0, lane);
    split_regs<T>(a, ahi, alo);
#pragma unroll
    for (int np = 0; np < kNt / 2; ++np) {
      uint32_t bh[4], bl[4];
      const int n0 = n_first + np * 16;
      if constexpr (kBKMajor) {
        load_b_kmajor<kBCols>(bh, bhi_tile, k0, n0, lane);
        load_b_kmajor<kBCols>(bl, blo_tile, k0, n0, lane);
      } else {
        load_b_nmajor<kBCols>(bh, bhi_tile, n0, k0, lane);
        load_b_nmajor<kBCols>(bl, blo_tile, n0, k0, lane);
      }
      mma_bf16(c[2 * np], ahi, bh[0], bh[1]);
      mma_bf16(c[2 * np + 1], ahi, bh[2], bh[3]);
      mma_bf16(c[2 * np], ahi, bl[0], bl[1]);
      mma_bf16(c[2 * np + 1], ahi, bl[2], bl[3]);
      if constexpr (!kExactInBf16<T>) {
        mma_bf16(c[2 * np], alo, bh[0], bh[1]);
        mma_bf16(c[2 * np + 1], alo, bh[2], bh[3]);
      }
    }
  }
}

// Element (row, col) pair (col even) of a swizzled b16 tile with kCols columns, as two floats.
template <class T, int kCols>
__device__ __forceinline__ float2 tile_pair(const unsigned char* tile, int row, int col) {
  const uint32_t off = swizzle<kCols / 8>(row, col / 8) + (col % 8) * 2;
  return ElementTraits<T>::unpack2(*reinterpret_cast<const uint32_t*>(tile + off));
}

// phi statistics of rows g (hf = 0) and g + 8 (hf = 1) of a 16 x D tile held in C-fragment positions, reading the
// inputs x from a swizzled T tile: every thread of the quad ends with the same values.
template <class T, int D, FeatureMap F>
__device__ __forceinline__ void row_phi_stats(FeatureRowStats (&st)[2], const unsigned char* tile, int row0, int lane) {
  if constexpr (F == FeatureMap::softmax) {
    const int g = lane / 4, t4 = lane % 4;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float m = -INFINITY;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const float2 x = tile_pair<T, D>(tile, row0 + g + 8 * hf, n * 8 + 2 * t4);
        m = fmaxf(m, fmaxf(x.x, x.y));
      }
      m = quad_max(m);
      float s = 0.f;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const float2 x = tile_pair<T, D>(tile, row0 + g + 8 * hf, n * 8 + 2 * t4);
        s += __expf(x.x - m) + __expf(x.y - m);
      }
      st[hf].max = m;
      st[hf].inv_sum = 1.f / quad_sum(s);
    }
  }
}

// acc (16 x D C fragments) += phi-backward of da (same positions), x and phi(x) read back from the T tile.
template <class T, int D, FeatureMap F>
__device__ __forceinline__ void add_phi_backward(float (&acc)[D / 8][4], const float (&da)[D / 8][4],
                                                 const unsigned char* tile, int row0, int lane) {
  const int g = lane / 4, t4 = lane % 4;
  FeatureRowStats st[2];
  row_phi_stats<T, D, F>(st, tile, row0, lane);
  float dot[2] = {0.f, 0.f};
  if constexpr (F == FeatureMap::softmax) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const float2 x = tile_pair<T, D>(tile, row0 + g + 8 * hf, n * 8 + 2 * t4);
        dot[hf] += da[n][2 * hf] * phi_forward<F>(x.x, st[hf]) + da[n][2 * hf + 1] * phi_forward<F>(x.y, st[hf]);
      }
    dot[0] = quad_sum(dot[0]);
    dot[1] = quad_sum(dot[1]);
  }
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float2 x = tile_pair<T, D>(tile, row0 + g + 8 * hf, n * 8 + 2 * t4);
      acc[n][2 * hf] += phi_backward<F>(x.x, phi_forward<F>(x.x, st[hf]), da[n][2 * hf], dot[hf]);
      acc[n][2 * hf + 1] += phi_backward<F>(x.y, phi_forward<F>(x.y, st[hf]), da[n][2 * hf + 1], dot[hf]);
    }
}

}  // namespace sla::cuda::bwd
