// Runtime (dtype, head dim, feature map) -> template parameters for the backward launchers. Combinations pruned
// from the build (SLA_CUDA_HDIM_*, SLA_CUDA_DTYPE_*) return StatusCode::unsupported naming the value.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>
#include <type_traits>

#include "sla/config.h"
#include "sla/types.h"

namespace sla::cuda::bwd {

template <class T>
struct TypeTag {
  using type = T;
};
template <FeatureMap F>
using FmTag = std::integral_constant<FeatureMap, F>;
template <int D>
using DimTag = std::integral_constant<int, D>;

// Calls fn(TypeTag<T>, DimTag<D>) for the built (dtype, head dim).
template <class Fn>
Status dispatch_type_dim(DType dtype, int d, Fn&& fn) {
  auto by_dim = [&](auto type_tag) -> Status {
#ifdef SLA_CUDA_HDIM_64
    if (d == 64) return fn(type_tag, DimTag<64>{});
#endif
#ifdef SLA_CUDA_HDIM_128
    if (d == 128) return fn(type_tag, DimTag<128>{});
#endif
    return Status::Unsupported("head dim: the CUDA backward is not built for " + std::to_string(d) +
                               " (built: SLA_CUDA_HEAD_DIMS)");
  };
#ifdef SLA_CUDA_DTYPE_BF16
  if (dtype == DType::bf16) return by_dim(TypeTag<__nv_bfloat16>{});
#endif
#ifdef SLA_CUDA_DTYPE_F16
  if (dtype == DType::f16) return by_dim(TypeTag<__half>{});
#endif
  return Status::Unsupported(std::string("dtype: the CUDA backward is not built for ") + dtype_name(dtype) +
                             " (built: SLA_CUDA_DTYPES)");
}

// Calls fn(FmTag<F>) for the runtime feature map.
template <class Fn>
Status dispatch_feature_map(FeatureMap fm, Fn&& fn) {
  switch (fm) {
    case FeatureMap::softmax: return fn(FmTag<FeatureMap::softmax>{});
    case FeatureMap::elu: return fn(FmTag<FeatureMap::elu>{});
    case FeatureMap::relu: return fn(FmTag<FeatureMap::relu>{});
  }
  return Status::Invalid("feature_map: expected softmax, elu or relu");
}

}  // namespace sla::cuda::bwd
