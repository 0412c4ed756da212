// dK and dV of the sparse branch on Hopper (sm_90a): the transposed formulation of dkdv_mma_kernel (sparse_dkdv.cuh)
// on wgmma, with the query tiles of the inverse LUT gathered by the TMA (cuda/common/lut_gather.cuh). One CTA per
// key block, one warpgroup per 64 of its keys (warp w owns keys 16 w .. 16 w + 15). K and V sit in shared memory in
// the panel layout as the A operands of S^T = K Q^T and dP^T = V dO^T; P^T and dS^T go from the accumulators to the
// A operands of dV += P^T dO and dK += dS^T Q. Two stages of (Q, dO) tiles, so that two CTAs fit per SM at
// bk = 64 and one CTA's element-wise work overlaps the other's products. The linear branch's share is added in
// registers by the same epilogue as dkdv_mma_kernel, on K and V reloaded in the mma.sync tile layout.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "core/static_switch.h"
#include "cuda/bwd/sparse_bwd.h"
#include "cuda/bwd/split_mma.cuh"
#include "cuda/bwd/tile_stage.cuh"
#include "cuda/common/cuda_status.h"
#include "cuda/common/lut_gather.cuh"
#include "cuda/common/mma_frag.cuh"
#include "cuda/common/softmax.cuh"
#include "cuda/common/wgmma.cuh"

