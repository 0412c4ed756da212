// The flat argument block of every backward kernel (raw pointers, int64 element strides, sizes) and the workspace
// pieces the kernels hand to each other. Built once on the host by backward.cu; kernels take it by value.
#pragma once

#include <cstdint>

#include "cuda/common/params.h"
#include "cuda/select/marginal_mask.h"
#include "sla/config.h"

namespace sla::cuda::bwd {

// Query rows per tile of the row-preparation kernel (and of the CUDA-core linear kernels).
constexpr int kStatsTileRows = 64;
// Upper bound on the row chunks per (b, h) of the global variant's reductions: enough CTAs to fill the GPU at one
// head, few enough partial sums (D x Dv fp32 each) to keep the workspace small. Fixed, so results do not depend on
// the card.
constexpr int kMaxRowChunks = 64;
// Query blocks per dW partial of the complement variant (one CTA sums E_i^T H_i over them in order).
constexpr int kDwGroup = 8;

struct BwdParams {
  RowsParams q, k, v, o, d_o;  // inputs, dtype T
  RowsParams grad_q, grad_k, grad_v;  // outputs dq, dk, dv, dtype T

  const float* lse = nullptr;    // (B, H, Lq) natural log
  const float* o_sparse = nullptr;  // (B, H, Lq, Dv) or null: the forward's O_s in fp32, for Delta_r
  const float* lin_h = nullptr;  // (B, H, D, Dv): H over all keys
  const float* lin_z = nullptr;  // (B, H, D)
  const float* proj_w = nullptr;  // (Dv, Dv) row-major or null (W = 0)
  const float* proj_b = nullptr;  // (Dv) or null
  float* d_proj_w = nullptr;      // out (Dv, Dv) or null
  float* d_proj_b = nullptr;      // out (Dv) or null

  // Block map, all contiguous int32 per (b, h).
  const int32_t* lut = nullptr;         // (B, H, Nq, T)
  const int32_t* lut_count = nullptr;   // (B, H, Nq)
  const int32_t* negl_lut = nullptr;    // (B, H, Nq, Tn) or null
  const int32_t* negl_count = nullptr;  // (B, H, Nq) or null
  const int32_t* inv_offset = nullptr;  // (B, H, Nk + 1)
  const int32_t* inv_index = nullptr;   // (B, H, Nq * T)
  const int32_t* negl_inv_offset = nullptr;  // (B, H, Nk + 1) or null
  const int32_t* negl_inv_index = nullptr;   // (B, H, Nq * Tn) or null

  int64_t batch = 0, heads = 0, lq = 0, lk = 0;
  int nq = 0, nk = 0, t_crit = 0, t_negl = 0;
  int bq = 0, bk = 0;
  int d = 0, dv = 0;
  float scale = 0.f;  // softmax scale s
  float eps = 0.f;    // global variant's epsilon
  bool complement = false;
  bool has_weight = false;  // false: W = 0, so the linear branch sends no gradient to q, k, v

  // Row chunking of the reductions over query rows (global variant; the complement variant uses query blocks).
  int row_chunks = 0;          // per (b, h)
  int64_t rows_per_chunk = 0;  // multiple of kStatsTileRows

  // ---- workspace ----
  // Split matrices (split_mma.cuh) are two row-major bf16 arrays, hi then lo, of D x D each.
  float* delta = nullptr;  // (B, H, Lq): Delta_r = dO . O_s
  float* d_lin = nullptr;  // (B, H, Lq): D_r = dO_l . O_l
  float* inv_n = nullptr;  // (B, H, Lq): 1 / n_r, or 0 where the complement row's O_l is defined as 0
  // Complement variant only: H_i and z_i of query block `part` at grp_h / grp_z + part * grp_stride (the rows of the
  // selection GEMM's output, select/marginal_states.h).
  float* grp_h = nullptr;
  float* grp_z = nullptr;
  int64_t grp_stride = 0;
  // G_g = W H_g^T per query group (split); group = (b, h) or (b, h, i).
  uint16_t* g_split = nullptr;
  // Per row chunk (global) or query block (complement): E = sum_r (a_r / n_r)^T dO_r (D x Dv), dz, db partials.
  float* e_part = nullptr;
  float* e_total = nullptr;  // global variant: E per (b, h)
  float* dz_part = nullptr;
  float* db_part = nullptr;
  // Complement only: [dH_i = E_i W, dz_i] per query block as split bf16 rows (hi rows of the head, then lo rows;
  // dh_row_stride elements a row), the B operand of the key side's selection GEMM.
  uint16_t* dh_rows = nullptr;
  int64_t dh_row_stride = 0;
  // dH (split: hi then lo, D x Dv each) and dz each key block receives, at dh_split + group * dh_key_stride and
  // dz_key + group * dz_key_stride; group = (b, h) (global) or (b, h, j) (complement).
  uint16_t* dh_split = nullptr;
  float* dz_key = nullptr;
  int64_t dh_key_stride = 0, dz_key_stride = 0;
  // Complement only: the marginal mask (BH, Nq, 2 Nk) and its transpose (BH, Nk, 2 Nq), rows padded to
  // mask_row_stride (select/marginal_mask.h), and cuBLASLt's scratch for the selection GEMMs.
  const uint16_t* mask = nullptr;
  uint16_t* mask_t = nullptr;
  MarginalMaskArgs mask_args;
  void* gemm_workspace = nullptr;
  // dW partial sums E^T H: per (b, h) (global) or per (b, h, group of kDwGroup query blocks) (complement).
  float* dw_part = nullptr;
};

}  // namespace sla::cuda::bwd
