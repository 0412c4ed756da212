// The SLA forward main kernel (docs/SPEC.md sections 2-4) for sm_80+: one CTA per (query block, head, batch).
//
// Layers:
//   ForwardTraits      tile sizes and the shared-memory plan (kWgmma: the Hopper plan)
//   SparseMainloop     (mma.sync, sm_80+) gathers K_j, V_j of the LUT row (cp.async, two stages) and runs the
//                      online softmax, leaving O_s (unnormalised), the row max and the row sum in registers
//   WgmmaMainloop      (forward_mainloop_sm90.cuh, sm_90a) the same contract on wgmma
//   LinearEpilogue     normalises O_s, writes the LSE, adds phi(q)/n (H W^T) + b, writes O (and O_l when saved)
// Warp w owns query rows 16 kMTiles w .. 16 kMTiles (w + 1) - 1 of the tile in every stage, so no stage exchanges
// rows between warps.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/common/feature_map.cuh"
#include "cuda/common/mask.cuh"
#include "cuda/common/numeric.cuh"
#include "cuda/common/params.h"
#include "cuda/common/ptx.cuh"
#include "cuda/common/softmax.cuh"
#include "cuda/common/tile_io.cuh"
#include "cuda/forward_mainloop_sm90.cuh"

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
  static constexpr int kChunks = kD / 8;      // 16-byte chunks per row of Q, K, V, G, H
  static constexpr int kNTilesS = kBK / 8;    // n-tiles of S = Q K^T per warp
  static constexpr int kNTilesO = kD / 8;     // n-tiles of O per warp
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

template <class Traits>
struct SparseMainloop {
  using T = typename Traits::Element;
  using Tag = typename ElementTraits<T>::MmaTag;
  static constexpr int kD = Traits::kHeadDim, kBK = Traits::kBlockK, kChunks = Traits::kChunks;
  static constexpr int kM = Traits::kMTiles;

  float o[kM][Traits::kNTilesO][4];  // O_s accumulator (unnormalised)
  OnlineSoftmax<kM> softmax;         // running max and sum of each row