namespace sla::cuda::bwd {
namespace {

constexpr int kTile = 64;  // query rows per gathered tile; a 128-row query block is two tiles

template <int D, int BK>
struct DkdvSm90Plan {
  static constexpr int kWarps = BK / 16, kThreads = BK * 2;
  static constexpr int kStages = 2;
  using Gather = LutGather<kStages, kTile, D, kWarps>;
  static constexpr int kKvBytes = BK * D * 2;
  // Byte offsets: K and V (panel layout), the (Q, dO) stages, the barriers. The epilogue overlays K and V in the
  // mma.sync layout and dH (split) on everything before the barriers.
  static constexpr int k = 0, v = kKvBytes, stages = 2 * kKvBytes;
  static constexpr int bars = stages + kStages * static_cast<int>(Gather::kStageBytes);
  static constexpr int kBytes = bars + 128;
  static constexpr int epi_k = 0, epi_v = kKvBytes, epi_dh = 2 * kKvBytes;
  static_assert(Gather::kBarrierBytes <= 128, "barrier region too small");
  static_assert(epi_dh + 2 * D * D * 2 <= bars, "the epilogue's K, V and dH do not fit");
};

template <class T, int D, int BK, FeatureMap F>
__global__ void __launch_bounds__(BK * 2, BK == 64 ? 2 : 1)
    dkdv_wgmma_kernel(const __grid_constant__ BwdParams p, const __grid_constant__ QdoTensorMaps maps) {
  using Plan = DkdvSm90Plan<D, BK>;
  using Tag = typename ElementTraits<T>::MmaTag;
  constexpr int kThreads = Plan::kThreads, kNt = D / 8;
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t base = smem_addr(smem);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int wg = warp / 4;  // warpgroup: keys 64 wg .. 64 wg + 63
  const int64_t b = blockIdx.z, h = blockIdx.y, j = blockIdx.x, bh = b * p.heads + h;
  const int64_t key0 = j * BK;
  const int valid_k = static_cast<int>(min64(BK, p.lk - key0));
  const int32_t* off = p.inv_offset + bh * (p.nk + 1);
  const int32_t* index = p.inv_index + bh * static_cast<int64_t>(p.nq) * p.t_crit;
  const int first = off[j];

  load_panel_tile_async<BK, D, kThreads>(base + Plan::k, reinterpret_cast<const uint16_t*>(row_ptr<T>(p.k, b, h, key0)),
                                         p.k.row_stride, valid_k, tid);
  load_panel_tile_async<BK, D, kThreads>(base + Plan::v, reinterpret_cast<const uint16_t*>(row_ptr<T>(p.v, b, h, key0)),
                                         p.v.row_stride, valid_k, tid);
  cp_async_commit();
  // The inverse LUT row of key block j: the query blocks that selected it.
  typename Plan::Gather gather{base + Plan::stages,
                               base + Plan::bars,
                               &maps.q,
                               &maps.d_o,
                               LutRow{index + first, off[j + 1] - first, p.nq},
                               p.bq,
                               static_cast<int>(h),
                               static_cast<int>(b)};
  gather.start(tid, Plan::kStages - 1);
  cp_async_wait<0>();
  fence_proxy_async_smem();  // K and V (cp.async) are read by wgmma
  __syncthreads();           // ... of every thread; the barriers are initialised

  // This warpgroup's 64 keys of K and V as the K-major A operands: k16 step ks is +32 bytes in panel ks / 4.
  const uint64_t k_desc = smem_desc_sw128(base + Plan::k + wg * 64 * kPanelRowBytes, 16, 1024);
  const uint64_t v_desc = smem_desc_sw128(base + Plan::v + wg * 64 * kPanelRowBytes, 16, 1024);
  const float scale_log2 = p.scale * kLog2e;
  float dk[kNt][4], dv[kNt][4];
#pragma unroll
  for (int n = 0; n < kNt; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.f;

  for (int seq = 0;; ++seq) {
    int q0 = -1;
    const int stage = gather.acquire(seq, tid, q0);
    if (q0 < 0) break;
    const uint32_t q_tile = gather.k_tile(stage), do_tile = gather.v_tile(stage);
    // LSE and Delta of this thread's query columns (rows past Lq: P = 0), loaded under the first products.
    float lse2[8][2], delta[8][2];
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int64_t row = static_cast<int64_t>(q0) + n * 8 + 2 * t4 + e;
        const bool ok = row < p.lq;
        lse2[n][e] = ok ? __ldg(p.lse + bh * p.lq + row) * kLog2e : INFINITY;
        delta[n][e] = ok ? __ldg(p.delta + bh * p.lq + row) : 0.f;
      }
    float s[8][4], dp[8][4];
    wgmma_fence();
    {
      const uint64_t q_desc = smem_desc_sw128(q_tile, 16, 1024), o_desc = smem_desc_sw128(do_tile, 16, 1024);
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        const uint32_t a_off = (ks >> 2) * BK * kPanelRowBytes + (ks & 3) * 32;
        const uint32_t b_off = (ks >> 2) * kTile * kPanelRowBytes + (ks & 3) * 32;
        wgmma_ss(s, desc_advance(k_desc, a_off), desc_advance(q_desc, b_off), ks > 0, Tag{});
      }
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        const uint32_t a_off = (ks >> 2) * BK * kPanelRowBytes + (ks & 3) * 32;
        const uint32_t b_off = (ks >> 2) * kTile * kPanelRowBytes + (ks & 3) * 32;
        wgmma_ss(dp, desc_advance(v_desc, a_off), desc_advance(o_desc, b_off), ks > 0, Tag{});
      }
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(s);
    fence_regs(dp);
    // P^T into s, dS^T into dp; then both as A fragments of the next products.
    uint32_t pa[kTile / 16][4], dsa[kTile / 16][4];
    const auto lse2_of = [&](int n, int e) {
      return lse2[n][e & 1];
    };
    const auto delta_of = [&](int n, int e) {
      return delta[n][e & 1];
    };
    p_ds_by_cols(s, dp, scale_log2, lse2_of, delta_of);
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      c_to_a<T>(pa[kk], s[2 * kk], s[2 * kk + 1]);
      c_to_a<T>(dsa[kk], dp[2 * kk], dp[2 * kk + 1]);
    }
    // dV += P^T dO, dK += dS^T Q: dO and Q as N-major B operands (rows = queries = the k dimension).
    wgmma_fence();
    {
      const uint64_t q_desc = smem_desc_sw128(q_tile, kTile * kPanelRowBytes, 1024);
      const uint64_t o_desc = smem_desc_sw128(do_tile, kTile * kPanelRowBytes, 1024);
#pragma unroll
      for (int kk = 0; kk < kTile / 16; ++kk) {
        wgmma_rs<true>(dv, pa[kk], desc_advance(o_desc, kk * 16 * kPanelRowBytes), true, Tag{});
        wgmma_rs<true>(dk, dsa[kk], desc_advance(q_desc, kk * 16 * kPanelRowBytes), true, Tag{});
      }
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(dv);
    fence_regs(dk);
    gather.release(seq, lane);
  }
  __syncthreads();  // every warp is done with K, V and the stages: the epilogue overlays them

#pragma unroll
  for (int n = 0; n < kNt; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] *= p.scale;

