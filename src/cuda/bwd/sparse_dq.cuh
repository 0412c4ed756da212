// dQ of the sparse branch on the tensor cores (FlashAttention-2 backward style, mma.sync m16n8k16): one CTA per 64
// rows of a query block, each warp owning 16 query rows; the loop walks the block's LUT in 64-key sub-tiles, K and V
// double-buffered with cp.async. Per sub-tile: S = Q K^T and dP = dO V^T, P = exp(s S - LSE) recomputed,
// dS = P (dP - Delta), dQ += dS K. The linear branch's share is added to the fp32 accumulator in registers; dq is
// written once.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "core/static_switch.h"
#include "cuda/bwd/sparse_bwd.h"
#include "cuda/bwd/split_mma.cuh"
#include "cuda/bwd/tile_stage.cuh"
#include "cuda/common/cuda_status.h"
#include "cuda/common/lut_row.cuh"
#include "cuda/common/softmax.cuh"

namespace sla::cuda::bwd {
namespace {

constexpr int kKeyTile = 64;  // keys per pipeline stage; bk is 64 or 128

template <int D, int BQ>
struct DqSmem {
  static constexpr int kTileBytes = BQ * D * 2, kKvBytes = kKeyTile * D * 2;
  static constexpr int q = 0, d_o = q + kTileBytes, k = d_o + kTileBytes, v = k + 2 * kKvBytes;
  static constexpr int kBytes = v + 2 * kKvBytes;
  // The epilogue stages G (split: 2 D x D b16) over the K and V buffers.
  static_assert(4 * kKvBytes >= 2 * D * D * 2, "G does not fit over the K/V buffers");
};

template <class T, int D, int BQ, FeatureMap F>
__global__ void __launch_bounds__(BQ * 2) dq_mma_kernel(BwdParams p) {
  constexpr int kThreads = BQ * 2, kNt = D / 8;
  using Smem = DqSmem<D, BQ>;
  extern __shared__ __align__(128) unsigned char smem[];
  const uint32_t base = smem_addr(smem);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  // A CTA covers BQ rows of query block i; with bq = 128 and BQ = 64 two CTAs share a block (and its LUT).
  const int per_block = p.bq / BQ;
  const int64_t b = blockIdx.z, h = blockIdx.y, i = blockIdx.x / per_block, bh = b * p.heads + h;
  const int64_t row0 = i * p.bq + (blockIdx.x % per_block) * BQ;
  const int valid_q = static_cast<int>(min64(BQ, p.lq - row0));
  if (valid_q <= 0) return;  // the second half of a short last block
  const int64_t part = bh * p.nq + i;
  const int crit = LutRow::clamp_count(p.lut_count[part], p.t_crit);
  const int subs = p.bk / kKeyTile;
  const int n_iter = crit * subs;
  const int32_t* lut = p.lut + part * p.t_crit;

  // First key of stage `it`, or -1 for an out-of-range LUT entry (loaded as zeros, masked out).
  auto stage_key0 = [&](int it) -> int64_t {
    const int j = lut[it / subs];
    if (j < 0 || j >= p.nk) return -1;
    return static_cast<int64_t>(j) * p.bk + (it % subs) * kKeyTile;
  };
  auto issue_kv = [&](int it, int buf) {
    const int64_t key0 = stage_key0(it);
    const int valid = key0 < 0 ? 0 : static_cast<int>(min64(kKeyTile, p.lk - key0));
    const int64_t safe0 = key0 < 0 ? 0 : key0;
    load_tile_async<kKeyTile, D, kThreads>(base + Smem::k + buf * Smem::kKvBytes,
                                           reinterpret_cast<const uint16_t*>(row_ptr<T>(p.k, b, h, safe0)),
                                           p.k.row_stride, valid, tid);
    load_tile_async<kKeyTile, D, kThreads>(base + Smem::v + buf * Smem::kKvBytes,
                                           reinterpret_cast<const uint16_t*>(row_ptr<T>(p.v, b, h, safe0)),
                                           p.v.row_stride, valid, tid);
  };

  load_tile_async<BQ, D, kThreads>(base + Smem::q, reinterpret_cast<const uint16_t*>(row_ptr<T>(p.q, b, h, row0)),
                                   p.q.row_stride, valid_q, tid);
  load_tile_async<BQ, D, kThreads>(base + Smem::d_o, reinterpret_cast<const uint16_t*>(row_ptr<T>(p.d_o, b, h, row0)),
                                   p.d_o.row_stride, valid_q, tid);
  if (n_iter > 0) issue_kv(0, 0);
  cp_async_commit();

  // Rows g and g + 8 of this warp's 16. Rows past Lq get P = 0 (their dq is never stored).
  const float scale_log2 = p.scale * kLog2e;
  float lse2[2], delta[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int r = warp * 16 + g + 8 * hf;
    const bool ok = r < valid_q;
    lse2[hf] = ok ? p.lse[bh * p.lq + row0 + r] * kLog2e : INFINITY;
    delta[hf] = ok ? p.delta[bh * p.lq + row0 + r] : 0.f;
  }

  float dq[kNt][4];
#pragma unroll
  for (int n = 0; n < kNt; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;

  for (int it = 0; it < n_iter; ++it) {
    __syncthreads();  // every warp is done with the buffer the next stage overwrites
    if (it + 1 < n_iter) issue_kv(it + 1, (it + 1) % 2);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const uint32_t k_tile = base + Smem::k + (it % 2) * Smem::kKvBytes;
    const uint32_t v_tile = base + Smem::v + (it % 2) * Smem::kKvBytes;

    float s[8][4], dp[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t aq[4], ado[4];
      load_a<D>(aq, base + Smem::q, warp * 16, ks * 16, lane);
      load_a<D>(ado, base + Smem::d_o, warp * 16, ks * 16, lane);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t bk4[4], bv4[4];
        load_b_nmajor<D>(bk4, k_tile, np * 16, ks * 16, lane);
        load_b_nmajor<D>(bv4, v_tile, np * 16, ks * 16, lane);
        mma<T>(s[2 * np], aq, bk4[0], bk4[1]);
        mma<T>(s[2 * np + 1], aq, bk4[2], bk4[3]);
        mma<T>(dp[2 * np], ado, bv4[0], bv4[1]);
        mma<T>(dp[2 * np + 1], ado, bv4[2], bv4[3]);
      }
    }

    // dS = P (dP - Delta), overwriting s. Keys past Lk (and of an invalid LUT entry) get P = 0.
    const int64_t key0 = stage_key0(it);
    const int64_t key_end = key0 < 0 ? 0 : min64(kKeyTile, p.lk - key0);
    ds_by_rows(s, dp, scale_log2, lse2, delta, key_end, t4);

    // dQ += dS K over the 64 keys of the stage.
#pragma unroll
    for (int kk = 0; kk < kKeyTile / 16; ++kk) {
      uint32_t ads[4];
      c_to_a<T>(ads, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t bk4[4];
        load_b_kmajor<D>(bk4, k_tile, kk * 16, np * 16, lane);
        mma<T>(dq[2 * np], ads, bk4[0], bk4[1]);
        mma<T>(dq[2 * np + 1], ads, bk4[2], bk4[3]);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  // Epilogue in registers: dq = s * (sum dS K) + phi-backward of da, da = (dO G - D_r z) / n_r (docs/SPEC.md 5), with
  // u = dO G on the tensor cores (G split, staged over the K/V buffers; Q and dO tiles are still in place).
#pragma unroll
  for (int n = 0; n < kNt; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[n][e] *= p.scale;
  if (p.has_weight) {
    const uint16_t* g_src = p.g_split + (p.complement ? part : bh) * 2 * D * D;
    load_tile_async<D, D, kThreads>(base + Smem::k, g_src, D, D, tid);
    load_tile_async<D, D, kThreads>(base + Smem::k + D * D * 2, g_src + D * D, D, D, tid);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    float da[kNt][4];
#pragma unroll
    for (int n = 0; n < kNt; ++n) da[n][0] = da[n][1] = da[n][2] = da[n][3] = 0.f;
    warp_mma_t_split<T, D, D, true, kNt>(da, base + Smem::d_o, warp * 16, base + Smem::k, base + Smem::k + D * D * 2, D,
                                         0, lane);
    const float* z = p.complement ? p.grp_z + part * p.grp_stride : p.lin_z + bh * D;
    float d_r[2], inv_n[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = warp * 16 + g + 8 * hf;
      const bool ok = r < valid_q;
      d_r[hf] = ok ? p.d_lin[bh * p.lq + row0 + r] : 0.f;
      inv_n[hf] = ok ? p.inv_n[bh * p.lq + row0 + r] : 0.f;
    }
#pragma unroll
    for (int n = 0; n < kNt; ++n) {
      const float2 zc = *reinterpret_cast<const float2*>(z + n * 8 + 2 * t4);
#pragma unroll
      for (int e = 0; e < 4; ++e) da[n][e] = (da[n][e] - d_r[e >> 1] * (e & 1 ? zc.y : zc.x)) * inv_n[e >> 1];
    }
    add_phi_backward<T, D, F>(dq, da, smem + Smem::q, warp * 16, lane);
  }
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int r = warp * 16 + g + 8 * hf;
    if (r >= valid_q) continue;
    T* dst = row_ptr_mut<T>(p.grad_q, b, h, row0 + r);
#pragma unroll
    for (int n = 0; n < kNt; ++n)
      *reinterpret_cast<uint32_t*>(dst + n * 8 + 2 * t4) = ElementTraits<T>::pack2(dq[n][2 * hf], dq[n][2 * hf + 1]);
  }
}

template <class T, int D, int BQ, FeatureMap F>
Status launch(const BwdParams& p, cudaStream_t stream) {
  const auto kernel = dq_mma_kernel<T, D, BQ, F>;
  constexpr int kBytes = DqSmem<D, BQ>::kBytes;
  if (Status st = set_dynamic_smem(kernel, kBytes, "backward: dq_mma_kernel"); !st.ok()) return st;
  const unsigned ctas = static_cast<unsigned>(p.nq) * static_cast<unsigned>(p.bq / BQ);
  kernel<<<dim3(ctas, static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch)), BQ * 2, kBytes, stream>>>(p);
  return check_launch("backward: dq_mma_kernel");
}

}  // namespace

template <class T, int D>
Status launch_dq_mma(const BwdParams& p, FeatureMap fm, cudaStream_t stream) {
  return SLA_FEATURE_MAP_SWITCH(fm, F, [&]() -> Status {
    // 64-row CTAs for both block sizes: 4 warps, two CTAs per SM, so that one CTA's prologue and epilogue
    // overlap another's main loop (measured faster than one 8-warp CTA per 128-row block, see docs/PERF.md).
    if (p.bq == 64 || p.bq == 128) return launch<T, D, 64, F>(p, stream);
    return Status::Unsupported("block_q: the CUDA backward supports 64 and 128, got " + std::to_string(p.bq));
  });
}

}  // namespace sla::cuda::bwd
