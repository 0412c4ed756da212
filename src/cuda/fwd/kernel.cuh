// The SLA forward main kernel (docs/SPEC.md sections 2-4) for sm_80+, as wiring of three parts:
//   QueryBlockScheduler  (tile_scheduler.cuh) the (query block, head, batch) of this CTA
//   MmaMainloop          (mainloop_sm80.cuh, mma.sync) or WgmmaMainloop (mainloop_sm90.cuh, sm_90a, Traits::kUseWgmma):
//                        the LUT row's K/V blocks and the online softmax, O_s and the row stats left in registers
//   ForwardEpilogue      (epilogue.cuh) the epilogue operands and their prefetch; below the mainloop: normalisation,
//                        LSE, the linear branch (LinearEpilogue), the stores
// Tile sizes and the shared-memory plan: ForwardTraits (traits.cuh).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/common/lut_row.cuh"
#include "cuda/common/numeric.cuh"
#include "cuda/common/params.h"
#include "cuda/common/ptx.cuh"
#include "cuda/common/tile_io.cuh"
#include "cuda/fwd/epilogue.cuh"
#include "cuda/fwd/mainloop_sm80.cuh"
#include "cuda/fwd/mainloop_sm90.cuh"
#include "cuda/fwd/tile_scheduler.cuh"
#include "cuda/fwd/traits.cuh"

namespace sla::cuda::fwd {

template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocksPerSm)
    forward_kernel(const __grid_constant__ ForwardParams p) {  // grid constant: the TMA reads its tensor maps there
  using T = typename Traits::Element;
  constexpr int kD = Traits::kHeadDim, kBQ = Traits::kBlockQ, kM = Traits::kMTiles;
  constexpr bool kStagedA = ForwardEpilogue<Traits>::kStagedA;
  // 1024-byte alignment: the XOR addressing of LdsmLane needs tiles aligned to their row size.
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t q_tile = smem_addr(smem);
  const uint32_t stages = q_tile + Traits::kQBytes;

  const QueryBlockScheduler::Tile tile = QueryBlockScheduler::tile();
  const int i = tile.q_block;
  const int64_t h = tile.head, b = tile.batch;
  const int64_t bh = b * p.heads + h;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t row0 = static_cast<int64_t>(i) * kBQ;
  const int q_valid = static_cast<int>(min_i64(kBQ, p.lq - row0));
  const int warp_row0 = warp * 16 * kM;

  const T* q_head = static_cast<const T*>(p.q.ptr) + b * p.q.batch_stride + h * p.q.head_stride;
  const T* k_head = static_cast<const T*>(p.k.ptr) + b * p.k.batch_stride + h * p.k.head_stride;
  const T* v_head = static_cast<const T*>(p.v.ptr) + b * p.v.batch_stride + h * p.v.head_stride;
  load_tile_async<kBQ, kD, Traits::kThreads>(q_tile, reinterpret_cast<const uint16_t*>(q_head + row0 * p.q.row_stride),
                                             p.q.row_stride, q_valid, tid);
  cp_async_commit();

  const LutRow row{p.lut + (bh * p.nq + i) * p.lut_capacity,
                   LutRow::clamp_count(__ldg(p.lut_count + bh * p.nq + i), p.lut_capacity), p.nk};

  const ForwardEpilogue<Traits> epilogue(p, bh, i, stages);
  using Mainloop = std::conditional_t<Traits::kUseWgmma, WgmmaMainloop<Traits>, MmaMainloop<Traits>>;
  Mainloop ml;
  ml.run(p, row, k_head, v_head, q_tile, stages, warp, lane, tid, [&] {
    epilogue.prefetch_operands(tid);
  });
  // ---- epilogue ----
  // Written here rather than behind a ForwardEpilogue::store() call: moved into a member function, the same code
  // compiles to differently scheduled SASS (scripts/compare_sass.py), so that move waits for a GPU to time it.
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < kM; ++mt) {
    float inv_l[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float l = ml.softmax.row_sum(mt, r);
      // l is exactly 0 only for a row that visited no key (a LUT row of count 0): O_s = 0, LSE = -inf. Every
      // visited block adds exp2(0) = 1 at its maximum. NaN or Inf in q or k makes l NaN, which must reach O and
      // the LSE as in dense attention: hence l == 0, not l > 0 (a NaN fails both comparisons).
      inv_l[r] = l == 0.f ? 0.f : 1.f / l;
      const int64_t row = row0 + warp_row0 + mt * 16 + g + 8 * r;
      if (p.lse != nullptr && t == 0 && row < p.lq) {
        p.lse[bh * p.lq + row] = l == 0.f ? -INFINITY : ml.softmax.lse(mt, r, l);
      }
    }
#pragma unroll
    for (int nt = 0; nt < Traits::kNTilesO; ++nt) {
      ml.o[mt][nt][0] *= inv_l[0];
      ml.o[mt][nt][1] *= inv_l[0];
      ml.o[mt][nt][2] *= inv_l[1];
      ml.o[mt][nt][3] *= inv_l[1];
    }
  }

  // O_s alone in fp32, for the backward's Delta = dO . O_s (BackwardArgs::o_sparse): no 16-bit rounding in it.
  if (p.o_sparse != nullptr) {
    store_rows_f32<kD>(p.o_sparse + bh * p.lq * kD, ml.o, row0 + warp_row0, p.lq, g, t);
  }

  FeatureRowStats st[kM][2];
  float factor[kM][2];
  const FeatureMap fmap = static_cast<FeatureMap>(p.feature_map);
  // With prefetched operands, H for the saved O_l goes to the free stages now and arrives during the G product.
  const uint32_t h_hi = Traits::kPrefetchOps && p.has_weight ? stages : epilogue.op_hi,
                 h_lo = h_hi + Traits::kOperandBytes;
  if (Traits::kPrefetchOps && p.has_weight && p.o_lin != nullptr) {
    load_tile_async<kD, kD, Traits::kThreads>(
        h_hi, reinterpret_cast<const uint16_t*>(epilogue.ops + epilogue.lay.h_hi()), kD, kD, tid);
    load_tile_async<kD, kD, Traits::kThreads>(
        h_lo, reinterpret_cast<const uint16_t*>(epilogue.ops + epilogue.lay.h_lo()), kD, kD, tid);
    cp_async_commit();
  }
  if (epilogue.need_linear) {
    if (!Traits::kPrefetchOps) {
      load_tile_async<kD, kD, Traits::kThreads>(
          epilogue.op_hi, reinterpret_cast<const uint16_t*>(epilogue.ops + epilogue.hi_off), kD, kD, tid);
      load_tile_async<kD, kD, Traits::kThreads>(
          epilogue.op_lo, reinterpret_cast<const uint16_t*>(epilogue.ops + epilogue.lo_off), kD, kD, tid);
      cp_async_commit();
    }
    const float* z = reinterpret_cast<const float*>(epilogue.ops + epilogue.lay.z());
    const bool empty = *reinterpret_cast<const int32_t*>(epilogue.ops + epilogue.lay.marginal_empty()) != 0;
#pragma unroll
    for (int mt = 0; mt < kM; ++mt) {
      SLA_FEATURE_MAP_SWITCH(fmap, FM, [&] {
        LinearEpilogue<Traits>::template row_factors<FM>(p, q_tile, z, empty, warp_row0 + mt * 16, lane, st[mt],
                                                         factor[mt]);
      });
    }
    if constexpr (kStagedA) {
#pragma unroll
      for (int mt = 0; mt < kM; ++mt) {
        SLA_FEATURE_MAP_SWITCH(fmap, FM, [&] {
          LinearEpilogue<Traits>::template stage_scaled_phi<FM>(q_tile, st[mt], factor[mt], warp_row0 + mt * 16, lane);
        });
      }
    }
    cp_async_wait<0>();
    __syncthreads();
  }
  if (p.has_weight) {
    if constexpr (kStagedA) {
      LinearEpilogue<Traits>::add_staged(ml.o, q_tile, epilogue.op_hi, epilogue.op_lo, warp_row0, lane);
    } else {
      SLA_FEATURE_MAP_SWITCH(fmap, FM, [&] {
        LinearEpilogue<Traits>::template add_linear<FM, true>(ml.o, q_tile, epilogue.op_hi, epilogue.op_lo, st, factor,
                                                              warp_row0, lane);
      });
    }
  }
  // O = O_s + O_l W^T + b, rounded once to the input dtype.
  T* o_head = static_cast<T*>(p.o.ptr) + b * p.o.batch_stride + h * p.o.head_stride;
