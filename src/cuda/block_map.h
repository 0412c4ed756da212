// Launchers of the GPU block map (docs/SPEC.md section 1), called by api_cuda.cu after validation.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "core/backend.h"

namespace sla::cuda {

// Workspace of launch_predict_block_map: pooled Q and K (fp32) and the sums of groups of key blocks (smooth-K's mean).
std::size_t block_map_workspace_bytes(const Problem& p, const Config& cfg);

// Smooth-K, pooling, scores, top-T (ties to the lower index), the negligible set and, when map.inv_* are present,
// the inverse tables. Every table is written by the kernels; no host synchronisation.
Status launch_predict_block_map(const Problem& p, const TensorView& q, const TensorView& k, const Config& cfg,
                                const BlockMap& map, void* workspace, cudaStream_t stream);

// Inverse tables (map.inv_*, and map.negl_inv_* when present) from map.lut/count (and negl_*). No workspace.
Status launch_invert_block_map(const Problem& p, const BlockMap& map, cudaStream_t stream);

}  // namespace sla::cuda
