// Argument checking shared by every backend. api.cpp calls one validate_* function per public entry point; on
// success it has filled a Problem (backend.h) and the backend may assume everything listed below holds.
//
// What is checked: ranks, shapes, dtypes, devices, null pointers, strides (contiguous last dim, every stride >= 1,
// no int64 overflow of any size or address computation), presence of optional inputs, the Config ranges and the
// Exec workspace. Every failure names the argument and the expected value.
//
// What is NOT checked, on purpose:
// - NaN/Inf in tensor data. Reading device memory would need a synchronisation; such values propagate to the
//   outputs (never a hang or a crash).
// - The contents of a caller-supplied LUT (sorted, distinct, in range) and of its inverse tables: the data may
//   live on the device. core/map_contents.h checks them on the host (the CPU backend before every forward and
//   backward, and sla::check_block_map); the CUDA backend checks them in a kernel (cuda/map_check.h).
// - Aliasing between inputs and outputs.
#pragma once

#include <cstddef>

#include "core/backend.h"
#include "sla/sla.h"

#ifndef SLA_RETURN_IF_ERROR
#define SLA_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::sla::Status sla_status_ = (expr);        \
    if (!sla_status_.ok()) return sla_status_; \
  } while (0)
#endif

namespace sla {

// Largest head dim (D and Dv) any backend accepts; the CUDA backend restricts further in check_supported.
constexpr int64_t kMaxHeadDim = 1024;

// Block sizes the API accepts; the CUDA backend supports a subset and says so itself.
bool is_allowed_block_size(int block);

// Config ranges (docs/SPEC.md section 6). NaN anywhere is an error.
Status validate_config(const Config& cfg);

// The Config fields forward and backward read: block_q, block_k, variant, feature_map, scale and eps. The block-map
// fields (topk, negligible and the adaptive rules) are for predict_block_map and block_map_shape only: forward and
// backward take the table widths T and Tn from the map itself. validate_config checks these too.
Status validate_attention_config(const Config& cfg);

// cfg's per-head vectors against the head count of a call (validate_config cannot know H).
Status validate_config_heads(const Config& cfg, int64_t heads);

// T = clamp(floor(topk * Nk), 1, Nk), with the floor in double (docs/SPEC.md 1.4).
int64_t topk_block_count(double topk, int64_t k_blocks);

// The selection rule of every row of one head, resolved for a problem's sizes (docs/BLOCK_MAP.md).
struct RowRule {
  bool top_p = false;     // false: every row has exactly min_count (== max_count) critical blocks
  double p = 0.0;         // top_p: the share of the pooled softmax to reach
  int64_t min_count = 1;  // count clamp, 1 <= min_count <= max_count <= T (the LUT width)
  int64_t max_count = 1;
  double threshold = 0.0;     // > 0: negligible = pooled share < threshold (complement), at most negl_capacity
  int64_t negl_capacity = 0;  // Tn, the negligible table width (fixed k_l rule: every row has exactly Tn)
};
RowRule resolve_row_rule(const Config& cfg, const BlockMapShape& shape, int64_t head);

// The block-map sizes of docs/SPEC.md section 1 for a validated cfg and sizes >= 1 (no checks here).
BlockMapShape resolve_block_map_shape(int64_t batch, int64_t heads, int64_t lq, int64_t lk, const Config& cfg);

// Problem fields each call fills (the rest keep their defaults):
// - predict: batch, heads, lq, lk, d, dtype, acc, device, scale, map (dv = 0: V is not an argument);
// - invert: batch, heads, device, map (sizes read from the tables; lq, lk, d, dv = 0);
// - forward/backward: everything; backward sets save_for_backward = true (the saved tensors are inputs there).
//   map.inv_offset/inv_index: forward never needs them; the CPU backward reads them, so validate_backward requires
//   them for CPU tensors; the CUDA backward rebuilds them from the checked LUT and ignores the caller's, so for
//   CUDA tensors they are optional (shapes checked when given; Nq * T must fit int32 either way).
//   Their map.critical and map.negligible are the widths of the caller's tables (T = map.lut's last dimension, in
//   [1, Nk]; Tn = map.negl_lut's, in [1, Nk - T], or 0 when it is absent; negligible tables only with the
//   complement variant), not values recomputed from cfg.topk / cfg.negligible.

// predict_block_map_workspace_size: q, k and cfg only (no map yet).
Status validate_predict_inputs(const TensorView& q, const TensorView& k, const Config& cfg, Problem* problem);
// predict_block_map: as above, plus the output map (lut/count, negl_* iff Tn > 0, inv_* optional).
Status validate_predict(const TensorView& q, const TensorView& k, const Config& cfg, const BlockMap& map,
                        Problem* problem);
// invert_block_map: the sizes come from the map itself; inv_offset/inv_index are required outputs.
Status validate_invert(const BlockMap& map, Problem* problem);
// check_block_map: the tables' shapes against each other and k_blocks, host memory; inverse tables optional.
// invert_block_map and check_block_map also take T and Tn from the tables (T in [1, Nk], Tn in [1, Nk - T]).
Status validate_check_map(const BlockMap& map, int64_t k_blocks, Problem* problem);
Status validate_forward(const ForwardArgs& args, const Config& cfg, Problem* problem);
Status validate_backward(const BackwardArgs& args, const Config& cfg, Problem* problem);
// Checks the caller's workspace against the backend's need (StatusCode::workspace_too_small names the bytes).
Status validate_exec(const Exec& exec, std::size_t needed_workspace);

}  // namespace sla
