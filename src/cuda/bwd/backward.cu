// Entry points of the CUDA backward pass: workspace layout, the flat parameter block, and the order of the stages.
//
//   complement only: H_i, z_i per query block            (select/marginal_states.h)
//   G = W H^T per query group                             (linear_bwd.cu)
//   row prep: Delta_r, D_r, 1/n_r; partial E, dz, db      (linear_bwd.cu)
//   dq: sparse pass over the LUT + linear epilogue        (sparse_*.cu)
//   dH, dz per key group; dW, db when requested           (linear_bwd.cu)
//   dk, dv: sparse pass over the inverse LUT + epilogue   (sparse_*.cu)
// All on the caller's stream, no synchronisation, no atomics: the same inputs give bitwise-identical outputs.
#include <cuda_runtime.h>

#include <algorithm>

#include "core/validate.h"
#include "cuda/bwd/backward.h"
#include "cuda/bwd/bwd_params.h"
#include "cuda/bwd/linear_bwd.h"
#include "cuda/bwd/sparse_bwd.h"
#include "cuda/common/cuda_status.h"
#include "cuda/select/marginal_states.h"

namespace sla::cuda::bwd {
namespace {

struct RowChunking {
  int chunks;
  int64_t rows_per_chunk;
};

// Splits Lq into at most kMaxRowChunks chunks of whole stats tiles. Depends on the shape only.
RowChunking row_chunking(int64_t lq) {
  const int64_t tiles = (lq + kStatsTileRows - 1) / kStatsTileRows;
  const int64_t wanted = std::max<int64_t>(1, std::min<int64_t>(tiles, kMaxRowChunks));
  const int64_t tiles_per_chunk = (tiles + wanted - 1) / wanted;
  RowChunking c;
  c.rows_per_chunk = tiles_per_chunk * kStatsTileRows;
  c.chunks = static_cast<int>((lq + c.rows_per_chunk - 1) / c.rows_per_chunk);
  return c;
}

// Carves every workspace piece in a fixed order; with a null base it only counts (workspace_bytes). The Problem
// does not say whether dW and db are requested, so their partial sums (and E, which dW needs) are always counted.
void carve_workspace(const Problem& p, const Config& cfg, WorkspaceCarver& wc, BwdParams* bp, MarginalStates* ms) {
  const int64_t bh = p.batch * p.heads, dd = p.d * p.dv;
  const int64_t nq = p.map.q_blocks, nk = p.map.k_blocks;
  const bool complement = cfg.variant == Variant::complement;
  const RowChunking rc = row_chunking(p.lq);
  const int64_t parts = complement ? bh * nq : bh * rc.chunks;  // row_prep CTAs
  bp->delta = wc.take<float>(bh * p.lq);
  bp->d_lin = wc.take<float>(bh * p.lq);
  bp->inv_n = wc.take<float>(bh * p.lq);
  if (complement) {
    *ms = carve_marginal_states(p, /*total_row=*/false, wc);
    bp->grp_h = ms->out;
    bp->grp_z = ms->out + dd;
    bp->grp_stride = ms->n;
    bp->mask = ms->mask;
    bp->gemm_workspace = ms->gemm_workspace;
  }
  // Complement: G_i^T (split) and E_i per query block live in the key states' bytes when they fit there (bq > bk):
  // both are dead before the key side's selection GEMM writes that region (launch_backward's order).
  const bool alias = complement && 8 * nq * dd <= 4 * nk * ms->n;
  if (alias) {
    bp->g_split = ms->key_states;
    bp->e_part = reinterpret_cast<float*>(ms->key_states + bh * nq * 2 * dd);
  } else {
    if (p.has_weight) bp->g_split = wc.take<uint16_t>((complement ? bh * nq : bh) * 2 * dd);
    bp->e_part = wc.take<float>(parts * dd);
  }
  if (!complement) bp->e_total = wc.take<float>(bh * dd);
  bp->dz_part = wc.take<float>(parts * p.d);
  bp->db_part = wc.take<float>(parts * p.dv);
  if (p.has_weight) {
    if (complement) {
      bp->dh_rows = wc.take<uint16_t>(bh * 2 * nq * ms->n);
      bp->dh_row_stride = ms->n;
      bp->mask_t = wc.take<uint16_t>(bh * nk * mask_row_stride(nq));
      // The key side's selection output [dH^(j), dz^(j)] (fp32, n a row) takes the key states' place, which are
      // dead once H_i is selected: the same bytes. dH^(j) is then split in place.
      bp->dh_split = ms->key_states;
      bp->dz_key = reinterpret_cast<float*>(ms->key_states) + dd;
      bp->dh_key_stride = 2 * ms->n;
      bp->dz_key_stride = ms->n;
    } else {
      bp->dh_split = wc.take<uint16_t>(bh * 2 * dd);
      bp->dz_key = wc.take<float>(bh * p.d);
      bp->dh_key_stride = 2 * dd;
      bp->dz_key_stride = p.d;
    }
  }
  bp->dw_part = wc.take<float>((complement ? bh * ((nq + kDwGroup - 1) / kDwGroup) : bh) * p.dv * p.dv);
}

const int32_t* i32(const TensorView& t) { return static_cast<const int32_t*>(t.data); }
const float* f32(const TensorView& t) { return static_cast<const float*>(t.data); }

}  // namespace

std::size_t workspace_bytes(const Problem& p, const Config& cfg) {
  WorkspaceCarver wc;
  BwdParams unused;
  MarginalStates unused_states;
  carve_workspace(p, cfg, wc, &unused, &unused_states);
  return wc.bytes();
}

Status launch_backward(const Problem& p, const BackwardArgs& args, const Config& cfg, const Exec& exec) {
  if (p.d != p.dv) {
    return Status::Unsupported("v: the CUDA backward needs Dv == D (got D = " + std::to_string(p.d) +
                               ", Dv = " + std::to_string(p.dv) + ")");
  }
  if (p.dtype != DType::bf16 && p.dtype != DType::f16) {
    return Status::Unsupported(std::string("q: the CUDA backward takes bf16 or f16, got ") + dtype_name(p.dtype));
  }
  const std::size_t need = workspace_bytes(p, cfg);
  if (need > 0 && (exec.workspace == nullptr || exec.workspace_bytes < need)) {
    return {StatusCode::workspace_too_small, "exec.workspace_bytes: the CUDA backward needs " + std::to_string(need) +
                                                 " bytes, got " + std::to_string(exec.workspace_bytes)};
  }

  BwdParams bp;
  bp.q = rows_params(args.q);
  bp.k = rows_params(args.k);
  bp.v = rows_params(args.v);
  bp.o = rows_params(args.o);
  // Delta_r = dO . O_s from the forward's fp32 O_s where the caller saved it (o_sparse).
  bp.o_sparse = args.o_sparse.present() ? f32(args.o_sparse) : nullptr;
  bp.d_o = rows_params(args.d_o);
  bp.grad_q = rows_params(args.dq);
  bp.grad_k = rows_params(args.dk);
  bp.grad_v = rows_params(args.dv);
  bp.lse = f32(args.lse);
  bp.lin_h = f32(args.lin_h);
  bp.lin_z = f32(args.lin_z);
  bp.proj_w = args.proj_weight.present() ? f32(args.proj_weight) : nullptr;
  bp.proj_b = args.proj_bias.present() ? f32(args.proj_bias) : nullptr;
  bp.d_proj_w = args.d_proj_weight.present() ? static_cast<float*>(args.d_proj_weight.data) : nullptr;
  bp.d_proj_b = args.d_proj_bias.present() ? static_cast<float*>(args.d_proj_bias.data) : nullptr;

  const BlockMap& map = args.map;
  bp.lut = i32(map.lut);
  bp.lut_count = i32(map.count);
  bp.inv_offset = i32(map.inv_offset);
  bp.inv_index = i32(map.inv_index);
  if (p.map.negligible > 0) {
    bp.negl_lut = i32(map.negl_lut);
    bp.negl_count = i32(map.negl_count);
    bp.negl_inv_offset = i32(map.negl_inv_offset);
    bp.negl_inv_index = i32(map.negl_inv_index);
  }

  bp.batch = p.batch;
  bp.heads = p.heads;
  bp.lq = p.lq;
  bp.lk = p.lk;
  bp.nq = static_cast<int>(p.map.q_blocks);
  bp.nk = static_cast<int>(p.map.k_blocks);
  bp.t_crit = static_cast<int>(p.map.critical);
  bp.t_negl = static_cast<int>(p.map.negligible);
  bp.bq = cfg.block_q;
  bp.bk = cfg.block_k;
  bp.d = static_cast<int>(p.d);
  bp.dv = static_cast<int>(p.dv);
  bp.scale = static_cast<float>(p.scale);
  bp.complement = cfg.variant == Variant::complement;
  bp.eps = bp.complement ? 0.f : static_cast<float>(cfg.eps);
  bp.has_weight = p.has_weight && args.proj_weight.present();
  const RowChunking rc = row_chunking(p.lq);
  bp.row_chunks = rc.chunks;
  bp.rows_per_chunk = rc.rows_per_chunk;

  WorkspaceCarver wc(exec.workspace);
  MarginalStates states;
  carve_workspace(p, cfg, wc, &bp, &states);
  if (bp.complement) bp.mask_args = marginal_mask_args(p, map, /*total_row=*/false);

  const auto stream = static_cast<cudaStream_t>(exec.stream);
  const FeatureMap fm = cfg.feature_map;
  if (bp.complement) SLA_RETURN_IF_ERROR(launch_marginal_states(p, args.k, args.v, map, cfg, states, stream));
  SLA_RETURN_IF_ERROR(launch_gmat(bp, stream));
  SLA_RETURN_IF_ERROR(launch_row_prep(bp, p.dtype, fm, stream));
  // dq before the reductions: in the complement variant the key side's selection output overwrites G and E.
  SLA_RETURN_IF_ERROR(launch_dq(bp, p.dtype, fm, stream));
  SLA_RETURN_IF_ERROR(launch_linear_reductions(bp, p.dtype, stream));
  SLA_RETURN_IF_ERROR(launch_dkdv(bp, p.dtype, fm, stream));
  return Status::Ok();
}

}  // namespace sla::cuda::bwd
