// The linear branch's feature map phi (docs/SPEC.md sections 3 and 5) for device code, element by element.
// softmax needs two statistics of its row (max and 1/sum of exp(x - max)); elu+1 and relu need none, so every
// caller computes RowStats only for softmax and passes a default-constructed one otherwise.
#pragma once

#include "core/static_switch.h"  // SLA_FEATURE_MAP_SWITCH: runtime feature map -> template parameter
#include "sla/config.h"

namespace sla::cuda {

struct FeatureRowStats {
  float max = 0.f;
  float inv_sum = 1.f;
};

// a = phi(x) for one element of a row.
template <FeatureMap F>
__device__ __forceinline__ float phi_forward(float x, const FeatureRowStats& s) {
  if constexpr (F == FeatureMap::softmax) {
    return __expf(x - s.max) * s.inv_sum;
  } else if constexpr (F == FeatureMap::elu) {
    return x > 0.f ? x + 1.f : __expf(x);
  } else {
    return x <= 0.f ? 0.f : x;  // relu(NaN) is NaN, as in torch.relu (and the CPU backend)
  }
}

// dx for one element, given x, a = phi(x), da and, for softmax only, dot = sum over the row of da * a.
template <FeatureMap F>
__device__ __forceinline__ float phi_backward(float x, float a, float da, float dot) {
  if constexpr (F == FeatureMap::softmax) {
    return a * (da - dot);
  } else if constexpr (F == FeatureMap::elu) {
    return x > 0.f ? da : da * a;  // d exp(x)/dx = exp(x) = a for x <= 0
  } else {
    return x > 0.f ? da : 0.f;
  }
}

}  // namespace sla::cuda
