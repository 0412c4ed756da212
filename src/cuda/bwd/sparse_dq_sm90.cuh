// dQ of the sparse branch on Hopper (sm_90a): the forward's wgmma + TMA machinery (cuda/common/lut_gather.cuh,
// cuda/common/wgmma.cuh) applied to FlashAttention's dQ pass. One CTA per query block, one warpgroup per 64 of its
// rows (warp w owns rows 16 w .. 16 w + 15, as in dq_mma_kernel, whose linear epilogue this kernel shares). Q and
// dO stay in registers as the A operands of S = Q K^T and dP = dO V^T; dS = P (dP - Delta) goes from the
// accumulators to the A operand of dQ += dS K; K and V tiles of 64 keys are read by the tensor cores from the TMA's
// 128-byte-swizzled panels. Tile t's S and dP products run while dQ += dS_{t-1} K_{t-1} is still on the tensor
// cores, and dS_t is computed under it.
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

constexpr int kTile = 64;  // keys per gathered tile; a 128-key block is two tiles

template <int D, int BQ>
struct DqSm90Plan {
  static constexpr int kWarps = BQ / 16, kThreads = BQ * 2;
  static constexpr int kStages = 3;  // tile t (K, V), tile t - 1 (K for its dQ product) and one being gathered
  using Gather = LutGather<kStages, kTile, D, kWarps>;
  static constexpr int kRowTileBytes = BQ * D * 2;
  // Byte offsets: Q and dO tiles (cp.async layout, read again by the epilogue), the stages, the barriers.
  static constexpr int q = 0, d_o = kRowTileBytes, stages = 2 * kRowTileBytes;
  static constexpr int bars = stages + kStages * static_cast<int>(Gather::kStageBytes);
  static constexpr int kBytes = bars + 128;
  static_assert(Gather::kBarrierBytes <= 128, "barrier region too small");
  static_assert(kStages * Gather::kStageBytes >= 2 * D * D * 2, "the epilogue's G does not fit over the stages");
  static_assert(stages % 1024 == 0, "the stages must be 1024-byte aligned for the 128-byte swizzle");
};

// S = Q K^T and dP = dO V^T for one tile (64 x 64 per warpgroup), one commit group. K and V are K-major B operands:
// k16 step ks is +32 bytes in panel ks / 4.
template <class T, int D>
__device__ __forceinline__ void issue_s_dp(float (&s)[8][4], float (&dp)[8][4], uint32_t (&qa)[D / 16][4],
                                           uint32_t (&doa)[D / 16][4], uint32_t k_tile, uint32_t v_tile) {
  using Tag = typename ElementTraits<T>::MmaTag;
  const uint64_t k_desc = smem_desc_sw128(k_tile, 16, 1024), v_desc = smem_desc_sw128(v_tile, 16, 1024);
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    const uint32_t off = (ks >> 2) * kTile * kPanelRowBytes + (ks & 3) * 32;
    wgmma_rs<false>(s, qa[ks], desc_advance(k_desc, off), ks > 0, Tag{});
  }
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    const uint32_t off = (ks >> 2) * kTile * kPanelRowBytes + (ks & 3) * 32;
    wgmma_rs<false>(dp, doa[ks], desc_advance(v_desc, off), ks > 0, Tag{});
  }
  wgmma_commit();
}

// dQ += dS K for one tile: K as the N-major B operand (rows = keys = the k dimension), panels kTile rows apart.
template <class T, int D>
__device__ __forceinline__ void issue_dq(float (&dq)[D / 8][4], uint32_t (&dsa)[kTile / 16][4], uint32_t k_tile) {
  using Tag = typename ElementTraits<T>::MmaTag;
  const uint64_t desc = smem_desc_sw128(k_tile, kTile * kPanelRowBytes, 1024);
#pragma unroll
  for (int kk = 0; kk < kTile / 16; ++kk)
    wgmma_rs<true>(dq, dsa[kk], desc_advance(desc, kk * 16 * kPanelRowBytes), true, Tag{});
  wgmma_commit();
}

template <class T, int D, int BQ, FeatureMap F>
__global__ void __launch_bounds__(BQ * 2, 1)
    dq_wgmma_kernel(const __grid_constant__ BwdParams p, const __grid_constant__ KvTensorMaps maps) {
  using Plan = DqSm90Plan<D, BQ>;
  constexpr int kThreads = Plan::kThreads, kNt = D / 8;
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t base = smem_addr(smem);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int64_t b = blockIdx.z, h = blockIdx.y, i = blockIdx.x, bh = b * p.heads + h;
  const int64_t row0 = i * BQ;
  const int valid_q = static_cast<int>(min64(BQ, p.lq - row0));
  const int64_t part = bh * p.nq + i;
  const int crit = LutRow::clamp_count(p.lut_count[part], p.t_crit);

  load_tile_async<BQ, D, kThreads>(base + Plan::q, reinterpret_cast<const uint16_t*>(row_ptr<T>(p.q, b, h, row0)),
                                   p.q.row_stride, valid_q, tid);
  load_tile_async<BQ, D, kThreads>(base + Plan::d_o, reinterpret_cast<const uint16_t*>(row_ptr<T>(p.d_o, b, h, row0)),
                                   p.d_o.row_stride, valid_q, tid);
  cp_async_commit();
  typename Plan::Gather gather{
      base + Plan::stages, base + Plan::bars,  &maps.k, &maps.v, LutRow{p.lut + part * p.t_crit, crit, p.nk}, p.bk,
      static_cast<int>(h), static_cast<int>(b)};
  gather.start(tid, Plan::kStages - 2);

  // Rows g and g + 8 of this warp's 16. Rows past Lq get P = 0 (their dq is never stored).
  const float scale_log2 = p.scale * kLog2e;
  float lse2[2], delta[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int r = warp * 16 + g + 8 * hf;
    const bool ok = r < valid_q;
    lse2[hf] = ok ? p.lse[bh * p.lq + row0 + r] * kLog2e : INFINITY;
    delta[hf] = ok ? p.delta[bh * p.lq + row0 + r] : 0.f;
  }
  cp_async_wait<0>();
  __syncthreads();  // Q and dO have landed, the barriers are initialised
  uint32_t qa[D / 16][4], doa[D / 16][4];
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    load_a<D>(qa[ks], base + Plan::q, warp * 16, ks * 16, lane);
    load_a<D>(doa[ks], base + Plan::d_o, warp * 16, ks * 16, lane);
  }

  float dq[kNt][4];
