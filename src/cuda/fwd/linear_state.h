// Launchers of the linear-branch state pass (docs/SPEC.md section 3): H = phi(K)^T V and z = colsum phi(K) in fp32,
// reduced in a fixed order (global variant) or selected per query block by the marginal mask (complement variant),
// and the epilogue operands of the forward kernel (LinearOperandLayout).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "core/backend.h"
#include "cuda/common/params.h"

namespace sla::cuda {

struct LinearStatePlan {
  int64_t groups = 0;          // key groups per (b, h) whose partial states are summed
  int64_t rows_per_group = 0;  // keys per group (the key block size for the complement variant)
  LinearOperandLayout layout;
  int64_t operand_blocks = 0;  // LinearOperandLayout blocks per (b, h): 1 (global) or Nq (complement)
};

LinearStatePlan plan_linear_state(const Problem& p, const Config& cfg);
std::size_t linear_state_workspace_bytes(const Problem& p, const Config& cfg);

// Whether the operand blocks (plan.operand_blocks of layout.bytes() per (b, h)) fit at the start of the state
// workspace and may live there: complement variant, where they take the place of the key-block states, which are
// dead once the selection GEMM has run (when bq > bk, the same size). Depends on the shape only.
bool linear_ops_share_state(const Problem& p, const Config& cfg);

// Per-key-block states h_j = phi(K_j)^T V_j and z_j = colsum phi(K_j) (key blocks of cfg.block_k rows) as split
// bf16 rows: per (b, h), row j of `out` holds the hi part of [h_j (D x Dv, row-major), z_j (D)] and row Nk + j its lo
// part; rows are `ld` elements apart (select/marginal_states.h multiplies them by the marginal mask).
Status launch_key_block_states(const Problem& p, const TensorView& k, const TensorView& v, const Config& cfg,
                               uint16_t* out, int64_t ld, cudaStream_t stream);

// Fills the operand blocks at `lin_ops` (B * H * operand_blocks of layout.bytes()) and, when present, args.lin_h /
// args.lin_z. `workspace` holds the partial or selected states (linear_state_workspace_bytes). args.map is a checked
// map (map_check.h).
Status launch_linear_state(const Problem& p, const ForwardArgs& args, const Config& cfg, unsigned char* lin_ops,
                           void* workspace, cudaStream_t stream);

}  // namespace sla::cuda
