// Launchers of the linear-branch state pass (docs/SPEC.md section 3): H = phi(K)^T V and z = colsum phi(K) in fp32,
// reduced in a fixed order, and the epilogue operands of the forward kernel (LinearOperandLayout).
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

// Fills the operand blocks at `lin_ops` (B * H * operand_blocks of layout.bytes()) and, when present, args.lin_h /
// args.lin_z. `workspace` holds the partial states (linear_state_workspace_bytes).
Status launch_linear_state(const Problem& p, const ForwardArgs& args, const Config& cfg, unsigned char* lin_ops,
                           void* workspace, cudaStream_t stream);

}  // namespace sla::cuda
