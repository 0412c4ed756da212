// dK and dV of the sparse branch on the tensor cores (mma.sync m16n8k16): one CTA of 8 warps per key block, the
// key block's K and V resident in shared memory, the loop walking the inverse LUT (the query blocks that selected
// this key block) in 64-row query sub-tiles, Q, dO, LSE and Delta double-buffered with cp.async.
//
// Transposed formulation, so that each warp owns whole rows of dK and dV: per sub-tile S^T = K Q^T and
// dP^T = V dO^T, P^T = exp(s S^T - LSE) recomputed, dS^T = P^T (dP^T - Delta), dV += P^T dO, dK += dS^T Q.
// Warp w owns keys 16 w .. 16 w + 15 of the block (bk / 16 warps; with bk = 64 two CTAs share an SM, so one's
// prologue and epilogue overlap the other's main loop). No atomics anywhere: each key block's gradients come from
// one CTA. The linear branch's share is added in registers and dk, dv are written once.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "core/static_switch.h"
#include "cuda/bwd/sparse_bwd.h"
#include "cuda/bwd/split_mma.cuh"
#include "cuda/bwd/tile_stage.cuh"
#include "cuda/common/cuda_status.h"
#include "cuda/common/softmax.cuh"

namespace sla::cuda::bwd {
namespace {

constexpr int kQueryTile = 64;  // query rows per pipeline stage; bq is 64 or 128

template <int D, int BK>
struct DkdvSmem {
  static constexpr int kKvBytes = BK * D * 2, kQBytes = kQueryTile * D * 2;
  static constexpr int k = 0, v = k + kKvBytes, q = v + kKvBytes, d_o = q + 2 * kQBytes;
  static constexpr int lse = d_o + 2 * kQBytes, delta = lse + 2 * kQueryTile * 4;
  static constexpr int kBytes = delta + 2 * kQueryTile * 4;
  // The epilogue stages dH (split: 2 D x D b16) over the Q and dO buffers.
  static_assert(4 * kQBytes >= 2 * D * D * 2, "dH does not fit over the Q/dO buffers");
};

template <class T, int D, int BK, FeatureMap F>
__global__ void __launch_bounds__(BK * 2) dkdv_mma_kernel(BwdParams p) {
  constexpr int kThreads = BK * 2, kCols = kQueryTile, kSt = kCols / 8, kNt = D / 8;
  using Smem = DkdvSmem<D, BK>;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t base = smem_addr(smem);
  float* lse_s = reinterpret_cast<float*>(smem + Smem::lse);
  float* delta_s = reinterpret_cast<float*>(smem + Smem::delta);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int key_warp = warp;
  const int64_t b = blockIdx.z, h = blockIdx.y, j = blockIdx.x, bh = b * p.heads + h;
  const int64_t key0 = j * BK;
  const int valid_k = static_cast<int>(min64(BK, p.lk - key0));
  const int32_t* off = p.inv_offset + bh * (p.nk + 1);
  const int32_t* index = p.inv_index + bh * static_cast<int64_t>(p.nq) * p.t_crit;
  const int first = off[j];
  const int subs = p.bq / kQueryTile;
  const int n_iter = (off[j + 1] - first) * subs;

  load_tile_async<BK, D, kThreads>(base + Smem::k, reinterpret_cast<const uint16_t*>(row_ptr<T>(p.k, b, h, key0)),
                                   p.k.row_stride, valid_k, tid);
  load_tile_async<BK, D, kThreads>(base + Smem::v, reinterpret_cast<const uint16_t*>(row_ptr<T>(p.v, b, h, key0)),
                                   p.v.row_stride, valid_k, tid);

  // Stage `it`: query rows q0 .. q0 + 63 of the it / subs-th query block of the inverse list. Rows past Lq (or of an
  // out-of-range entry) are zero-filled and get LSE = +inf, hence P = 0 and dS = 0.
  auto issue_q = [&](int it, int buf) {
    const int qi = index[first + it / subs];
    const int64_t q0 = static_cast<int64_t>(qi) * p.bq + (it % subs) * kQueryTile;
    const int valid = (qi < 0 || qi >= p.nq) ? 0 : static_cast<int>(max64(0, min64(kQueryTile, p.lq - q0)));
    const int64_t safe0 = valid > 0 ? q0 : 0;
    load_tile_async<kQueryTile, D, kThreads>(base + Smem::q + buf * Smem::kQBytes,
                                             reinterpret_cast<const uint16_t*>(row_ptr<T>(p.q, b, h, safe0)),
                                             p.q.row_stride, valid, tid);
    load_tile_async<kQueryTile, D, kThreads>(base + Smem::d_o + buf * Smem::kQBytes,
                                             reinterpret_cast<const uint16_t*>(row_ptr<T>(p.d_o, b, h, safe0)),
                                             p.d_o.row_stride, valid, tid);
    if (tid < kQueryTile) {
      const bool ok = tid < valid;
      lse_s[buf * kQueryTile + tid] = ok ? p.lse[bh * p.lq + q0 + tid] * kLog2e : INFINITY;
      delta_s[buf * kQueryTile + tid] = ok ? p.delta[bh * p.lq + q0 + tid] : 0.f;
    }
  };
  if (n_iter > 0) issue_q(0, 0);
  cp_async_commit();

  const float scale_log2 = p.scale * kLog2e;
  float dk[kNt][4], dv[kNt][4];
#pragma unroll
  for (int n = 0; n < kNt; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.f;

  constexpr int col0 = 0;  // this warp's first query column within the stage
  for (int it = 0; it < n_iter; ++it) {
    __syncthreads();  // every warp is done with the buffer the next stage overwrites
    if (it + 1 < n_iter) issue_q(it + 1, (it + 1) % 2);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int buf = it % 2;
    const uint32_t q_tile = base + Smem::q + buf * Smem::kQBytes;
    const uint32_t do_tile = base + Smem::d_o + buf * Smem::kQBytes;

    float s[kSt][4], dp[kSt][4];
#pragma unroll
    for (int n = 0; n < kSt; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t ak[4], av[4];
      load_a<D>(ak, base + Smem::k, key_warp * 16, ks * 16, lane);
      load_a<D>(av, base + Smem::v, key_warp * 16, ks * 16, lane);
#pragma unroll
      for (int np = 0; np < kSt / 2; ++np) {
        uint32_t bq4[4], bo4[4];
        load_b_nmajor<D>(bq4, q_tile, col0 + np * 16, ks * 16, lane);
        load_b_nmajor<D>(bo4, do_tile, col0 + np * 16, ks * 16, lane);
        mma<T>(s[2 * np], ak, bq4[0], bq4[1]);
        mma<T>(s[2 * np + 1], ak, bq4[2], bq4[3]);
        mma<T>(dp[2 * np], av, bo4[0], bo4[1]);
        mma<T>(dp[2 * np + 1], av, bo4[2], bo4[3]);
      }
    }

    // P^T into s, dS^T into dp, with LSE and Delta of query column col(n, e) from this stage's buffer.
    const auto col = [&](int n, int e) {
      return col0 + n * 8 + 2 * t4 + (e & 1);
    };
    const auto lse2_of = [&](int n, int e) {
      return lse_s[buf * kQueryTile + col(n, e)];
    };
    const auto delta_of = [&](int n, int e) {
      return delta_s[buf * kQueryTile + col(n, e)];
    };
    p_ds_by_cols(s, dp, scale_log2, lse2_of, delta_of);

    // dV += P^T dO and dK += dS^T Q over this warp's query columns.
#pragma unroll
    for (int kk = 0; kk < kCols / 16; ++kk) {
      uint32_t ap[4], ads[4];
      c_to_a<T>(ap, s[2 * kk], s[2 * kk + 1]);
      c_to_a<T>(ads, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t bo4[4], bq4[4];
        load_b_kmajor<D>(bo4, do_tile, col0 + kk * 16, np * 16, lane);
        load_b_kmajor<D>(bq4, q_tile, col0 + kk * 16, np * 16, lane);
        mma<T>(dv[2 * np], ap, bo4[0], bo4[1]);
        mma<T>(dv[2 * np + 1], ap, bo4[2], bo4[3]);
        mma<T>(dk[2 * np], ads, bq4[0], bq4[1]);
        mma<T>(dk[2 * np + 1], ads, bq4[2], bq4[3]);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();

#pragma unroll
  for (int n = 0; n < kNt; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] *= p.scale;

  // Linear branch in registers (docs/SPEC.md 5): dv += phi(K) dH, dk += phi-backward of (V dH^T + dz), with dH split
  // and staged over the Q/dO buffers (K and V are still in place). dv goes first and is stored before dk's product, so
  // that at most two accumulator sets are live at a time.
  const int64_t group = p.complement ? bh * p.nk + j : bh;
  const uint32_t dh_hi = base + Smem::q, dh_lo = dh_hi + D * D * 2;
  if (p.has_weight) {
    const uint16_t* dh_src = p.dh_split + group * p.dh_key_stride;
    load_tile_async<D, D, kThreads>(dh_hi, dh_src, D, D, tid);
    load_tile_async<D, D, kThreads>(dh_lo, dh_src + D * D, D, D, tid);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    FeatureRowStats st[2];
    row_phi_stats<T, D, F>(st, smem + Smem::k, key_warp * 16, lane);
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      // A fragment of phi(K) for columns 16 ks .. 16 ks + 15, split into hi and lo.
      float a[2][4];  // [column half][rows g (0, 1), g + 8 (2, 3)]
#pragma unroll
      for (int ch = 0; ch < 2; ++ch)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const float2 x = tile_pair<T, D>(smem + Smem::k, key_warp * 16 + g + 8 * hf, ks * 16 + ch * 8 + 2 * t4);
          a[ch][2 * hf] = phi_forward<F>(x.x, st[hf]);
          a[ch][2 * hf + 1] = phi_forward<F>(x.y, st[hf]);
        }
      uint32_t ahi[4], alo[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        // a0 = (g, cols 2t..), a1 = (g + 8, ..), a2 = (g, cols 8 + 2t..), a3 = (g + 8, 8 + ..)
        const int ch = q >> 1, hf = q & 1;
        const SplitBf16 sp = split_bf16x2(a[ch][2 * hf], a[ch][2 * hf + 1]);
        ahi[q] = sp.hi;
        alo[q] = sp.lo;
      }
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t bh4[4], bl4[4];
        load_b_kmajor<D>(bh4, dh_hi, ks * 16, np * 16, lane);
        load_b_kmajor<D>(bl4, dh_lo, ks * 16, np * 16, lane);
        mma_bf16(dv[2 * np], ahi, bh4[0], bh4[1]);
        mma_bf16(dv[2 * np + 1], ahi, bh4[2], bh4[3]);
        mma_bf16(dv[2 * np], ahi, bl4[0], bl4[1]);
        mma_bf16(dv[2 * np + 1], ahi, bl4[2], bl4[3]);
        mma_bf16(dv[2 * np], alo, bh4[0], bh4[1]);
        mma_bf16(dv[2 * np + 1], alo, bh4[2], bh4[3]);
      }
    }
  }
  store_acc_rows<T, kNt>(p.grad_v, b, h, key0, key_warp * 16, valid_k, dv, lane);
  if (p.has_weight) {
    float dphi[kNt][4];
#pragma unroll
    for (int n = 0; n < kNt; ++n) dphi[n][0] = dphi[n][1] = dphi[n][2] = dphi[n][3] = 0.f;
    // V dH^T: B[k = e][n = d] = dH[d][e], i.e. dH stored n-major.
    warp_mma_t_split<T, D, D, false, kNt>(dphi, base + Smem::v, key_warp * 16, dh_hi, dh_lo, D, 0, lane);
    const float* dz = p.dz_key + group * p.dz_key_stride;
#pragma unroll
    for (int n = 0; n < kNt; ++n) {
      const float2 zc = *reinterpret_cast<const float2*>(dz + n * 8 + 2 * t4);
      dphi[n][0] += zc.x, dphi[n][1] += zc.y, dphi[n][2] += zc.x, dphi[n][3] += zc.y;
    }
    add_phi_backward<T, D, F>(dk, dphi, smem + Smem::k, key_warp * 16, lane);
  }
  store_acc_rows<T, kNt>(p.grad_k, b, h, key0, key_warp * 16, valid_k, dk, lane);
}

template <class T, int D, int BK, FeatureMap F>
Status launch(const BwdParams& p, cudaStream_t stream) {
  const auto kernel = dkdv_mma_kernel<T, D, BK, F>;
  constexpr int kBytes = DkdvSmem<D, BK>::kBytes;
  if (Status st = set_dynamic_smem(kernel, kBytes, "backward: dkdv_mma_kernel"); !st.ok()) return st;
  kernel<<<dim3(p.nk, static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch)), BK * 2, kBytes, stream>>>(p);
  return check_launch("backward: dkdv_mma_kernel");
}

}  // namespace

template <class T, int D>
Status launch_dkdv_mma(const BwdParams& p, FeatureMap fm, cudaStream_t stream) {
  return SLA_FEATURE_MAP_SWITCH(fm, F, [&]() -> Status {
    if (p.bk == 64) return launch<T, D, 64, F>(p, stream);
    if (p.bk == 128) return launch<T, D, 128, F>(p, stream);
    return Status::Unsupported("block_k: the CUDA backward supports 64 and 128, got " + std::to_string(p.bk));
  });
}

}  // namespace sla::cuda::bwd
