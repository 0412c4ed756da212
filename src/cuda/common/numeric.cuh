// Element types of the CUDA kernels (bf16, fp16) and the conversions between them and fp32 registers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/common/ptx.cuh"

namespace sla::cuda {

template <class T>
struct ElementTraits;

template <>
struct ElementTraits<__nv_bfloat16> {
  using MmaTag = Bf16Tag;
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
  // Two fp32 values rounded to one register of two elements (lo = first).
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ float2 unpack2(uint32_t r) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&r));
  }
};

template <>
struct ElementTraits<__half> {
  using MmaTag = F16Tag;
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
  static __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ float2 unpack2(uint32_t r) {
    return __half22float2(*reinterpret_cast<__half2*>(&r));
  }
};

// fp32 state operands (H, z, W) enter the tensor cores as an unevaluated sum hi + lo of two bf16 values:
// 16 significant bits instead of 8, and bf16's fp32 exponent range, so fp32 states neither lose most of their
// digits nor overflow (docs/SPEC.md section 3). hi * hi' + hi * lo' + lo * hi' then carries ~16 bits through an mma.
struct SplitBf16 {
  uint32_t hi, lo;
};
__device__ __forceinline__ SplitBf16 split_bf16x2(float a, float b) {
  const __nv_bfloat162 hi = __floats2bfloat162_rn(a, b);
  const float2 hf = __bfloat1622float2(hi);
  const __nv_bfloat162 lo = __floats2bfloat162_rn(a - hf.x, b - hf.y);
  SplitBf16 s;
  s.hi = *reinterpret_cast<const uint32_t*>(&hi);
  s.lo = *reinterpret_cast<const uint32_t*>(&lo);
  return s;
}

// Base-2 exponential: the softmax runs in the exp2 domain (scores pre-multiplied by log2(e)).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

}  // namespace sla::cuda

namespace sla::cuda {
__host__ __device__ __forceinline__ int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
}  // namespace sla::cuda
