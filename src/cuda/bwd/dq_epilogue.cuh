// The epilogue of both dQ kernels (dq_mma_kernel in sparse_dq.cu, dq_wgmma_kernel in sparse_dq_sm90.cu), in
// registers: dq = s * (sum dS K) + phi-backward of da, da = (dO G - D_r z) / n_r (docs/SPEC.md 5), with u = dO G on
// the tensor cores (G split, staged over shared memory the main loop no longer needs), then dq stored. The two
// kernels differ only in where their tiles lie in shared memory.
#pragma once

#include <cstdint>

#include "cuda/bwd/bwd_params.h"
#include "cuda/bwd/split_mma.cuh"
#include "cuda/bwd/tile_stage.cuh"
#include "cuda/common/feature_map.cuh"
#include "cuda/common/numeric.cuh"
#include "cuda/common/ptx.cuh"
#include "cuda/common/tile_io.cuh"

namespace sla::cuda::bwd {

// Where the epilogue finds its tiles: byte offsets from the start of the kernel's dynamic shared memory.
struct DqEpilogueSmem {
  int q;    // the Q tile of the CTA's rows (phi-backward reads q)
  int d_o;  // the dO tile (the A operand of dO G)
  int g;    // room for G split (2 D x D b16), free once the main loop is done
};

// dq: the warp's accumulators of sum dS K (rows 16 warp .. 16 warp + 15 of the CTA, C fragments). The caller has
// waited for its own copies and synchronised the CTA, so that the G tiles may be overwritten.
template <class T, int D, int kThreads, FeatureMap F>
__device__ __forceinline__ void dq_epilogue(float (&dq)[D / 8][4], const BwdParams& p, unsigned char* smem,
                                            DqEpilogueSmem at, int64_t b, int64_t h, int64_t bh, int64_t part,
                                            int64_t row0, int valid_q, int tid) {
  constexpr int kNt = D / 8;
  const uint32_t base = smem_addr(smem);
  const int warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int n = 0; n < kNt; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[n][e] *= p.scale;
  if (p.has_weight) {
    const uint32_t g_tile = base + at.g;
    const uint16_t* g_src = p.g_split + (p.complement ? part : bh) * 2 * D * D;
    load_tile_async<D, D, kThreads>(g_tile, g_src, D, D, tid);
    load_tile_async<D, D, kThreads>(g_tile + D * D * 2, g_src + D * D, D, D, tid);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    float da[kNt][4];
#pragma unroll
    for (int n = 0; n < kNt; ++n) da[n][0] = da[n][1] = da[n][2] = da[n][3] = 0.f;
    warp_mma_t_split<T, D, D, true, kNt>(da, base + at.d_o, warp * 16, g_tile, g_tile + D * D * 2, D, 0, lane);
    const float* z = p.complement ? p.grp_z + part * p.grp_stride : p.lin_z + bh * D;
    float d_r[2], inv_n[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = warp * 16 + g + 8 * hf;
      const bool ok = r < valid_q;
      d_r[hf] = ok ? p.d_lin[bh * p.lq + row0 + r] : 0.f;
      inv_n[hf] = ok ? p.inv_n[bh * p.lq + row0 + r] : 0.f;
    }
#pragma unroll
    for (int n = 0; n < kNt; ++n) {
      const float2 zc = *reinterpret_cast<const float2*>(z + n * 8 + 2 * t4);
#pragma unroll
      for (int e = 0; e < 4; ++e) da[n][e] = (da[n][e] - d_r[e >> 1] * (e & 1 ? zc.y : zc.x)) * inv_n[e >> 1];
    }
    add_phi_backward<T, D, F>(dq, da, smem + at.q, warp * 16, lane);
  }
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int r = warp * 16 + g + 8 * hf;
    if (r >= valid_q) continue;
    T* dst = row_ptr_mut<T>(p.grad_q, b, h, row0 + r);
#pragma unroll
    for (int n = 0; n < kNt; ++n)
      *reinterpret_cast<uint32_t*>(dst + n * 8 + 2 * t4) = ElementTraits<T>::pack2(dq[n][2 * hf], dq[n][2 * hf + 1]);
  }
}

}  // namespace sla::cuda::bwd
