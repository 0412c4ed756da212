// What SLA's linear branch can add once its projection is trained: a fresh layer has W = b = 0, so O = O_s.
// Fits W (Dv x Dv) and b (Dv), shared by all heads as in the layer, by least squares so that O_s + O_l W^T + b
// matches dense attention on the sampled rows. The fit is in-sample: it shows the headroom the linear branch
// offers on these tensors, not what fine-tuning will reach.
#pragma once

#include <cstdint>
#include <vector>

namespace sla_cli {

struct ProjectionFit {
  std::vector<double> weight;              // (Dv, Dv) row-major
  std::vector<double> bias;                // (Dv)
  std::vector<double> rel_error_per_head;  // ||O_s + O_l W^T + b - O_dense|| / ||O_dense|| per (b,h)
};

// o_s, o_lin and dense are (BH, rows, Dv) row-major. Returns an empty fit when rows * BH <= Dv (underdetermined).
ProjectionFit fit_projection(const std::vector<double>& o_s, const std::vector<double>& o_lin,
                             const std::vector<double>& dense, int64_t bh, int64_t rows, int64_t dv);

}  // namespace sla_cli
