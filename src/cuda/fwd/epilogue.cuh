// The forward's epilogue, shared by both mainloops: normalises O_s, writes the LSE (and O_s in fp32 when the
// state is saved), adds the linear branch phi(q)/n (H W^T) + b on the tensor cores, writes O (and O_l when saved).
//   LinearEpilogue    the linear branch's pieces: per-row factors 1/n, phi(q)/n staged as an operand, the products
//   ForwardEpilogue   the epilogue operands of one CTA: where they are, their prefetch during the mainloop
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/common/feature_map.cuh"
#include "cuda/common/mma_frag.cuh"
#include "cuda/common/numeric.cuh"
#include "cuda/common/params.h"
#include "cuda/common/ptx.cuh"
#include "cuda/common/quad_reduce.cuh"
#include "cuda/common/tile_io.cuh"

namespace sla::cuda::fwd {

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
struct ForwardEpilogue {
  using T = typename Traits::Element;
  static constexpr int kD = Traits::kHeadDim, kM = Traits::kMTiles;
  // bf16 inputs: A = phi(q) / n enters the G and H products as bf16 (8 bits, the input precision), staged in the
  // Q tile. fp16 inputs keep 11+ bits: A is split into hi + lo and computed from Q on the fly.
  static constexpr bool kStagedA = std::is_same<T, __nv_bfloat16>::value;

  // Epilogue operands: G = H W^T when W is present (then H too when O_l is saved), else H.
  bool need_linear;
  const unsigned char* ops;
  LinearOperandLayout lay;
  uint32_t op_hi, op_lo;
  int64_t hi_off, lo_off;

  __device__ __forceinline__ ForwardEpilogue(const ForwardParams& p, int64_t bh, int i, uint32_t stages) {
    need_linear = p.has_weight || p.o_lin != nullptr;
    ops = p.lin_ops + bh * p.lin_ops_head_stride + static_cast<int64_t>(i) * p.lin_ops_qblock_stride;
    lay.d = kD;
    lay.dv = kD;
    op_hi = Traits::kPrefetchOps ? stages + Traits::kOpsOffset : stages;
    op_lo = op_hi + Traits::kOperandBytes;
    hi_off = p.has_weight ? lay.g_hi() : lay.h_hi();
    lo_off = p.has_weight ? lay.g_lo() : lay.h_lo();
  }

  // Issued once Q has landed, so that the first S product does not wait for them; store() waits.
  __device__ __forceinline__ void prefetch_operands(int tid) const {
    if (Traits::kPrefetchOps && need_linear) {
      load_tile_async<kD, kD, Traits::kThreads>(op_hi, reinterpret_cast<const uint16_t*>(ops + hi_off), kD, kD, tid);
      load_tile_async<kD, kD, Traits::kThreads>(op_lo, reinterpret_cast<const uint16_t*>(ops + lo_off), kD, kD, tid);
      cp_async_commit();
    }
  }
};

}  // namespace sla::cuda::fwd
