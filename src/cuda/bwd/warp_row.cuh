// One row of a (L x D) tensor held by one warp, lane l owning elements l + 32 t (t < D / 32): loads, dot products
// and the feature map on such rows. Used where the backward pass needs per-row values that the tensor cores do not
// produce (row_prep: Delta_r, n_r and phi of q).
#pragma once

#include <cstdint>

#include "cuda/common/feature_map.cuh"
#include "cuda/common/numeric.cuh"

namespace sla::cuda::bwd {

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

template <int D>
struct WarpRow {
  static_assert(D % 32 == 0, "head dim must be a multiple of 32");
  static constexpr int kPer = D / 32;
  float v[kPer];
};

template <class T, int D>
__device__ __forceinline__ WarpRow<D> load_row(const T* src, int lane) {
  WarpRow<D> r;
#pragma unroll
  for (int t = 0; t < WarpRow<D>::kPer; ++t) r.v[t] = ElementTraits<T>::to_float(src[lane + 32 * t]);
  return r;
}

template <int D>
__device__ __forceinline__ WarpRow<D> load_row_f32(const float* src, int lane) {
  WarpRow<D> r;
#pragma unroll
  for (int t = 0; t < WarpRow<D>::kPer; ++t) r.v[t] = src[lane + 32 * t];
  return r;
}

template <int D>
__device__ __forceinline__ void store_row_f32(float* dst, const WarpRow<D>& r, int lane) {
#pragma unroll
  for (int t = 0; t < WarpRow<D>::kPer; ++t) dst[lane + 32 * t] = r.v[t];
}

template <int D>
__device__ __forceinline__ float row_dot(const WarpRow<D>& a, const WarpRow<D>& b) {
  float s = 0.f;
#pragma unroll
  for (int t = 0; t < WarpRow<D>::kPer; ++t) s += a.v[t] * b.v[t];
  return warp_sum(s);
}

// a = phi(x) row-wise (softmax over the head dim needs the row's max and sum).
template <FeatureMap F, int D>
__device__ __forceinline__ WarpRow<D> feature_map_row(const WarpRow<D>& x) {
  FeatureRowStats st;
  if constexpr (F == FeatureMap::softmax) {
    float m = x.v[0];
#pragma unroll
    for (int t = 1; t < WarpRow<D>::kPer; ++t) m = fmaxf(m, x.v[t]);
    st.max = warp_max(m);
    float s = 0.f;
#pragma unroll
    for (int t = 0; t < WarpRow<D>::kPer; ++t) s += __expf(x.v[t] - st.max);
    st.inv_sum = 1.f / warp_sum(s);
  }
  WarpRow<D> a;
#pragma unroll
  for (int t = 0; t < WarpRow<D>::kPer; ++t) a.v[t] = phi_forward<F>(x.v[t], st);
  return a;
}

}  // namespace sla::cuda::bwd
