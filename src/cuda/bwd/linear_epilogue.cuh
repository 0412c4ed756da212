// The linear branch's share of dq, dk, dv (SPEC.md section 5), added to a CTA's fp32 tile of sparse gradients in
// shared memory before the single rounding to the output dtype:
//   dq_r += phi-backward of da_r = (dO[r] G - D_r z) / n_r             (G = W H^T, from g_split)
//   dk_c += phi-backward of dphi(k_c) = v_c dH^T + dz
//   dv_c += phi(k_c) dH
// on the CUDA cores, for the reference kernels (the tensor-core kernels do the same math in registers, see
// sparse_dq.cu and sparse_dkdv.cu). Call with all kThreads threads of the CTA, after a barrier.
#pragma once

#include <cstdint>

#include "cuda/bwd/bwd_params.h"
#include "cuda/bwd/tile_stage.cuh"
#include "cuda/bwd/warp_row.cuh"

namespace sla::cuda::bwd {

// Rows of the epilogue's staged sub-tiles: small, so that the largest tile kernel still fits in shared memory.
constexpr int kEpilogueRows = 16;

// Floats of scratch the epilogues need beyond the gradient tiles.
template <int D>
__host__ __device__ constexpr int linear_epilogue_scratch_floats() {
  return D * fp32_pitch(D) + 2 * kEpilogueRows * fp32_pitch(D) + D;
}

// dq_s: rows [0, valid) of query block i (first row row0), pitch fp32_pitch(D).
template <class T, int D, FeatureMap F, int kThreads = kGemmThreads>
__device__ void linear_dq_epilogue(const BwdParams& p, int64_t b, int64_t h, int64_t i, int64_t row0, int valid,
                                   float* dq_s, float* scratch) {
  constexpr int P = fp32_pitch(D), SR = kEpilogueRows, kWarps = kThreads / 32;
  float* g_s = scratch;          // D x P: G of this query group
  float* x_s = g_s + D * P;      // SR x P: dO rows
  float* u_s = x_s + SR * P;     // SR x P: dO G
  float* z_s = u_s + SR * P;     // D
  const int64_t bh = b * p.heads + h;
  const int64_t group = p.complement ? bh * p.nq + i : bh;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  stage_split_f32<D>(g_s, p.g_split + group * 2 * D * D, false);
  const float* z = p.complement ? p.grp_z + group * D : p.lin_z + bh * D;
  if (threadIdx.x < D) z_s[threadIdx.x] = z[threadIdx.x];
  for (int sub = 0; sub < valid; sub += SR) {
    const int sub_valid = min(SR, valid - sub);
    __syncthreads();
    stage_rows_f32<T, D>(x_s, row_ptr<T>(p.d_o, b, h, row0 + sub), p.d_o.row_stride, SR, sub_valid);
    __syncthreads();
    GemmAcc<SR, D, kThreads> u;
    u.zero();
    gemm_xm(u, x_s, P, g_s, P, D);
    store_acc(u, u_s, P, false);
    __syncthreads();
    for (int r = warp; r < sub_valid; r += kWarps) {
      const int64_t row = row0 + sub + r;
      const float d_r = p.d_lin[bh * p.lq + row], inv_n = p.inv_n[bh * p.lq + row];
      const WarpRow<D> u_r = load_row_f32<D>(u_s + r * P, lane);
      const WarpRow<D> z_r = load_row_f32<D>(z_s, lane);
      WarpRow<D> da;
#pragma unroll
      for (int t = 0; t < WarpRow<D>::kPer; ++t) da.v[t] = (u_r.v[t] - d_r * z_r.v[t]) * inv_n;
      const WarpRow<D> x = load_row<T, D>(row_ptr<T>(p.q, b, h, row), lane);
      const WarpRow<D> dx = feature_map_backward_row<F, D>(x, feature_map_row<F, D>(x), da);
      float* dst = dq_s + (sub + r) * P;
#pragma unroll
      for (int t = 0; t < WarpRow<D>::kPer; ++t) dst[lane + 32 * t] += dx.v[t];
    }
  }
  __syncthreads();
}

// dk_s, dv_s: rows [0, valid) of key block j (first key key0), pitch fp32_pitch(D).
template <class T, int D, FeatureMap F, int kThreads = kGemmThreads>
__device__ void linear_dkdv_epilogue(const BwdParams& p, int64_t b, int64_t h, int64_t j, int64_t key0, int valid,
                                     float* dk_s, float* dv_s, float* scratch) {
  constexpr int P = fp32_pitch(D), SR = kEpilogueRows, kWarps = kThreads / 32;
  float* m_s = scratch;          // D x P: dH^T, then dH
  float* x_s = m_s + D * P;      // SR x P: V rows, then phi(K) rows
  float* u_s = x_s + SR * P;     // SR x P: V dH^T
  float* z_s = u_s + SR * P;     // D: dz
  const int64_t bh = b * p.heads + h;
  const int64_t group = p.complement ? bh * p.nk + j : bh;
  const uint16_t* dh = p.dh_split + group * 2 * D * D;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  // dk += phi-backward of (V dH^T + dz).
  stage_split_f32<D>(m_s, dh, true);
  if (threadIdx.x < D) z_s[threadIdx.x] = p.dz_key[group * D + threadIdx.x];
  for (int sub = 0; sub < valid; sub += SR) {
    const int sub_valid = min(SR, valid - sub);
    __syncthreads();
    stage_rows_f32<T, D>(x_s, row_ptr<T>(p.v, b, h, key0 + sub), p.v.row_stride, SR, sub_valid);
    __syncthreads();
    GemmAcc<SR, D, kThreads> u;
    u.zero();
    gemm_xm(u, x_s, P, m_s, P, D);
    store_acc(u, u_s, P, false);
    __syncthreads();
    for (int r = warp; r < sub_valid; r += kWarps) {
      WarpRow<D> dphi = load_row_f32<D>(u_s + r * P, lane);
      const WarpRow<D> dz = load_row_f32<D>(z_s, lane);
#pragma unroll
      for (int t = 0; t < WarpRow<D>::kPer; ++t) dphi.v[t] += dz.v[t];
      const WarpRow<D> x = load_row<T, D>(row_ptr<T>(p.k, b, h, key0 + sub + r), lane);
      const WarpRow<D> dx = feature_map_backward_row<F, D>(x, feature_map_row<F, D>(x), dphi);
      float* dst = dk_s + (sub + r) * P;
#pragma unroll
      for (int t = 0; t < WarpRow<D>::kPer; ++t) dst[lane + 32 * t] += dx.v[t];
    }
  }
  __syncthreads();

  // dv += phi(K) dH.
  stage_split_f32<D>(m_s, dh, false);
  for (int sub = 0; sub < valid; sub += SR) {
    const int sub_valid = min(SR, valid - sub);
    __syncthreads();
    for (int r = warp; r < SR; r += kWarps) {
      WarpRow<D> a{};
      if (r < sub_valid) a = feature_map_row<F, D>(load_row<T, D>(row_ptr<T>(p.k, b, h, key0 + sub + r), lane));
      store_row_f32<D>(x_s + r * P, a, lane);
    }
    __syncthreads();
    GemmAcc<SR, D, kThreads> u;
    u.zero();
    gemm_xm(u, x_s, P, m_s, P, D);
    store_acc(u, dv_s + sub * P, P, true);
  }
  __syncthreads();
}

}  // namespace sla::cuda::bwd
