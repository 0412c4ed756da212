// The TMA gather pipeline of the Hopper kernels: K and V tiles named by one row of a block LUT, brought into a ring
// of shared-memory stages by bulk tensor copies that thread 0 issues, with per-stage mbarriers instead of CTA-wide
// barriers (cuda/common/tma.cuh).
//
// A LUT row lists key blocks of kBlockRows keys; each entry that names a block (LutRow) yields kBlockRows / kTileRows
// tiles of kTileRows keys, in order. Tile `seq` lands in stage seq % kStages: K (kTileRows x kD) then V, each in the
// panel layout of cuda/common/wgmma.cuh. Per stage:
//   full  (count 1):       thread 0's arrive with the tile's byte count, completed by the copies' bytes
//   empty (count kWarps):  one arrive per consumer warp once it no longer reads the stage
// Every thread walks the LUT row itself (the same sequence as the producer), so nothing but the barriers and the
// copies passes between the producer and the consumers.
#pragma once

#include <cstdint>

#include "cuda/common/lut_row.cuh"
#include "cuda/common/params.h"
#include "cuda/common/tma.cuh"
#include "cuda/common/wgmma.cuh"

namespace sla::cuda {

template <int kStages, int kTileRows, int kD, int kWarps>
struct LutGather {
  static constexpr uint32_t kTileBytes = kTileRows * kD * 2;  // one K (or V) tile
  static constexpr uint32_t kStageBytes = 2 * kTileBytes;
  static constexpr int kBarrierBytes = 2 * kStages * 8;

  uint32_t stages;  // shared address of stage 0 (1024-byte aligned)
  uint32_t bars;    // shared address of the barriers (8-byte aligned, kBarrierBytes)
  const TmaDescriptor* map_k;
  const TmaDescriptor* map_v;
  LutRow row;  // the LUT row: key blocks of block_rows keys
  int block_rows, head, batch;
  // Producer state, meaningful in thread 0 only; the consumer's walk of the same sequence.
  int e_load = 0, sub_load = 0, seq_load = 0;
  bool producing = true;
  int e_use = -1, sub_use = 0;

  __device__ __forceinline__ uint32_t full(int s) const { return bars + 8 * s; }
  __device__ __forceinline__ uint32_t empty(int s) const { return bars + 8 * (kStages + s); }
  __device__ __forceinline__ uint32_t k_tile(int s) const { return stages + s * kStageBytes; }
  __device__ __forceinline__ uint32_t v_tile(int s) const { return k_tile(s) + kTileBytes; }

  // Thread 0 initialises the barriers and issues the first `ahead` tiles; the caller then runs a CTA barrier
  // before any thread waits on them.
  __device__ __forceinline__ void start(int tid, int ahead) {
    e_use = row.next_valid(0);
    if (tid != 0) return;
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(full(s), 1);
      mbarrier_init(empty(s), kWarps);
    }
    mbarrier_init_fence();
    e_load = row.next_valid(0);
    for (int a = 0; a < ahead && producing; ++a) produce();
  }

  // Thread 0: the next tile into its stage once every warp has released the stage's previous tile.
  __device__ __forceinline__ void produce() {
    if (e_load >= row.n) {
      producing = false;
      return;
    }
    const int seq = seq_load++;
    const int s = seq % kStages;
    if (seq >= kStages) mbarrier_wait(empty(s), ((seq / kStages) - 1) & 1);
    const int key0 = row.block(e_load) * block_rows + sub_load * kTileRows;
    if (++sub_load == block_rows / kTileRows) {
      sub_load = 0;
      e_load = row.next_valid(e_load + 1);
    }
    mbarrier_arrive_expect_tx(full(s), kStageBytes);
#pragma unroll
    for (int c = 0; c < kD / kPanelCols; ++c) {
      tma_load_4d(k_tile(s) + c * kTileRows * kPanelRowBytes, map_k, full(s), c * kPanelCols, key0, head, batch);
      tma_load_4d(v_tile(s) + c * kTileRows * kPanelRowBytes, map_v, full(s), c * kPanelCols, key0, head, batch);
    }
  }

  // Every thread: waits for tile `seq` (the next one of its walk) and returns its stage and first key, or key0 = -1
  // at the end of the row. Thread 0 first issues the tile `ahead` further on (one produce per acquire keeps the
  // distance that start() set).
  __device__ __forceinline__ int acquire(int seq, int tid, int& key0) {
    if (tid == 0 && producing) produce();
    if (e_use >= row.n) {
      key0 = -1;
      return 0;
    }
    key0 = row.block(e_use) * block_rows + sub_use * kTileRows;
    if (++sub_use == block_rows / kTileRows) {
      sub_use = 0;
      e_use = row.next_valid(e_use + 1);
    }
    const int s = seq % kStages;
    mbarrier_wait(full(s), (seq / kStages) & 1);
    return s;
  }

  // This warp no longer reads the stage of tile `seq`.
  __device__ __forceinline__ void release(int seq, int lane) const {
    __syncwarp();
    if (lane == 0) mbarrier_arrive(empty(seq % kStages));
  }
};

}  // namespace sla::cuda
