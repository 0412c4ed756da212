// The linear branch's feature map phi (docs/SPEC.md sections 3 and 5), applied to one row of Q or K, and its backward.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "sla/config.h"

namespace sla {
namespace cpu {

// a = phi(x) for one row of length d.
template <class Acc>
void feature_map_forward(FeatureMap f, const Acc* x, int64_t d, Acc* a) {
  switch (f) {
    case FeatureMap::softmax: {
      Acc m = x[0];
      for (int64_t i = 1; i < d; ++i) m = std::max(m, x[i]);
      Acc sum = 0;
      for (int64_t i = 0; i < d; ++i) {
        a[i] = std::exp(x[i] - m);
        sum += a[i];
      }
      const Acc inv = Acc(1) / sum;
      for (int64_t i = 0; i < d; ++i) a[i] *= inv;
      break;
    }
    case FeatureMap::elu:
      for (int64_t i = 0; i < d; ++i) a[i] = x[i] > 0 ? x[i] + Acc(1) : std::exp(x[i]);
      break;
    case FeatureMap::relu:
      // x <= 0, not !(x > 0): relu(NaN) is NaN, as in torch.relu.
      for (int64_t i = 0; i < d; ++i) a[i] = x[i] <= 0 ? Acc(0) : x[i];
      break;
  }
}

// dx += d phi(x)/dx applied to da, where a = phi(x) as computed by feature_map_forward.
template <class Acc>
void feature_map_backward_add(FeatureMap f, const Acc* x, const Acc* a, const Acc* da, int64_t d, Acc* dx) {
  switch (f) {
    case FeatureMap::softmax: {
      Acc dot = 0;
      for (int64_t i = 0; i < d; ++i) dot += da[i] * a[i];
      for (int64_t i = 0; i < d; ++i) dx[i] += a[i] * (da[i] - dot);
      break;
    }
    case FeatureMap::elu:
      // For x <= 0, d(exp x)/dx = exp x = a.
      for (int64_t i = 0; i < d; ++i) dx[i] += x[i] > 0 ? da[i] : da[i] * a[i];
      break;
    case FeatureMap::relu:
      for (int64_t i = 0; i < d; ++i) dx[i] += x[i] > 0 ? da[i] : Acc(0);
      break;
  }
}

}  // namespace cpu
}  // namespace sla
