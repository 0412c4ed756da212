// The device check of a caller's block map (the rules of include/sla/sla.h, check_block_map) for the CUDA forward
// and backward, without a host synchronisation, so that graph capture keeps working:
//   1. a kernel checks every LUT row (count in [0, T], entries in [0, Nk), distinct; the negligible row likewise
//      and disjoint from the critical one) and flags the (b, h) of a bad row;
//   2. a kernel copies the counts into the workspace, 0 for every row of a flagged head, so that the main kernels
//      (which read only the first count entries of a row) never see a bad index;
//   3. the backward pass rebuilds the inverse tables from the LUT and those counts (the caller's inverse tables are
//      shape-checked only, never read: rebuilding costs one small kernel and cannot disagree with the LUT);
//   4. after the main kernels, every output a flagged head owns is overwritten with NaN (poison_heads), and the
//      projection gradients, which sum over all heads, become NaN when any head is flagged (poison_if_any).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/backend.h"
#include "cuda/common/cuda_status.h"

namespace sla::cuda {

struct CheckedMap {
  int32_t* flags = nullptr;       // (B * H + 1): head_bad[b * H + h], then any_bad (1 when any head is flagged)
  int32_t* count = nullptr;       // (B, H, Nq) checked counts
  int32_t* negl_count = nullptr;  // (B, H, Nq) or null (Tn = 0)
  int32_t* inv_offset = nullptr;  // rebuilt inverse tables, or null (forward)
  int32_t* inv_index = nullptr;
  int32_t* negl_inv_offset = nullptr;
  int32_t* negl_inv_index = nullptr;
  int64_t heads = 0;     // H, for poison_heads
  int64_t any_slot = 0;  // B * H: the index of any_bad in flags
  BlockMap map;          // set by launch_map_check: the caller's LUTs with the pieces above
};

// Takes the check's workspace from `ws` (sizing and carving run the same sequence; see WorkspaceCarver). With
// `rebuild_inverse`, also room for the inverse tables.
CheckedMap carve_map_check(const Problem& p, bool rebuild_inverse, WorkspaceCarver& ws);

// Steps 1-3 above on `stream`; fills checked->map from `map` (the caller's, validated) and the carved pieces.
Status launch_map_check(const Problem& p, const BlockMap& map, CheckedMap* checked, cudaStream_t stream);

// Step 4: NaN into every element of the (B, H, rows, cols) tensor `t` (f32, bf16 or f16; any strides with a
// contiguous last dim; rank 3 reads as cols = 1) for each (b, h) with head_bad[b * H + h] != 0.
Status launch_poison_heads(const CheckedMap& checked, const TensorView& t, cudaStream_t stream);
// NaN into all of `t` (contiguous f32: dW, db) when *any_bad != 0.
Status launch_poison_if_any(const CheckedMap& checked, const TensorView& t, cudaStream_t stream);

}  // namespace sla::cuda
