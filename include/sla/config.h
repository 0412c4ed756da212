// The options of one SLA layer (docs/SPEC.md sections 1-6). Defaults follow the public module.
#pragma once

namespace sla {

// Which linear branch (docs/SPEC.md section 3).
enum class Variant : int {
  global = 0,      // public `main` branch and TurboDiffusion checkpoints: H, z over all keys, eps in the denominator
  complement = 1,  // the paper and the public `SLA-1` branch: H_i, z_i over the marginal blocks of row i only
};

// The feature map phi applied to every row of Q and K in the linear branch.
enum class FeatureMap : int { softmax = 0, elu = 1, relu = 2 };

const char* variant_name(Variant v);
const char* feature_map_name(FeatureMap f);

struct Config {
  int block_q = 64;                         // bq: rows of Q per query block; 64 or 128
  int block_k = 64;                         // bk: rows of K/V per key block; 64 or 128
  double topk = 0.05;                       // fraction of key blocks that are critical, in (0, 1]
  double negligible = 0.0;                  // k_l: fraction of key blocks skipped entirely, in [0, 1 - topk];
                                            // only the complement variant uses it (must be 0 for global)
  Variant variant = Variant::global;
  FeatureMap feature_map = FeatureMap::softmax;
  double scale = 0.0;                       // softmax scale; 0 means 1/sqrt(D); otherwise must be finite and > 0
  double eps = 1e-5;                        // global variant's denominator epsilon; > 0
};

}  // namespace sla
