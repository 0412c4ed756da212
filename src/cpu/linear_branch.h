// Building blocks of the linear branch (docs/SPEC.md section 3) shared by the CPU forward and backward passes.
// States (H, z) are kept per key block so that the global variant (sum over all blocks) and the complement variant
// (sum over the marginal blocks of each query block) use the same numbers, summed in ascending block order.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cpu/staging.h"

namespace sla {
namespace cpu {

// h (d x dv) += sum over the rows c of phi_k[c]^T v[c]; z (d) += sum over c of phi_k[c].
template <class Acc>
void add_key_state(const Acc* phi_k, const Acc* v, int64_t rows, int64_t d, int64_t dv, Acc* h, Acc* z) {
  for (int64_t c = 0; c < rows; ++c) {
    const Acc* a = phi_k + c * d;
    for (int64_t i = 0; i < d; ++i) {
      axpy(dv, a[i], v + c * dv, h + i * dv);
      z[i] += a[i];
    }
  }
}

// (H, z) = sum of the per-block states (h_j, z_j) over the blocks j with mask[j] != 0 (all blocks when mask is
// null), in ascending j.
template <class Acc>
void sum_block_states(const uint8_t* mask, int64_t k_blocks, const Acc* h_blocks, const Acc* z_blocks, int64_t d,
                      int64_t dv, Acc* h, Acc* z) {
  std::fill(h, h + d * dv, Acc(0));
  std::fill(z, z + d, Acc(0));
  for (int64_t j = 0; j < k_blocks; ++j) {
    if (mask != nullptr && mask[j] == 0) continue;
    const Acc* hj = h_blocks + j * d * dv;
    for (int64_t e = 0; e < d * dv; ++e) h[e] += hj[e];
    for (int64_t e = 0; e < d; ++e) z[e] += z_blocks[j * d + e];
  }
}

// One row of O_l from a = phi(q): a H / (a . z + eps). With `complement`, eps is not added and a denominator
// <= 0 gives a zero row (docs/SPEC.md section 3). A NaN denominator (NaN or Inf in q or k) is not "not > 0" here: it
// divides like any other, so the NaN reaches O_l as in the dense formula. Returns the denominator used (0 for a
// zero row).
template <class Acc>
Acc linear_row(const Acc* a, const Acc* h, const Acc* z, int64_t d, int64_t dv, bool complement, Acc eps, Acc* out) {
  Acc den = dot(d, a, z);
  if (complement) {
    if (den <= 0) {
      std::fill(out, out + dv, Acc(0));
      return Acc(0);
    }
  } else {
    den += eps;
  }
  std::fill(out, out + dv, Acc(0));
  for (int64_t i = 0; i < d; ++i) axpy(dv, a[i], h + i * dv, out);
  for (int64_t e = 0; e < dv; ++e) out[e] /= den;
  return den;
}

}  // namespace cpu
}  // namespace sla
