// marginal_states.h: key-block states (fwd/linear_state.cu's key pass), the mask, one selection GEMM.
#include "cuda/select/marginal_states.h"

#include "core/validate.h"
#include "cuda/fwd/linear_state.h"
#include "cuda/select/select_gemm.h"

namespace sla::cuda {

MarginalMaskArgs marginal_mask_args(const Problem& p, const BlockMap& map, bool total_row) {
  MarginalMaskArgs a;
  a.lut = static_cast<const int32_t*>(map.lut.data);
  a.count = static_cast<const int32_t*>(map.count.data);
  const bool has_negl = map.negl_lut.present() && map.negl_lut.shape[3] > 0;
  a.negl_lut = has_negl ? static_cast<const int32_t*>(map.negl_lut.data) : nullptr;
  a.negl_count = has_negl ? static_cast<const int32_t*>(map.negl_count.data) : nullptr;
  a.t = static_cast<int>(map.lut.shape[3]);
  a.tn = has_negl ? static_cast<int>(map.negl_lut.shape[3]) : 0;
  a.bh = p.batch * p.heads;
  a.nq = static_cast<int>(p.map.q_blocks);
  a.nk = static_cast<int>(p.map.k_blocks);
  a.total_row = total_row;
  return a;
}

MarginalStates carve_marginal_states(const Problem& p, bool total_row, WorkspaceCarver& ws) {
  const std::size_t bh = static_cast<std::size_t>(p.batch * p.heads);
  const std::size_t nk = static_cast<std::size_t>(p.map.k_blocks);
  MarginalStates s;
  s.n = marginal_state_cols(p);
  s.rows = p.map.q_blocks + (total_row ? 1 : 0);
  // First, at the base: the forward (linear_ops_share_state) and the backward put other buffers in these bytes once
  // the selection has read them.
  s.key_states = ws.take<uint16_t>(bh * 2 * nk * s.n);
  s.mask = ws.take<uint16_t>(bh * s.rows * mask_row_stride(static_cast<int64_t>(nk)));
  s.out = ws.take<float>(bh * s.rows * s.n);
  s.gemm_workspace = ws.take<unsigned char>(kSelectGemmWorkspace);
  return s;
}

Status launch_marginal_states(const Problem& p, const TensorView& k, const TensorView& v, const BlockMap& map,
                              const Config& cfg, const MarginalStates& s, cudaStream_t stream) {
  const int64_t nk = p.map.k_blocks;
  SLA_RETURN_IF_ERROR(launch_key_block_states(p, k, v, cfg, s.key_states, s.n, stream));
  const MarginalMaskArgs ma = marginal_mask_args(p, map, s.rows > p.map.q_blocks);
  SLA_RETURN_IF_ERROR(launch_marginal_mask(ma, s.mask, stream));
  SelectGemm g;
  g.m = s.rows;
  g.n = s.n;
  g.k = 2 * nk;
  g.lda = mask_row_stride(nk);
  g.ldb = s.n;
  g.ldc = s.n;
  g.stride_a = s.rows * g.lda;
  g.stride_b = 2 * nk * s.n;
  g.stride_c = s.rows * s.n;
  g.batch = p.batch * p.heads;
  return launch_select_gemm(g, s.mask, s.key_states, s.out, s.gemm_workspace, stream);
}

}  // namespace sla::cuda
