// The SLA forward main kernel (docs/SPEC.md sections 2-4) for sm_80+, as wiring of three parts:
//   QueryBlockScheduler  (tile_scheduler.cuh) the (query block, head, batch) of this CTA
//   MmaMainloop          (mainloop_sm80.cuh, mma.sync) or WgmmaMainloop (mainloop_sm90.cuh, sm_90a, Traits::kUseWgmma):
//                        the LUT row's K/V blocks and the online softmax, O_s and the row stats left in registers
//   ForwardEpilogue      (epilogue.cuh) normalisation, LSE, the linear branch, the stores
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
  epilogue.store(p, ml, q_tile, stages, b, h, bh, row0, warp_row0, lane, tid);
}

}  // namespace sla::cuda::fwd