  // Index of the first valid LUT entry at or after e (entries outside [0, Nk) are skipped), or n.
  static __device__ __forceinline__ int next_valid(const int32_t* lut, int e, int n, int nk) {
    while (e < n) {
      const int j = __ldg(lut + e);
      if (j >= 0 && j < nk) break;
      ++e;
    }
    return e;
  }

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
  __device__ __forceinline__ void run(const ForwardParams& p, const int32_t* lut, int n, const T* k_head,
                                      const T* v_head, uint32_t q_tile, uint32_t stages, int warp, int lane, int tid,
                                      AfterQ&& after_q) {
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

    int e = next_valid(lut, 0, n, p.nk);
    if (e < n) load_kv(p, k_head, v_head, __ldg(lut + e), stages, tid);
    cp_async_commit();
    int stage = 0;
    while (e < n) {
      const int j = __ldg(lut + e);
      const int e_next = next_valid(lut, e + 1, n, p.nk);
      cp_async_wait<0>();
      __syncthreads();  // stage `stage` is loaded, and every warp is done with the other one
      if (e_next < n) load_kv(p, k_head, v_head, __ldg(lut + e_next), stages + (stage ^ 1) * Traits::kStageBytes, tid);
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

template <class Traits>
struct LinearEpilogue {
  using T = typename Traits::Element;
  static constexpr int kD = Traits::kHeadDim, kChunks = Traits::kChunks, kM = Traits::kMTiles;

  // Per-row factor f such that A = phi(q) * f, with f = 1 / n (n = phi(q).z + eps, or phi(q).z_i), or 0 when the
  // row's O_l is 0 (complement variant: no marginal block, or n <= 0; a NaN n stays NaN, so that non-finite
  // inputs reach O as in the dense formula). Also returns the softmax row stats.
  // `row16` is the first row of one m-tile of the warp.
  template <FeatureMap F>
  static __device__ __forceinline__ void row_factors(const ForwardParams& p, uint32_t q_tile, const float* z,
                                                     bool marginal_empty, int row16, int lane, FeatureRowStats (&st)[2],
                                                     float (&factor)[2]) {
    const int t = lane & 3;
    float mx[2] = {-INFINITY, -INFINITY};
    if constexpr (F == FeatureMap::softmax) {
#pragma unroll
      for (int ks = 0; ks < kD / 16; ++ks) {
        uint32_t a[4];
        ldsm_a<kChunks>(a, q_tile, row16, ks * 16, lane);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const float2 x = ElementTraits<T>::unpack2(a[q]);
          mx[q & 1] = fmaxf(mx[q & 1], fmaxf(x.x, x.y));
        }
      }
      mx[0] = quad_max(mx[0]);
      mx[1] = quad_max(mx[1]);
    }
    float sum[2] = {0.f, 0.f}, dot[2] = {0.f, 0.f};
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
      uint32_t a[4];
      ldsm_a<kChunks>(a, q_tile, row16, ks * 16, lane);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 x = ElementTraits<T>::unpack2(a[q]);
        const int c = ks * 16 + (q >> 1) * 8 + 2 * t;  // a0/a1: cols 2t.., a2/a3: cols 2t + 8..
        const float z0 = __ldg(z + c), z1 = __ldg(z + c + 1);
        FeatureRowStats unnormalised;  // softmax: exp(x - max) only, the sum divides below
        unnormalised.max = mx[q & 1];
        const float p0 = phi_forward<F>(x.x, unnormalised), p1 = phi_forward<F>(x.y, unnormalised);
        sum[q & 1] += p0 + p1;
        dot[q & 1] = fmaf(p0, z0, fmaf(p1, z1, dot[q & 1]));
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      st[r].max = mx[r];
      const float s = quad_sum(sum[r]), d = quad_sum(dot[r]);
      float n;
      if constexpr (F == FeatureMap::softmax) {
        st[r].inv_sum = 1.f / s;
        n = d * st[r].inv_sum;
      } else {
        st[r].inv_sum = 1.f;
        n = d;
      }
      if (p.complement) {
        factor[r] = (marginal_empty || n <= 0.f) ? 0.f : 1.f / n;
      } else {
        factor[r] = 1.f / (n + p.eps);
      }
    }
  }

  // acc += (phi(q) * factor) B for B = hi + lo (bf16, [D][Dv] tiles in shared memory). A = phi(q) * factor enters
  // as hi (+ lo when kSplitA): hi * B_hi + hi * B_lo (+ lo * B_hi) keeps ~16 bits of B and 8 (or ~16) of A.
  // Overwrites this warp's m-tile of the Q tile with A = phi(q) * factor rounded to bf16 (row16: first row of the
  // m-tile). Only this warp ever reads these rows, so a warp barrier orders the reads before the writes.
  template <FeatureMap F>
  static __device__ __forceinline__ void stage_scaled_phi(uint32_t q_tile, const FeatureRowStats (&st)[2],
                                                          const float (&factor)[2], int row16, int lane) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
      uint32_t a[4];
      ldsm_a<kChunks>(a, q_tile, row16, ks * 16, lane);
      uint32_t out[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 x = ElementTraits<T>::unpack2(a[q]);
        const int r = q & 1;
        out[q] = ElementTraits<__nv_bfloat16>::pack2(phi_forward<F>(x.x, st[r]) * factor[r],
                                                     phi_forward<F>(x.y, st[r]) * factor[r]);
      }
      __syncwarp();
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int row = row16 + g + 8 * (q & 1), col = ks * 16 + 8 * (q >> 1) + 2 * t;
        const uint32_t addr = q_tile + swizzle<kChunks>(row, col >> 3) + (col & 7) * 2;
        asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(out[q]));
      }
    }
  }

  // acc += A (B_hi + B_lo) with A staged in shared memory by stage_scaled_phi: the feature map is out of this loop,
  // and each B fragment serves every m-tile of the warp.
  // The epilogue products run once per CTA, so their code is cold in the instruction cache every time: the ks loop
  // stays rolled (one step: 16 ldmatrix and 16 x kM mma) instead of unrolling 8x into code that is fetched once per
  // use. The accumulator indices depend only on the unrolled nd and mt loops, so the registers stay static.
  static __device__ __forceinline__ void add_staged(float (&acc)[kM][Traits::kNTilesO][4], uint32_t a_tile,
                                                    uint32_t b_hi, uint32_t b_lo, int row0, int lane) {
#pragma unroll 1  // see the note above add_staged: one ks step of code, run once per CTA
    for (int ks = 0; ks < kD / 16; ++ks) {
      uint32_t a[kM][4];
#pragma unroll
      for (int mt = 0; mt < kM; ++mt) ldsm_a<kChunks>(a[mt], a_tile, row0 + mt * 16, ks * 16, lane);
#pragma unroll
      for (int nd = 0; nd < kD / 16; ++nd) {
        uint32_t bh[4], bl[4];
        ldsm_b_kn<kChunks>(bh, b_hi, nd * 16, ks * 16, lane);
        ldsm_b_kn<kChunks>(bl, b_lo, nd * 16, ks * 16, lane);
        const uint32_t h0[2] = {bh[0], bh[1]}, h1[2] = {bh[2], bh[3]};
        const uint32_t l0[2] = {bl[0], bl[1]}, l1[2] = {bl[2], bl[3]};
#pragma unroll
        for (int mt = 0; mt < kM; ++mt) {
          mma_16816(acc[mt][2 * nd], a[mt], h0, Bf16Tag{});
          mma_16816(acc[mt][2 * nd], a[mt], l0, Bf16Tag{});
          mma_16816(acc[mt][2 * nd + 1], a[mt], h1, Bf16Tag{});
          mma_16816(acc[mt][2 * nd + 1], a[mt], l1, Bf16Tag{});
        }
      }
    }
  }

  template <FeatureMap F, bool kSplitA>
  static __device__ __forceinline__ void add_linear(float (&acc)[kM][Traits::kNTilesO][4], uint32_t q_tile,
                                                    uint32_t b_hi, uint32_t b_lo, const FeatureRowStats (&st)[kM][2],
                                                    const float (&factor)[kM][2], int row0, int lane) {
    // One m-tile at a time: the B fragments are read again per m-tile, but the registers stay free for O.
#pragma unroll
    for (int mt = 0; mt < kM; ++mt) {
#pragma unroll 1  // see the note above add_staged: one ks step of code, run once per CTA
      for (int ks = 0; ks < kD / 16; ++ks) {
        uint32_t a[4], a_hi[4], a_lo[4];
        ldsm_a<kChunks>(a, q_tile, row0 + mt * 16, ks * 16, lane);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const float2 x = ElementTraits<T>::unpack2(a[q]);
          const int r = q & 1;
          const SplitBf16 sp = split_bf16x2(phi_forward<F>(x.x, st[mt][r]) * factor[mt][r],
                                            phi_forward<F>(x.y, st[mt][r]) * factor[mt][r]);
          a_hi[q] = sp.hi;
          a_lo[q] = sp.lo;
        }
#pragma unroll
        for (int nd = 0; nd < kD / 16; ++nd) {
          uint32_t bh[4], bl[4];
          ldsm_b_kn<kChunks>(bh, b_hi, nd * 16, ks * 16, lane);
          ldsm_b_kn<kChunks>(bl, b_lo, nd * 16, ks * 16, lane);
          const uint32_t h0[2] = {bh[0], bh[1]}, h1[2] = {bh[2], bh[3]};
          const uint32_t l0[2] = {bl[0], bl[1]}, l1[2] = {bl[2], bl[3]};
          mma_16816(acc[mt][2 * nd], a_hi, h0, Bf16Tag{});
          mma_16816(acc[mt][2 * nd], a_hi, l0, Bf16Tag{});
          mma_16816(acc[mt][2 * nd + 1], a_hi, h1, Bf16Tag{});
          mma_16816(acc[mt][2 * nd + 1], a_hi, l1, Bf16Tag{});
          if constexpr (kSplitA) {
            mma_16816(acc[mt][2 * nd], a_lo, h0, Bf16Tag{});
            mma_16816(acc[mt][2 * nd + 1], a_lo, h1, Bf16Tag{});
          }
        }
      }
    }
  }
};