  // Linear branch in registers, as dkdv_mma_kernel: dv += phi(K) dH, dk += phi-backward of (V dH^T + dz).
  const int64_t group = p.complement ? bh * p.nk + j : bh;
  if (p.has_weight) {
    const uint32_t k_tile = base + Plan::epi_k, v_tile = base + Plan::epi_v;
    const uint32_t dh_hi = base + Plan::epi_dh, dh_lo = dh_hi + D * D * 2;
    load_tile_async<BK, D, kThreads>(k_tile, reinterpret_cast<const uint16_t*>(row_ptr<T>(p.k, b, h, key0)),
                                     p.k.row_stride, valid_k, tid);
    load_tile_async<BK, D, kThreads>(v_tile, reinterpret_cast<const uint16_t*>(row_ptr<T>(p.v, b, h, key0)),
                                     p.v.row_stride, valid_k, tid);
    const uint16_t* dh_src = p.dh_split + group * p.dh_key_stride;
    load_tile_async<D, D, kThreads>(dh_hi, dh_src, D, D, tid);
    load_tile_async<D, D, kThreads>(dh_lo, dh_src + D * D, D, D, tid);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    FeatureRowStats st[2];
    row_phi_stats<T, D, F>(st, smem + Plan::epi_k, warp * 16, lane);
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      float a[2][4];  // phi(K) for columns 16 ks .. 16 ks + 15: [column half][rows g (0, 1), g + 8 (2, 3)]
#pragma unroll
      for (int ch = 0; ch < 2; ++ch)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const float2 x = tile_pair<T, D>(smem + Plan::epi_k, warp * 16 + g + 8 * hf, ks * 16 + ch * 8 + 2 * t4);
          a[ch][2 * hf] = phi_forward<F>(x.x, st[hf]);
          a[ch][2 * hf + 1] = phi_forward<F>(x.y, st[hf]);
        }
      uint32_t ahi[4], alo[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
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
    store_acc_rows<T, kNt>(p.grad_v, b, h, key0, warp * 16, valid_k, dv, lane);
    float dphi[kNt][4];
#pragma unroll
    for (int n = 0; n < kNt; ++n) dphi[n][0] = dphi[n][1] = dphi[n][2] = dphi[n][3] = 0.f;
    warp_mma_t_split<T, D, D, false, kNt>(dphi, v_tile, warp * 16, dh_hi, dh_lo, D, 0, lane);
    const float* dz = p.dz_key + group * p.dz_key_stride;
#pragma unroll
    for (int n = 0; n < kNt; ++n) {
      const float2 zc = *reinterpret_cast<const float2*>(dz + n * 8 + 2 * t4);
      dphi[n][0] += zc.x, dphi[n][1] += zc.y, dphi[n][2] += zc.x, dphi[n][3] += zc.y;
    }
    add_phi_backward<T, D, F>(dk, dphi, smem + Plan::epi_k, warp * 16, lane);
  } else {
    store_acc_rows<T, kNt>(p.grad_v, b, h, key0, warp * 16, valid_k, dv, lane);
  }
  store_acc_rows<T, kNt>(p.grad_k, b, h, key0, warp * 16, valid_k, dk, lane);
}

template <class T, int D, int BK, FeatureMap F>
Status launch(const BwdParams& p, const QdoTensorMaps& maps, cudaStream_t stream) {
  const auto kernel = dkdv_wgmma_kernel<T, D, BK, F>;
  constexpr int kBytes = DkdvSm90Plan<D, BK>::kBytes;
  if (Status st = set_dynamic_smem(kernel, kBytes, "backward: dkdv_wgmma_kernel"); !st.ok()) return st;
  kernel<<<dim3(p.nk, static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch)), BK * 2, kBytes, stream>>>(p,
                                                                                                                 maps);
  return check_launch("backward: dkdv_wgmma_kernel");
}

}  // namespace

template <class T, int D>
Status launch_dkdv_wgmma(const BwdParams& p, const QdoTensorMaps& maps, FeatureMap fm, cudaStream_t stream) {
  return SLA_FEATURE_MAP_SWITCH(fm, F, [&]() -> Status {
    if (p.bk == 64) return launch<T, D, 64, F>(p, maps, stream);
    if (p.bk == 128) return launch<T, D, 128, F>(p, maps, stream);
    return Status::Unsupported("block_k: the CUDA backward supports 64 and 128, got " + std::to_string(p.bk));
  });
}

}  // namespace sla::cuda::bwd
