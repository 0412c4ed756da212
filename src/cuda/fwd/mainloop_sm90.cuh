// The Hopper (sm_90a) sparse mainloop of the forward kernel: the same contract as MmaMainloop (mainloop_sm80.cuh)
// with the products on wgmma. One warpgroup per 64 query rows (warp w of the CTA owns rows 16 w .. 16 w + 15, the
// layout the epilogue expects with kMTiles = 1); Q stays in registers as the A operand of S = Q K^T, P goes from the
// S accumulators to the A operand of O += P V without touching shared memory, and K_j, V_j are read by the tensor
// cores straight from shared memory (panel layout, cuda/common/wgmma.cuh), so the loop issues no ldmatrix at all.
// K/V blocks of the LUT row are gathered by the TMA into kStages stages (cuda/common/lut_gather.cuh): per-stage
// mbarriers instead of CTA-wide barriers, so the two warpgroups are never tied together inside the loop.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/lut_gather.cuh"
#include "cuda/common/lut_row.cuh"
#include "cuda/common/mask.cuh"
#include "cuda/common/mma_frag.cuh"
#include "cuda/common/numeric.cuh"
#include "cuda/common/params.h"
#include "cuda/common/ptx.cuh"
#include "cuda/common/softmax.cuh"
#include "cuda/common/tile_io.cuh"
#include "cuda/common/wgmma.cuh"

namespace sla::cuda::fwd {

template <class Traits>
struct WgmmaMainloop {
  using T = typename Traits::Element;
  using Tag = typename ElementTraits<T>::MmaTag;
  static constexpr int kD = Traits::kHeadDim, kBK = Traits::kBlockK, kChunks = Traits::kChunks;
  static constexpr int kStages = Traits::kStages;
  static constexpr int kM = 1;
  static_assert(Traits::kMTiles == 1, "one m-tile (16 rows) per warp: the wgmma accumulator layout");
  static constexpr uint32_t kKBytes = Traits::kKBytes;  // one K (or V) block in the panel layout

  float o[kM][Traits::kNTilesO][4];
  OnlineSoftmax<kM> softmax;

  // ---- the pieces of one LUT block ----