#pragma unroll
  for (int nt = 0; nt < Traits::kNTilesO; ++nt) {
    const int c = nt * 8 + 2 * t;
    float b0 = 0.f, b1 = 0.f;
    if (p.bias != nullptr) {
      b0 = __ldg(p.bias + c);
      b1 = __ldg(p.bias + c + 1);
    }
#pragma unroll
    for (int mt = 0; mt < kM; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t row = row0 + warp_row0 + mt * 16 + g + 8 * r;
        if (row < p.lq) {
          *reinterpret_cast<uint32_t*>(o_head + row * p.o.row_stride + c) =
              ElementTraits<T>::pack2(ml.o[mt][nt][2 * r] + b0, ml.o[mt][nt][2 * r + 1] + b1);
        }
      }
    }
  }
  if (p.o_lin != nullptr) {
    if (p.has_weight && !Traits::kPrefetchOps) {
      // The stages hold G: replace them with H.
      __syncthreads();
      load_tile_async<kD, kD, Traits::kThreads>(
          epilogue.op_hi, reinterpret_cast<const uint16_t*>(epilogue.ops + epilogue.lay.h_hi()), kD, kD, tid);
      load_tile_async<kD, kD, Traits::kThreads>(
          epilogue.op_lo, reinterpret_cast<const uint16_t*>(epilogue.ops + epilogue.lay.h_lo()), kD, kD, tid);
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
    }
#pragma unroll
    for (int mt = 0; mt < kM; ++mt)
#pragma unroll
      for (int nt = 0; nt < Traits::kNTilesO; ++nt)
        ml.o[mt][nt][0] = ml.o[mt][nt][1] = ml.o[mt][nt][2] = ml.o[mt][nt][3] = 0.f;
    if constexpr (kStagedA) {
      LinearEpilogue<Traits>::add_staged(ml.o, q_tile, h_hi, h_lo, warp_row0, lane);
    } else {
      SLA_FEATURE_MAP_SWITCH(fmap, FM, [&] {
        LinearEpilogue<Traits>::template add_linear<FM, true>(ml.o, q_tile, h_hi, h_lo, st, factor, warp_row0, lane);
      });
    }
    store_rows_f32<kD>(p.o_lin + bh * p.lq * kD, ml.o, row0 + warp_row0, p.lq, g, t);
  }
}

}  // namespace sla::cuda::fwd
