// The forward's sparse mainloop on mma.sync (sm_80 and newer): gathers K_j, V_j of the LUT row (cp.async, two
// stages) and runs the online softmax, leaving O_s (unnormalised), the row max and the row sum in registers. Warp w
// owns query rows 16 kMTiles w .. 16 kMTiles (w + 1) - 1 of the tile. MmaMainloop::run is the contract the Hopper
// mainloop (mainloop_sm90.cuh) keeps too.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/lut_row.cuh"
#include "cuda/common/mask.cuh"
#include "cuda/common/mma_frag.cuh"
#include "cuda/common/numeric.cuh"
#include "cuda/common/params.h"
#include "cuda/common/ptx.cuh"
#include "cuda/common/softmax.cuh"
#include "cuda/common/tile_io.cuh"

namespace sla::cuda::fwd {

template <class Traits>
struct MmaMainloop {
  using T = typename Traits::Element;
  using Tag = typename ElementTraits<T>::MmaTag;
  static constexpr int kD = Traits::kHeadDim, kBK = Traits::kBlockK, kChunks = Traits::kChunks;
  static constexpr int kM = Traits::kMTiles;

  float o[kM][Traits::kNTilesO][4];  // O_s accumulator (unnormalised)
  OnlineSoftmax<kM> softmax;         // running max and sum of each row

  static __device__ __forceinline__ void load_kv(const ForwardParams& p, const T* k_head, const T* v_head, int j,
                                                 uint32_t stage, int tid) {
    const int64_t r0 = static_cast<int64_t>(j) * kBK;
    const int valid = static_cast<int>(min_i64(kBK, p.lk - r0));
    load_tile_async<kBK, kD, Traits::kThreads>(stage, reinterpret_cast<const uint16_t*>(k_head + r0 * p.k.row_stride),
                                               p.k.row_stride, valid, tid);
    load_tile_async<kBK, kD, Traits::kThreads>(stage + Traits::kKBytes,
                                               reinterpret_cast<const uint16_t*>(v_head + r0 * p.v.row_stride),
                                               p.v.row_stride, valid, tid);
  }

  // Runs the LUT row. On entry the Q tile load has been issued (committed or not); after_q() runs first (this
  // loop prefetches nothing for the epilogue). On exit every cp.async is done and the K/V stages are free.
  template <class AfterQ>
  __device__ __forceinline__ void run(const ForwardParams& p, const LutRow& row, const T* k_head, const T* v_head,
                                      uint32_t q_tile, uint32_t stages, int warp, int lane, int tid, AfterQ&& after_q) {
    after_q();
#pragma unroll
    for (int mt = 0; mt < kM; ++mt) {
#pragma unroll
      for (int nt = 0; nt < Traits::kNTilesO; ++nt) o[mt][nt][0] = o[mt][nt][1] = o[mt][nt][2] = o[mt][nt][3] = 0.f;
    }
    softmax.init();
    const int row0 = warp * 16 * kM;
    using Lane = LdsmLane<kChunks>;
    constexpr int kRowBytes = Lane::kRowBytes;
    const uint32_t q_lane = q_tile + Lane::a(lane) + row0 * kRowBytes;
    const uint32_t k_lane = stages + Lane::b_nk(lane), v_lane = stages + Traits::kKBytes + Lane::b_kn(lane);

    int e = row.next_valid(0);
    if (e < row.n) load_kv(p, k_head, v_head, row.block(e), stages, tid);
    cp_async_commit();
    int stage = 0;
    while (e < row.n) {
      const int j = row.block(e);
      const int e_next = row.next_valid(e + 1);
      cp_async_wait<0>();
      __syncthreads();  // stage `stage` is loaded, and every warp is done with the other one
      if (e_next < row.n)
        load_kv(p, k_head, v_head, row.block(e_next), stages + (stage ^ 1) * Traits::kStageBytes, tid);
      cp_async_commit();
      const uint32_t stage_off = stage * Traits::kStageBytes;

      // S = Q K_j^T for this warp's rows.
      float s[kM][Traits::kNTilesS][4];
#pragma unroll
      for (int mt = 0; mt < kM; ++mt)
#pragma unroll
        for (int nt = 0; nt < Traits::kNTilesS; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.f;
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks) {
        uint32_t a[kM][4];
#pragma unroll
        for (int mt = 0; mt < kM; ++mt) ldmatrix_x4(a[mt], (q_lane + mt * 16 * kRowBytes) ^ (ks << 5));
        const uint32_t k_ks = ((k_lane + stage_off) ^ (ks << 5));
#pragma unroll
        for (int np = 0; np < kBK / 16; ++np) {
          uint32_t b[4];
          ldmatrix_x4(b, k_ks + np * 16 * kRowBytes);
          const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
          for (int mt = 0; mt < kM; ++mt) {
            mma_16816(s[mt][2 * np], a[mt], b0, Tag{});
            mma_16816(s[mt][2 * np + 1], a[mt], b1, Tag{});
          }
        }
      }
      // Keys past Lk exist only in the last block: mask them before the max.
      KeyTailMask<kBK>::apply(s, static_cast<int64_t>(j) * kBK, p.lk, lane);
      // Online softmax in the exp2 domain; O is not in flight, so each row is rescaled as soon as it is updated.
      softmax.step(s, o, p.scale_log2);
      // O_s += P V_j; two S n-tiles form one A fragment.
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) {
        uint32_t a[kM][4];
#pragma unroll
        for (int mt = 0; mt < kM; ++mt) {
          a[mt][0] = ElementTraits<T>::pack2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
          a[mt][1] = ElementTraits<T>::pack2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
          a[mt][2] = ElementTraits<T>::pack2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
          a[mt][3] = ElementTraits<T>::pack2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int nd = 0; nd < kD / 16; ++nd) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, ((v_lane + stage_off + kk * 16 * kRowBytes) ^ (nd << 5)));
          const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
          for (int mt = 0; mt < kM; ++mt) {
            mma_16816(o[mt][2 * nd], a[mt], b0, Tag{});
            mma_16816(o[mt][2 * nd + 1], a[mt], b1, Tag{});
          }
        }
      }
      e = e_next;
      stage ^= 1;
    }
    cp_async_wait<0>();
    __syncthreads();  // the stages may now be reused by the epilogue
  }
};

}  // namespace sla::cuda::fwd
