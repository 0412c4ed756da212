// Softmax of score tiles held in a warp's accumulator registers (the m16n8 layout of cuda/common/quad_reduce.cuh,
// which mma.sync and wgmma share), in the exp2 domain: scores are scaled by scale log2(e), so that each exponential
// is one ex2 instruction. The forward's online softmax and the backward's recomputation of P from the LSE, shared by
// the mma.sync (sm_80) and wgmma (sm_90a) kernels.
#pragma once

#include <cmath>

#include "cuda/common/mask.cuh"
#include "cuda/common/numeric.cuh"
#include "cuda/common/quad_reduce.cuh"

namespace sla::cuda {

// Row statistics of one thread: rows g and g + 8 of an m-tile's 16 (g = lane / 4).
struct RowPair {
  float v[2];
};

// The forward's online softmax (FlashAttention-2) over kM m-tiles per warp: the mma.sync mainloop has two at bq = 128,
// the wgmma one (a warp's 16 rows of its warpgroup's 64) one. Per key block: update() moves the running max over the
// block's scores and turns them into P, rescale() applies the correction to what O and l hold so far.
template <int kM>
struct OnlineSoftmax {
  RowPair m[kM];  // running max of the scaled scores, log2 units
  RowPair l[kM];  // running sum of exp2(x - m), this thread's columns only

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int mt = 0; mt < kM; ++mt) {
      m[mt].v[0] = m[mt].v[1] = -INFINITY;
      l[mt].v[0] = l[mt].v[1] = 0.f;
    }
  }

  // Row r (0: g, 1: g + 8) of m-tile mt over this block's raw scores s: s becomes P = exp2(s scale_log2 - max) relative
  // to the new running max, m moves to it; returns the factor for what O and l hold so far, and this block's part of
  // the row sum (this thread's columns) in sum.
  template <int kN>
  __device__ __forceinline__ float update_row(float (&s)[kN][4], int mt, int r, float scale_log2, float& sum) {
    float mx = m[mt].v[r];
#pragma unroll
    for (int nt = 0; nt < kN; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]) * scale_log2);
    mx = quad_max(mx);  // finite: every key block holds at least one real key
    const float corr = fast_exp2(m[mt].v[r] - mx);
    m[mt].v[r] = mx;
    float acc = 0.f;
#pragma unroll
    for (int nt = 0; nt < kN; ++nt) {
      s[nt][2 * r] = fast_exp2(fmaf(s[nt][2 * r], scale_log2, -mx));
      s[nt][2 * r + 1] = fast_exp2(fmaf(s[nt][2 * r + 1], scale_log2, -mx));
      acc += s[nt][2 * r] + s[nt][2 * r + 1];
    }
    sum = acc;
    return corr;
  }
  // l and row r of the O accumulator o (m-tile mt) rescaled by corr; the block's sum added to l.
  template <int kN>
  __device__ __forceinline__ void rescale_row(float (&o)[kN][4], int mt, int r, float corr, float sum) {
    l[mt].v[r] = l[mt].v[r] * corr + sum;
#pragma unroll
    for (int nt = 0; nt < kN; ++nt) {
      o[nt][2 * r] *= corr;
      o[nt][2 * r + 1] *= corr;
    }
  }

  // Both rows of m-tile mt, as two steps: a pipelined loop rescales O only once the product still writing it is done.
  template <int kN>
  __device__ __forceinline__ void update(float (&s)[kN][4], int mt, float scale_log2, float (&corr)[2],
                                         float (&sum)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) corr[r] = update_row(s, mt, r, scale_log2, sum[r]);
  }
  template <int kN>
  __device__ __forceinline__ void rescale(float (&o)[kN][4], int mt, const float (&corr)[2], const float (&sum)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) rescale_row(o, mt, r, corr[r], sum[r]);
  }
  // Every m-tile, each row updated and rescaled in turn: O is not being written by a product meanwhile.
  template <int kNS, int kNO>
  __device__ __forceinline__ void step(float (&s)[kM][kNS][4], float (&o)[kM][kNO][4], float scale_log2) {
#pragma unroll
    for (int mt = 0; mt < kM; ++mt) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float sum;
        const float corr = update_row(s[mt], mt, r, scale_log2, sum);
        rescale_row(o[mt], mt, r, corr, sum);
      }
    }
  }

  // The row's sum over all its columns, in every thread of the quad.
  __device__ __forceinline__ float row_sum(int mt, int r) const { return quad_sum(l[mt].v[r]); }
  // The row's natural-log LSE from its sum l > 0.
  __device__ __forceinline__ float lse(int mt, int r, float row_l) const {
    return (m[mt].v[r] + __log2f(row_l)) * kLn2;
  }
};

// ---- backward: P recomputed from the forward's LSE (no running max), dS = P (dP - Delta) ----

// P of one score: exp2(s scale_log2 - LSE log2(e)).
__device__ __forceinline__ float recompute_p(float s, float scale_log2, float lse2) {
  return fast_exp2(s * scale_log2 - lse2);
}

// The dQ pass (rows = queries): dS = P (dP - Delta) into s, with LSE (log2 units) and Delta per row g, g + 8 and
// P = 0 at key columns at or past `limit` (t = lane % 4).
template <int kN, class Index>
__device__ __forceinline__ void ds_by_rows(float (&s)[kN][4], const float (&dp)[kN][4], float scale_log2,
                                           const float (&lse2)[2], const float (&delta)[2], Index limit, int t) {
  const ColumnLimit<Index> keys{limit, t};
#pragma unroll
  for (int n = 0; n < kN; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float prob = keys.keep(n, e) ? recompute_p(s[n][e], scale_log2, lse2[e >> 1]) : 0.f;
      s[n][e] = prob * (dp[n][e] - delta[e >> 1]);
    }
}

// The transposed dK/dV pass (rows = keys, columns = queries): P^T into s, dS^T into dp, with LSE (log2 units) and
// Delta per column, lse2(n, e) and delta(n, e) of element e of n-tile n (rows past Lq: LSE = +inf, so P = 0).
template <int kN, class Lse2, class Delta>
__device__ __forceinline__ void p_ds_by_cols(float (&s)[kN][4], float (&dp)[kN][4], float scale_log2, Lse2&& lse2,
                                             Delta&& delta) {
#pragma unroll
  for (int n = 0; n < kN; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float prob = recompute_p(s[n][e], scale_log2, lse2(n, e));
      s[n][e] = prob;
      dp[n][e] = prob * (dp[n][e] - delta(n, e));
    }
}

}  // namespace sla::cuda
