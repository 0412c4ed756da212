// ForwardTraits: the forward main kernel's tile sizes and shared-memory plan, one type per (dtype, head dim, bq, bk,
// mainloop). Both mainloops (mainloop_sm80.cuh, mainloop_sm90.cuh) and the epilogue read their sizes from it.
#pragma once

#include <cstdint>

namespace sla::cuda::fwd {

template <class T, int kD, int kBQ, int kBK, bool kWgmma = false>
struct ForwardTraits {
  using Element = T;
  static constexpr bool kUseWgmma = kWgmma;
  static constexpr int kHeadDim = kD;
  static constexpr int kBlockQ = kBQ;
  static constexpr int kBlockK = kBK;
  // Rows of the query tile per warp. mma.sync: 32 (two m-tiles) for bq = 128, so that each K/V fragment read from
  // shared memory feeds two mma instead of one (the loop is bound by shared-memory bandwidth otherwise). wgmma:
  // 16, the accumulator layout of a warpgroup's m64 product.
  static constexpr int kMTiles = (kBQ == 128 && !kWgmma) ? 2 : 1;
  static constexpr int kWarps = kBQ / (16 * kMTiles);
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kChunks = kD / 8;    // 16-byte chunks per row of Q, K, V, G, H
  static constexpr int kNTilesS = kBK / 8;  // n-tiles of S = Q K^T per warp
  static constexpr int kNTilesO = kD / 8;   // n-tiles of O per warp
  // Shared memory: Q tile, then kStages stages of (K_j, V_j). The epilogue reuses the stages for G / H (hi and lo).
  // The wgmma loop keeps K_t, V_{t-1} and kStages - 2 blocks in flight: four stages where one CTA per SM runs
  // anyway (bq = 128, two warpgroups at ~230 registers, 32 KB stages), three otherwise (two CTAs per SM at
  // bq 64 / bk 64; 64 KB stages at bk = 128).
  static constexpr int kQBytes = kBQ * kD * 2;
  static constexpr int kKBytes = kBK * kD * 2;
  static constexpr int kStageBytes = 2 * kKBytes;
  static constexpr int kStages = !kWgmma ? 2 : (kBQ == 128 && kStageBytes <= 32 * 1024) ? 4 : 3;
  static constexpr int kOperandBytes = kD * kD * 2;  // one bf16 D x Dv matrix
  static constexpr int kMainSmemBytes = kQBytes + kStages * kStageBytes;
  // Where one CTA per SM runs anyway and the epilogue operands (G or H, hi and lo) fit beside the stages, they get
  // their own region and are gathered with Q at the start, so the epilogue never waits for them.
  static constexpr int kBarrierBytes = kWgmma ? 128 : 0;  // the wgmma loop's mbarriers (Barriers)
  static constexpr bool kPrefetchOps =
      kWgmma && kBQ == 128 && kMainSmemBytes + 2 * kOperandBytes + kBarrierBytes <= 227 * 1024;
  // Byte offsets from the first stage.
  static constexpr int kOpsOffset = kStages * kStageBytes;
  static constexpr int kBarrierOffset = kOpsOffset + (kPrefetchOps ? 2 * kOperandBytes : 0);
  static constexpr int kSmemBytes = kQBytes + kBarrierOffset + kBarrierBytes;
  static constexpr int kMinBlocksPerSm = (kWgmma && kBQ == 128) ? 1 : (kSmemBytes <= 113 * 1024 ? 2 : 1);
  static_assert(2 * kOperandBytes <= kStages * kStageBytes, "the epilogue operands must fit in the K/V stages");
};

}  // namespace sla::cuda::fwd
