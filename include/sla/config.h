// The options of one SLA layer (docs/SPEC.md sections 1-6). Defaults follow the public module.
#pragma once

#include <cstdint>
#include <vector>

namespace sla {

// Which linear branch (docs/SPEC.md section 3).
enum class Variant : int {
  global = 0,      // public `main` branch and TurboDiffusion checkpoints: H, z over all keys, eps in the denominator
  complement = 1,  // the paper and the public `SLA-1` branch: H_i, z_i over the marginal blocks of row i only
};

// The feature map phi applied to every row of Q and K in the linear branch.
enum class FeatureMap : int { softmax = 0, elu = 1, relu = 2 };

// How the critical set of a query-block row is sized (docs/BLOCK_MAP.md has the exact definitions).
enum class CriticalRule : int {
  topk = 0,   // T_h = clamp(floor(topk_h * Nk), 1, Nk) blocks for every row of head h (docs/SPEC.md 1.4)
  top_p = 1,  // per row the fewest blocks whose pooled-softmax share reaches p_h, clamped to [min_blocks, max_blocks]
};

const char* variant_name(Variant v);
const char* critical_rule_name(CriticalRule r);
const char* feature_map_name(FeatureMap f);

struct Config {
  int block_q = 64;                         // bq: rows of Q per query block; 64 or 128
  int block_k = 64;                         // bk: rows of K/V per key block; 64 or 128
  // The block-map fields: topk, negligible and the adaptive rule below decide the table widths T and Tn of a
  // predicted map (predict_block_map, block_map_shape). forward and backward neither read nor check them: they take
  // T and Tn from the map's tables.
  double topk = 0.05;                       // fraction of key blocks that are critical, in (0, 1]
  double negligible = 0.0;                  // k_l: fraction of key blocks skipped entirely, in [0, 1 - topk];
                                            // only the complement variant uses it (must be 0 for global)
  Variant variant = Variant::global;
  FeatureMap feature_map = FeatureMap::softmax;
  double scale = 0.0;                       // softmax scale; 0 means 1/sqrt(D); otherwise must be finite and > 0
  double eps = 1e-5;                        // global variant's denominator epsilon; > 0

  // Adaptive block map (docs/BLOCK_MAP.md). The defaults give the fixed rule above, so existing callers are
  // unchanged. Per-head vectors must hold exactly H values (one per head of the call) when not empty.
  CriticalRule rule = CriticalRule::topk;
  std::vector<double> head_topk;      // topk rule: topk of each head, in (0, 1]; empty: `topk` for all
  double top_p = 0.0;                 // top_p rule: share of the pooled attention to cover, in (0, 1]
  std::vector<double> head_top_p;     // top_p rule: p of each head, in (0, 1]; empty: `top_p` for all
  int64_t min_blocks = 1;             // top_p rule: fewest critical blocks per row, >= 1 (clamped to Nk)
  int64_t max_blocks = 0;             // top_p rule: most critical blocks per row (LUT width); 0 means Nk
  double negligible_threshold = 0.0;  // complement variant: blocks with pooled share below this are skipped
                                      // (0 = off; excludes `negligible`), in [0, 1)
  double max_negligible = 0.0;        // threshold rule: at most floor(max_negligible * Nk) skipped per row,
                                      // in (0, 1] when the threshold is on
};

}  // namespace sla
