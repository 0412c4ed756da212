// The linear branch's share of dK and dV (docs/SPEC.md section 5), added in registers to the sparse pass's
// accumulators by both dK/dV kernels (sparse_dkdv.cuh on mma.sync, sparse_dkdv_sm90.cuh on wgmma): with dH staged
// split (hi, lo) in shared memory and the key block's K and V tiles in the mma.sync layout,
//   dv += phi(K) dH                         (dkdv_add_linear_dv)
//   dk += phi-backward of (V dH^T + dz)     (dkdv_add_linear_dk)
// Warp-level: each warp adds to the 16 key rows it owns, rows row16 .. row16 + 15 of the tiles.
#pragma once

#include <cstdint>

#include "cuda/bwd/split_mma.cuh"
#include "cuda/common/feature_map.cuh"
#include "cuda/common/mma_frag.cuh"
#include "cuda/common/numeric.cuh"

namespace sla::cuda::bwd {

// dv += phi(K) dH, phi(K) split into hi + lo on the fly, dH split in the tiles dh_hi / dh_lo (D x D, k-major).
template <class T, int D, FeatureMap F>
__device__ __forceinline__ void dkdv_add_linear_dv(float (&dv)[D / 8][4], const unsigned char* k_tile, uint32_t dh_hi,
                                                   uint32_t dh_lo, int row16, int lane) {
  const int g = lane / 4, t4 = lane % 4;
  FeatureRowStats st[2];
  row_phi_stats<T, D, F>(st, k_tile, row16, lane);
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    // A fragment of phi(K) for columns 16 ks .. 16 ks + 15: [column half][rows g (0, 1), g + 8 (2, 3)].
    float a[2][4];
#pragma unroll
    for (int ch = 0; ch < 2; ++ch)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const float2 x = tile_pair<T, D>(k_tile, row16 + g + 8 * hf, ks * 16 + ch * 8 + 2 * t4);
        a[ch][2 * hf] = phi_forward<F>(x.x, st[hf]);
        a[ch][2 * hf + 1] = phi_forward<F>(x.y, st[hf]);
      }
    uint32_t ahi[4], alo[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      // a0 = (g, cols 2t..), a1 = (g + 8, ..), a2 = (g, cols 8 + 2t..), a3 = (g + 8, 8 + ..)
      const int ch = q >> 1, hf = q & 1;
      const SplitBf16 sp = split_bf16x2(a[ch][2 * hf], a[ch][2 * hf + 1]);
      ahi[q] = sp.hi;
      alo[q] = sp.lo;
    }
#pragma unroll
    for (int np = 0; np < D / 16; ++np) {
      uint32_t bh4[4], bl4[4];
      load_b_kmajor<D>(bh4, dh_hi, ks * 16, np * 16, lane);
      load_b_kmajor<D>(bl4, dh_lo, ks * 16, np * 16, lane);
      mma_bf16(dv[2 * np], ahi, bh4[0], bh4[1]);
      mma_bf16(dv[2 * np + 1], ahi, bh4[2], bh4[3]);
      mma_bf16(dv[2 * np], ahi, bl4[0], bl4[1]);
      mma_bf16(dv[2 * np + 1], ahi, bl4[2], bl4[3]);
      mma_bf16(dv[2 * np], alo, bh4[0], bh4[1]);
      mma_bf16(dv[2 * np + 1], alo, bh4[2], bh4[3]);
    }
  }
}

// dk += phi-backward of (V dH^T + dz): V from v_tile (shared address), K from k_tile (generic pointer), dz the key
// group's fp32 column sums.
template <class T, int D, FeatureMap F>
__device__ __forceinline__ void dkdv_add_linear_dk(float (&dk)[D / 8][4], const unsigned char* k_tile, uint32_t v_tile,
                                                   uint32_t dh_hi, uint32_t dh_lo, const float* dz, int row16,
                                                   int lane) {
  constexpr int kNt = D / 8;
  const int t4 = lane % 4;
  float dphi[kNt][4];
#pragma unroll
  for (int n = 0; n < kNt; ++n) dphi[n][0] = dphi[n][1] = dphi[n][2] = dphi[n][3] = 0.f;
  // V dH^T: B[k = e][n = d] = dH[d][e], i.e. dH stored n-major.
  warp_mma_t_split<T, D, D, false, kNt>(dphi, v_tile, row16, dh_hi, dh_lo, D, 0, lane);
#pragma unroll
  for (int n = 0; n < kNt; ++n) {
    const float2 zc = *reinterpret_cast<const float2*>(dz + n * 8 + 2 * t4);
    dphi[n][0] += zc.x, dphi[n][1] += zc.y, dphi[n][2] += zc.x, dphi[n][3] += zc.y;
  }
  add_phi_backward<T, D, F>(dk, dphi, k_tile, row16, lane);
}

}  // namespace sla::cuda::bwd