  // Issues S = Q K^T (64 x kBK per warpgroup) and commits it. K-major B: k16 step ks is +32 bytes in panel ks / 4.
  static __device__ __forceinline__ void issue_scores(float (&s)[Traits::kNTilesS][4], uint32_t (&qa)[kD / 16][4],
                                                      uint32_t k_tile) {
    const uint64_t desc = smem_desc_sw128(k_tile, 16, 1024);
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
      const uint32_t off = (ks >> 2) * kBK * kPanelRowBytes + (ks & 3) * 32;
      wgmma_rs<false>(s, qa[ks], desc_advance(desc, off), ks > 0, Tag{});
    }
    wgmma_commit();
  }
  // Issues O += P V and commits it. N-major B (V): k16 step kk is +16 rows of every panel; panels kBK rows apart.
  __device__ __forceinline__ void issue_pv(uint32_t (&pa)[kBK / 16][4], uint32_t v_tile) {
    const uint64_t desc = smem_desc_sw128(v_tile, kBK * kPanelRowBytes, 1024);
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      wgmma_rs<true>(o[0], pa[kk], desc_advance(desc, kk * 16 * kPanelRowBytes), true, Tag{});
    }
    wgmma_commit();
  }
  // Two S n-tiles form one A fragment of P V.
  static __device__ __forceinline__ void pack_p(const float (&s)[Traits::kNTilesS][4], uint32_t (&pa)[kBK / 16][4]) {
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      pa[kk][0] = ElementTraits<T>::pack2(s[2 * kk][0], s[2 * kk][1]);
      pa[kk][1] = ElementTraits<T>::pack2(s[2 * kk][2], s[2 * kk][3]);
      pa[kk][2] = ElementTraits<T>::pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[kk][3] = ElementTraits<T>::pack2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
    }
  }

  // ---- the loop ----

  // On entry the Q tile load has been issued and committed; after_q() runs once Q has landed (it may issue and
  // commit more cp.async groups for the epilogue). On exit every wgmma is done and the stages are free.
  //
  // Iteration t computes S_t = Q K_t^T while O += P_{t-1} V_{t-1} runs on the tensor cores, then the softmax of S_t
  // overlaps the tail of that product (FlashAttention-3's intra-warpgroup pipelining). Stages hold K_t, V_{t-1}
  // and the kAhead blocks being gathered, so blocks are issued kStages - 2 ahead.
  template <class AfterQ>
  __device__ __forceinline__ void run(const ForwardParams& p, const LutRow& row, const T*, const T*, uint32_t q_tile,
                                      uint32_t stages, int warp, int lane, int tid, AfterQ&& after_q) {
    constexpr int kAhead = kStages - 2;
    static_assert(kAhead >= 1, "the pipelined loop needs at least three stages");
#pragma unroll
    for (int nt = 0; nt < Traits::kNTilesO; ++nt) o[0][nt][0] = o[0][nt][1] = o[0][nt][2] = o[0][nt][3] = 0.f;
    softmax.init();

    using Gather = LutGather<kStages, kBK, kD, Traits::kWarps>;
    static_assert(Gather::kStageBytes == Traits::kStageBytes, "stage plan mismatch");
    static_assert(Gather::kBarrierBytes <= Traits::kBarrierBytes, "barrier region too small");
    Gather gather{stages,
                  stages + Traits::kBarrierOffset,
                  &p.tma_k,
                  &p.tma_v,
                  row,
                  kBK,
                  static_cast<int>(blockIdx.y),
                  static_cast<int>(blockIdx.z)};
    gather.start(tid, kAhead);
    cp_async_wait<0>();
    __syncthreads();  // Q has landed for every warp, and the barriers are initialised
    after_q();
    // Q as the A operand of every S product: this warp's 16 rows, all of D, loaded once.
    uint32_t qa[kD / 16][4];
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) ldsm_a<kChunks>(qa[ks], q_tile, warp * 16, ks * 16, lane);

    // The first block is peeled off so that no wgmma sits under a branch (ptxas serialises those).
    int key0 = -1;
    uint32_t k_tile = gather.k_tile(gather.acquire(0, tid, key0));
    if (key0 >= 0) {
      uint32_t pa[kBK / 16][4];
      float corr[2], sum[2];
      float s[Traits::kNTilesS][4];
      wgmma_fence();
      issue_scores(s, qa, k_tile);
      wgmma_wait<0>();
      fence_regs(s);
      KeyTailMask<kBK>::apply(s, key0, p.lk, lane);  // keys past Lk exist only in the last block
      softmax.update(s, 0, p.scale_log2, corr, sum);
      softmax.rescale(o[0], 0, corr, sum);
      pack_p(s, pa);
      uint32_t v_prev = k_tile + kKBytes;  // V of the block whose P V is still to issue
      int seq = 1;
      while (true) {
        k_tile = gather.k_tile(gather.acquire(seq, tid, key0));
        if (key0 < 0) break;
        // Each product opens its own wgmma pipeline stage (fence ... commit), so the softmax may write the S
        // registers after wait<1> while the P V stage is still open.
        wgmma_fence();
        issue_scores(s, qa, k_tile);
        wgmma_fence();
        issue_pv(pa, v_prev);
        wgmma_wait<1>();  // groups retire in order: S is done, P V may still run
        fence_regs(s);
        KeyTailMask<kBK>::apply(s, key0, p.lk, lane);
        // s becomes P, m moves to the new max; O and l are rescaled once P_{t-1} V_{t-1} is done.
        softmax.update(s, 0, p.scale_log2, corr, sum);
        wgmma_wait<0>();
        fence_regs(o[0]);
        gather.release(seq - 1, lane);
        softmax.rescale(o[0], 0, corr, sum);
        pack_p(s, pa);
        v_prev = k_tile + kKBytes;
        ++seq;
      }
      wgmma_fence();
      issue_pv(pa, v_prev);
      wgmma_wait<0>();
      fence_regs(o[0]);
    }
    __syncthreads();  // every warp is done with the stages: the epilogue may reuse them
  }
};

}  // namespace sla::cuda::fwd
