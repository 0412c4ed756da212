// The output projection proj_l (docs/SPEC.md section 4): O = O_s + O_l W^T + b, with W (Dv x Dv) row-major and shared
// by every head.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/staging.h"
#include "sla/types.h"

namespace sla {
namespace cpu {

// The projection's parameters in the accumulation type; `weight_t` is W transposed (weight_t[f * dv + e] = W[e][f])
// so that O_l W^T is a sum of contiguous rows.
template <class Acc>
struct Projection {
  bool has_weight = false, has_bias = false;
  std::vector<Acc> weight;    // W, row-major
  std::vector<Acc> weight_t;  // W^T, row-major
  std::vector<Acc> bias;

  Projection(const TensorView& w, const TensorView& b, int64_t dv) {
    if (w.present()) {
      has_weight = true;
      weight.resize(dv * dv);
      weight_t.resize(dv * dv);
      const Acc* src = static_cast<const Acc*>(w.data);
      for (int64_t e = 0; e < dv; ++e) {
        for (int64_t f = 0; f < dv; ++f) {
          weight[e * dv + f] = src[e * w.stride[0] + f];
          weight_t[f * dv + e] = src[e * w.stride[0] + f];
        }
      }
    }
    if (b.present()) {
      has_bias = true;
      const Acc* src = static_cast<const Acc*>(b.data);
      bias.assign(src, src + dv);
    }
  }

  // out = O_l W^T + b for one row (the parts that are present; zero otherwise).
  void linear_part(const Acc* o_lin, int64_t dv, Acc* out) const {
    std::fill(out, out + dv, Acc(0));
    if (has_weight) {
      for (int64_t f = 0; f < dv; ++f) axpy(dv, o_lin[f], &weight_t[f * dv], out);
    }
    if (has_bias) {
      for (int64_t e = 0; e < dv; ++e) out[e] += bias[e];
    }
  }

  // d_o_lin = dO W for one row (zero when W is absent).
  void backward_row(const Acc* d_o, int64_t dv, Acc* d_o_lin) const {
    std::fill(d_o_lin, d_o_lin + dv, Acc(0));
    if (!has_weight) return;
    for (int64_t e = 0; e < dv; ++e) axpy(dv, d_o[e], &weight[e * dv], d_o_lin);
  }
};

}  // namespace cpu
}  // namespace sla