// Stores this thread's fp32 accumulators (the m16n8 layout: rows first_row + 16 mt + g + 8 r, columns 8 nt + 2 t)
// into `head`, the lq x kD rows of one (b, h); rows at or past lq are left alone. O_s and O_l of the saved state.
template <int kD, int kM, int kNTiles>
__device__ __forceinline__ void store_rows_f32(float* head, const float (&acc)[kM][kNTiles][4], int64_t first_row,
                                               int64_t lq, int g, int t) {
#pragma unroll
  for (int nt = 0; nt < kNTiles; ++nt) {
    const int c = nt * 8 + 2 * t;
#pragma unroll
    for (int mt = 0; mt < kM; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t row = first_row + mt * 16 + g + 8 * r;
        if (row < lq)
          *reinterpret_cast<float2*>(head + row * kD + c) = make_float2(acc[mt][nt][2 * r], acc[mt][nt][2 * r + 1]);
      }
    }
  }
}

template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocksPerSm)
    forward_kernel(const __grid_constant__ ForwardParams p) {  // grid constant: the TMA reads its tensor maps there
  using T = typename Traits::Element;
  constexpr int kD = Traits::kHeadDim, kBQ = Traits::kBlockQ, kM = Traits::kMTiles;
  // bf16 inputs: A = phi(q) / n enters the G and H products as bf16 (8 bits, the input precision), staged in the
  // Q tile. fp16 inputs keep 11+ bits: A is split into hi + lo and computed from Q on the fly.
  constexpr bool kStagedA = std::is_same<T, __nv_bfloat16>::value;
  // 1024-byte alignment: the XOR addressing of LdsmLane needs tiles aligned to their row size.
  extern __shared__ __align__(1024) unsigned char smem[];
  const uint32_t q_tile = smem_addr(smem);
  const uint32_t stages = q_tile + Traits::kQBytes;

  const int i = blockIdx.x;
  const int64_t h = blockIdx.y, b = blockIdx.z;
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

  const int32_t* lut = p.lut + (bh * p.nq + i) * p.lut_capacity;
  const int n = min(max(__ldg(p.lut_count + bh * p.nq + i), 0), p.lut_capacity);

  // Epilogue operands: G = H W^T when W is present (then H too when O_l is saved), else H.
  const bool need_linear = p.has_weight || p.o_lin != nullptr;
  const unsigned char* ops = p.lin_ops + bh * p.lin_ops_head_stride + static_cast<int64_t>(i) * p.lin_ops_qblock_stride;
  LinearOperandLayout lay;
  lay.d = kD;
  lay.dv = kD;
  const uint32_t op_hi = Traits::kPrefetchOps ? stages + Traits::kOpsOffset : stages;
  const uint32_t op_lo = op_hi + Traits::kOperandBytes;
  const int64_t hi_off = p.has_weight ? lay.g_hi() : lay.h_hi(), lo_off = p.has_weight ? lay.g_lo() : lay.h_lo();
  // Issued once Q has landed, so that the first S product does not wait for them; the epilogue waits.
  auto prefetch_ops = [&] {
    if (Traits::kPrefetchOps && need_linear) {
      load_tile_async<kD, kD, Traits::kThreads>(op_hi, reinterpret_cast<const uint16_t*>(ops + hi_off), kD, kD, tid);
      load_tile_async<kD, kD, Traits::kThreads>(op_lo, reinterpret_cast<const uint16_t*>(ops + lo_off), kD, kD, tid);
      cp_async_commit();
    }
  };

  using Mainloop = std::conditional_t<Traits::kUseWgmma, WgmmaMainloop<Traits>, SparseMainloop<Traits>>;
  Mainloop ml;
  ml.run(p, lut, n, k_head, v_head, q_tile, stages, warp, lane, tid, prefetch_ops);

  // ---- epilogue ----
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
  const uint32_t h_hi = Traits::kPrefetchOps && p.has_weight ? stages : op_hi, h_lo = h_hi + Traits::kOperandBytes;
  if (Traits::kPrefetchOps && p.has_weight && p.o_lin != nullptr) {
    load_tile_async<kD, kD, Traits::kThreads>(h_hi, reinterpret_cast<const uint16_t*>(ops + lay.h_hi()), kD, kD, tid);
    load_tile_async<kD, kD, Traits::kThreads>(h_lo, reinterpret_cast<const uint16_t*>(ops + lay.h_lo()), kD, kD, tid);
    cp_async_commit();
  }
  if (need_linear) {
    if (!Traits::kPrefetchOps) {
      load_tile_async<kD, kD, Traits::kThreads>(op_hi, reinterpret_cast<const uint16_t*>(ops + hi_off), kD, kD, tid);
      load_tile_async<kD, kD, Traits::kThreads>(op_lo, reinterpret_cast<const uint16_t*>(ops + lo_off), kD, kD, tid);
      cp_async_commit();
    }
    const float* z = reinterpret_cast<const float*>(ops + lay.z());
    const bool empty = *reinterpret_cast<const int32_t*>(ops + lay.marginal_empty()) != 0;
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
          LinearEpilogue<Traits>::template stage_scaled_phi<FM>(q_tile, st[mt], factor[mt], warp_row0 + mt * 16,
                                                                  lane);
        });
      }
    }
    cp_async_wait<0>();
    __syncthreads();
  }
  if (p.has_weight) {
    if constexpr (kStagedA) {
      LinearEpilogue<Traits>::add_staged(ml.o, q_tile, op_hi, op_lo, warp_row0, lane);
    } else {
      SLA_FEATURE_MAP_SWITCH(fmap, FM, [&] {
        LinearEpilogue<Traits>::template add_linear<FM, true>(ml.o, q_tile, op_hi, op_lo, st, factor, warp_row0,
                                                               lane);
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
      load_tile_async<kD, kD, Traits::kThreads>(op_hi, reinterpret_cast<const uint16_t*>(ops + lay.h_hi()), kD, kD, tid);
      load_tile_async<kD, kD, Traits::kThreads>(op_lo, reinterpret_cast<const uint16_t*>(ops + lay.h_lo()), kD, kD, tid);
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
    }
#pragma unroll
    for (int mt = 0; mt < kM; ++mt)
#pragma unroll
      for (int nt = 0; nt < Traits::kNTilesO; ++nt) ml.o[mt][nt][0] = ml.o[mt][nt][1] = ml.o[mt][nt][2] = ml.o[mt][nt][3] = 0.f;
    if constexpr (kStagedA) {
      LinearEpilogue<Traits>::add_staged(ml.o, q_tile, h_hi, h_lo, warp_row0, lane);
    } else {
      SLA_FEATURE_MAP_SWITCH(fmap, FM, [&] {
        LinearEpilogue<Traits>::template add_linear<FM, true>(ml.o, q_tile, h_hi, h_lo, st, factor, warp_row0,
                                                               lane);
      });
    }
    store_rows_f32<kD>(p.o_lin + bh * p.lq * kD, ml.o, row0 + warp_row0, p.lq, g, t);
  }
}

}  // namespace sla::cuda::fwd