#pragma unroll
  for (int n = 0; n < kNt; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;

  // The first tile is peeled off so that no wgmma sits under a branch (ptxas serialises those).
  int key0 = -1;
  int stage = gather.acquire(0, tid, key0);
  if (key0 >= 0) {
    float s[8][4], dp[8][4];
    uint32_t dsa[kTile / 16][4];
    wgmma_fence();
    issue_s_dp<T, D>(s, dp, qa, doa, gather.k_tile(stage), gather.v_tile(stage));
    wgmma_wait<0>();
    fence_regs(s);
    fence_regs(dp);
    // dS = P (dP - Delta) into s; keys past Lk get P = 0.
    ds_by_rows(s, dp, scale_log2, lse2, delta, p.lk - key0, t4);
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) c_to_a<T>(dsa[kk], s[2 * kk], s[2 * kk + 1]);
    uint32_t k_prev = gather.k_tile(stage);
    int seq = 1;
    while (true) {
      stage = gather.acquire(seq, tid, key0);
      if (key0 < 0) break;
      // Separate wgmma pipeline stages (fence ... commit) for the two groups: dS is written after wait<1> while
      // only the dQ stage is open.
      wgmma_fence();
      issue_s_dp<T, D>(s, dp, qa, doa, gather.k_tile(stage), gather.v_tile(stage));
      wgmma_fence();
      issue_dq<T, D>(dq, dsa, k_prev);
      wgmma_wait<1>();  // groups retire in order: S and dP are done, dQ may still run
      fence_regs(s);
      fence_regs(dp);
      ds_by_rows(s, dp, scale_log2, lse2, delta, p.lk - key0, t4);
      wgmma_wait<0>();  // dQ of the previous tile is done: its A registers and K tile are free
      fence_regs(dq);
      gather.release(seq - 1, lane);
#pragma unroll
      for (int kk = 0; kk < kTile / 16; ++kk) c_to_a<T>(dsa[kk], s[2 * kk], s[2 * kk + 1]);
      k_prev = gather.k_tile(stage);
      ++seq;
    }
    wgmma_fence();
    issue_dq<T, D>(dq, dsa, k_prev);
    wgmma_wait<0>();
    fence_regs(dq);
  }
  __syncthreads();  // every warp is done with the stages: G may be staged over them

  // Epilogue in registers, as dq_mma_kernel: dq = s * (sum dS K) + phi-backward of da, da = (dO G - D_r z) / n_r
  // (docs/SPEC.md 5), with u = dO G on the tensor cores.
#pragma unroll
  for (int n = 0; n < kNt; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[n][e] *= p.scale;
  if (p.has_weight) {
    const uint32_t g_tile = base + Plan::stages;
    const uint16_t* g_src = p.g_split + (p.complement ? part : bh) * 2 * D * D;
    load_tile_async<D, D, kThreads>(g_tile, g_src, D, D, tid);
    load_tile_async<D, D, kThreads>(g_tile + D * D * 2, g_src + D * D, D, D, tid);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    float da[kNt][4];
#pragma unroll
    for (int n = 0; n < kNt; ++n) da[n][0] = da[n][1] = da[n][2] = da[n][3] = 0.f;
    warp_mma_t_split<T, D, D, true, kNt>(da, base + Plan::d_o, warp * 16, g_tile, g_tile + D * D * 2, D, 0, lane);
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
    add_phi_backward<T, D, F>(dq, da, smem + Plan::q, warp * 16, lane);
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

template <class T, int D, int BQ, FeatureMap F>
Status launch(const BwdParams& p, const KvTensorMaps& maps, cudaStream_t stream) {
  const auto kernel = dq_wgmma_kernel<T, D, BQ, F>;
  constexpr int kBytes = DqSm90Plan<D, BQ>::kBytes;
  if (Status st = set_dynamic_smem(kernel, kBytes, "backward: dq_wgmma_kernel"); !st.ok()) return st;
  kernel<<<dim3(static_cast<unsigned>(p.nq), static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch)), BQ * 2,
           kBytes, stream>>>(p, maps);
  return check_launch("backward: dq_wgmma_kernel");
}

}  // namespace

template <class T, int D>
Status launch_dq_wgmma(const BwdParams& p, const KvTensorMaps& maps, FeatureMap fm, cudaStream_t stream) {
  return SLA_FEATURE_MAP_SWITCH(fm, F, [&]() -> Status {
    if (p.bq == 64) return launch<T, D, 64, F>(p, maps, stream);
    if (p.bq == 128) return launch<T, D, 128, F>(p, maps, stream);
    return Status::Unsupported("block_q: the CUDA backward supports 64 and 128, got " + std::to_string(p.bq));
  });
}

}  // namespace sla::cuda::bwd
