// Typed, strided access to the TensorViews of a call, for the CPU backend. Every tensor of the API has a contiguous
// last dimension, so the unit of access is a row: a pointer to its first element, converted to or from the
// accumulation type in one loop.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cpu/half_float.h"
#include "sla/types.h"

namespace sla {
namespace cpu {

// Element conversions. float and double convert with static_cast; bf16 and fp16 go through float.
template <class Acc, class T>
inline Acc load_elem(T x) {
  if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, f16>) {
    return static_cast<Acc>(to_float(x));
  } else {
    return static_cast<Acc>(x);
  }
}

template <class T, class Acc>
inline T store_elem(Acc x) {
  if constexpr (std::is_same_v<T, bf16>) {
    return to_bf16(static_cast<float>(x));
  } else if constexpr (std::is_same_v<T, f16>) {
    return to_f16(static_cast<float>(x));
  } else {
    return static_cast<T>(x);
  }
}

template <class Acc, class T>
inline void load_row(const T* src, int64_t n, Acc* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = load_elem<Acc>(src[i]);
}

template <class T, class Acc>
inline void store_row(const Acc* src, int64_t n, T* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = store_elem<T>(src[i]);
}

// A 4-D (B, H, rows, cols) tensor with a contiguous last dimension; rows are addressed by (b, h, r).
template <class T>
struct Rows4 {
  T* data = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_r = 0;

  T* row(int64_t b, int64_t h, int64_t r) const { return data + b * stride_b + h * stride_h + r * stride_r; }
};

template <class T>
Rows4<T> rows4(const TensorView& v) {
  return Rows4<T>{static_cast<T*>(v.data), v.stride[0], v.stride[1], v.stride[2]};
}

// A 3-D (B, H, n) tensor (LSE, counts, z, inverse offsets); elements are addressed by (b, h, i).
template <class T>
struct Elems3 {
  T* data = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_i = 0;

  T& at(int64_t b, int64_t h, int64_t i) const { return data[b * stride_b + h * stride_h + i * stride_i]; }
  T* head(int64_t b, int64_t h) const { return data + b * stride_b + h * stride_h; }
};

template <class T>
Elems3<T> elems3(const TensorView& v) {
  return Elems3<T>{static_cast<T*>(v.data), v.stride[0], v.stride[1], v.stride[2]};
}

}  // namespace cpu
}  // namespace sla
