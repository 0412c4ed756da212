// Addressing of (B, H, L, D) rows and fp32 staging of row tiles in shared memory for the CUDA-core parts of the
// backward pass. Rows at or past the end of a tensor are zero-filled and never read.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>

#include "cuda/bwd/smem_gemm.cuh"
#include "cuda/common/numeric.cuh"
#include "cuda/common/params.h"

namespace sla::cuda::bwd {

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

template <class T>
__device__ __forceinline__ const T* row_ptr(const RowsParams& t, int64_t b, int64_t h, int64_t row) {
  return static_cast<const T*>(t.ptr) + b * t.batch_stride + h * t.head_stride + row * t.row_stride;
}
template <class T>
__device__ __forceinline__ T* row_ptr_mut(const RowsParams& t, int64_t b, int64_t h, int64_t row) {
  return static_cast<T*>(t.ptr) + b * t.batch_stride + h * t.head_stride + row * t.row_stride;
}

// dst (rows x D, pitch fp32_pitch(D)) <- rows [0, rows) starting at `first` of a strided T tensor; rows >= valid are 0.
template <class T, int D>
__device__ __forceinline__ void stage_rows_f32(float* dst, const T* first, int64_t row_stride, int rows, int valid) {
  constexpr int P = fp32_pitch(D);
  for (int idx = threadIdx.x; idx < rows * D; idx += blockDim.x) {
    const int r = idx / D, c = idx % D;
    dst[r * P + c] = r < valid ? ElementTraits<T>::to_float(first[r * row_stride + c]) : 0.f;
  }
}

// Same for a contiguous fp32 tensor with rows of D floats.
template <int D>
__device__ __forceinline__ void stage_rows_f32(float* dst, const float* first, int rows, int valid) {
  constexpr int P = fp32_pitch(D);
  for (int idx = threadIdx.x; idx < rows * D; idx += blockDim.x) {
    const int r = idx / D, c = idx % D;
    dst[r * P + c] = r < valid ? first[static_cast<int64_t>(r) * D + c] : 0.f;
  }
}

// dst (D x D, pitch fp32_pitch(D)) <- a row-major D x D fp32 matrix, transposed when `transpose`.
template <int D>
__device__ __forceinline__ void stage_square_f32(float* dst, const float* src, bool transpose) {
  constexpr int P = fp32_pitch(D);
  for (int idx = threadIdx.x; idx < D * D; idx += blockDim.x) {
    const int r = idx / D, c = idx % D;
    if (transpose) {
      dst[c * P + r] = src[idx];
    } else {
      dst[r * P + c] = src[idx];
    }
  }
}

// A split matrix (split_mma.cuh: bf16 hi array then lo array, D x D row-major each) element by element.
template <int D>
__device__ __forceinline__ void store_split(uint16_t* dst, int idx, float x) {
  const __nv_bfloat16 hi = __float2bfloat16_rn(x);
  const __nv_bfloat16 lo = __float2bfloat16_rn(x - __bfloat162float(hi));
  reinterpret_cast<__nv_bfloat16*>(dst)[idx] = hi;
  reinterpret_cast<__nv_bfloat16*>(dst)[D * D + idx] = lo;
}

// Rows r0 + g and r0 + g + 8 (C-fragment positions) of a 16 x D accumulator to rows first + r of a strided tensor,
// rows at or past `valid` skipped.
template <class T, int kNt>
__device__ __forceinline__ void store_acc_rows(const RowsParams& t, int64_t b, int64_t h, int64_t first, int r0,
                                               int valid, const float (&acc)[kNt][4], int lane) {
  const int g = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int r = r0 + g + 8 * hf;
    if (r >= valid) continue;
    T* dst = row_ptr_mut<T>(t, b, h, first + r);
#pragma unroll
    for (int n = 0; n < kNt; ++n)
      *reinterpret_cast<uint32_t*>(dst + n * 8 + 2 * t4) = ElementTraits<T>::pack2(acc[n][2 * hf], acc[n][2 * hf + 1]);
  }
}

}  // namespace sla::cuda::bwd
