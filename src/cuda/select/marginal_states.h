// H_i and z_i of every query block of the complement variant as direct sums over its marginal key blocks
// (docs/KERNELS_NEXT.md 1.2 (b2)): the per-key-block states h_j = phi(K_j)^T V_j and z_j = colsum phi(K_j), written
// once as split bf16 rows, times the 0/1 marginal mask in one GEMM per (b, h). The cost does not depend on the map:
// negligible blocks are zeros of the mask and cost nothing, and no total is formed and subtracted from, so nothing
// cancels (1.5 there).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/backend.h"
#include "cuda/common/cuda_status.h"
#include "cuda/select/marginal_mask.h"

namespace sla::cuda {

struct MarginalStates {
  int64_t n = 0;                   // elements of one state row: D * Dv (H, row-major) then D (z)
  int64_t rows = 0;                // state rows per (b, h) in `out`: Nq, or Nq + 1 with the total row
  uint16_t* key_states = nullptr;  // (BH, 2 Nk, n) bf16: the hi rows of every key block, then the lo rows
  uint16_t* mask = nullptr;        // (BH, rows, mask_row_stride(Nk)) bf16 (marginal_mask.h)
  float* out = nullptr;            // (BH, rows, n) fp32: row i = [H_i, z_i]; row Nq = [H, z] over all keys
  void* gemm_workspace = nullptr;
};

inline int64_t marginal_state_cols(const Problem& p) { return p.d * p.dv + p.d; }

// Takes the buffers from `ws` (a dry run with a null base only counts).
MarginalStates carve_marginal_states(const Problem& p, bool total_row, WorkspaceCarver& ws);

// The mask arguments of a checked map (map_check.h).
MarginalMaskArgs marginal_mask_args(const Problem& p, const BlockMap& map, bool total_row);

// Fills s.out (and s.key_states, s.mask on the way) on `stream`; cfg gives the feature map and the key block size.
Status launch_marginal_states(const Problem& p, const TensorView& k, const TensorView& v, const BlockMap& map,
                              const Config& cfg, const MarginalStates& s, cudaStream_t stream);

}  // namespace sla::cuda
