// The library's block map (CPU backend) of a single (b,h) of a problem. The calibration evaluates dozens of
// candidate rules per head against that head's reference rows; predicting one head at a time keeps only one head's
// reference in memory. The library computes every head independently, so the tables equal the rows of the same head
// in a map of the whole problem.
#pragma once

#include <cstdint>

#include "sla/config.h"
#include "workload/reference_attention.h"

namespace sla_cli {

// `cfg`'s per-head vectors (head_topk, head_top_p), when set, hold one value per head of the problem; the value of
// head bh % H is used. Returns the tables of one head (B*H = 1 in BlockClasses' layout). Throws RunError when the
// library rejects the problem or the config.
BlockClasses head_block_map(const AttentionProblem& problem, int64_t bh, const sla::Config& cfg, int threads);

}  // namespace sla_cli
