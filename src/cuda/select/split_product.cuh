// D x D products of fp32 matrices on the 16-bit tensor cores at ~fp32 accuracy: each operand is staged into shared
// memory as an unevaluated sum hi + lo of two bf16 tiles (SplitBf16, ~16 significant bits), and the product runs as
// hi*hi' + lo*hi' + hi*lo' with fp32 accumulation (the dropped lo*lo' term is below 2^-16 relative). One CTA per
// product, D / 16 warps, each owning 16 output rows; operands are stored row-major as they are in memory and read
// transposed or not through the ldmatrix flavour (common/mma_frag.cuh). The complement variant's per-block products
// (G_i = H_i W^T, W H_i^T, dH_i = E_i W, E_i^T H_i) are all of this form.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "cuda/bwd/split_mma.cuh"
#include "cuda/common/mma_frag.cuh"
#include "cuda/common/numeric.cuh"
#include "cuda/common/ptx.cuh"
#include "cuda/common/tile_io.cuh"

namespace sla::cuda {

template <int D>
struct SplitSquare {
  static constexpr int kWarps = D / 16;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kTileBytes = D * D * 2;          // one b16 tile
  static constexpr int kOperandBytes = 2 * kTileBytes;  // hi + lo
};

// Stages the fp32 D x D matrix whose row r starts at src + r * ld into the split tiles at hi / lo (swizzled,
// row-major). With dst_hi / dst_lo, also writes the split rows to global memory (row-major, D elements a row).
// Vector loads where src and ld allow them (a caller's W may be any fp32 view).
template <int D>
__device__ __forceinline__ void stage_split(uint32_t hi, uint32_t lo, const float* src, int64_t ld, int tid,
                                            uint16_t* dst_hi = nullptr, uint16_t* dst_lo = nullptr) {
  constexpr int kChunks = D / 8, kThreads = SplitSquare<D>::kThreads;
  const bool vec = (reinterpret_cast<uintptr_t>(src) % 16 == 0) && (ld % 4 == 0);
  for (int idx = tid; idx < D * kChunks; idx += kThreads) {
    const int row = idx / kChunks, chunk = idx % kChunks;
    const float* s = src + row * ld + chunk * 8;
    float4 x0, x1;
    if (vec) {
      x0 = reinterpret_cast<const float4*>(s)[0];
      x1 = reinterpret_cast<const float4*>(s)[1];
    } else {
      x0 = make_float4(s[0], s[1], s[2], s[3]);
      x1 = make_float4(s[4], s[5], s[6], s[7]);
    }
    const SplitBf16 p0 = split_bf16x2(x0.x, x0.y), p1 = split_bf16x2(x0.z, x0.w);
    const SplitBf16 p2 = split_bf16x2(x1.x, x1.y), p3 = split_bf16x2(x1.z, x1.w);
    const uint4 h = make_uint4(p0.hi, p1.hi, p2.hi, p3.hi), l = make_uint4(p0.lo, p1.lo, p2.lo, p3.lo);
    const uint32_t off = swizzle<kChunks>(row, chunk);
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(hi + off), "r"(h.x), "r"(h.y), "r"(h.z), "r"(h.w));
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(lo + off), "r"(l.x), "r"(l.y), "r"(l.z), "r"(l.w));
    if (dst_hi != nullptr) {
      *reinterpret_cast<uint4*>(dst_hi + row * D + chunk * 8) = h;
      *reinterpret_cast<uint4*>(dst_lo + row * D + chunk * 8) = l;
    }
  }
}

// acc (rows [row0, row0 + 16) x D, C fragments) += op(X) op(Y) over k in [0, D), X and Y staged split by
// stage_split. kTransX: op(X) = X^T (X stored [k][m]); kTransY: op(Y) = Y^T (Y stored [n][k]).
template <int D, bool kTransX, bool kTransY>
__device__ __forceinline__ void split_product(float (&acc)[D / 8][4], uint32_t x_hi, uint32_t x_lo, uint32_t y_hi,
                                              uint32_t y_lo, int row0, int lane) {
#pragma unroll 2
  for (int k0 = 0; k0 < D; k0 += 16) {
    uint32_t ahi[4], alo[4];
    if constexpr (kTransX) {
      load_a_kmajor<D>(ahi, x_hi, k0, row0, lane);
      load_a_kmajor<D>(alo, x_lo, k0, row0, lane);
    } else {
      load_a<D>(ahi, x_hi, row0, k0, lane);
      load_a<D>(alo, x_lo, row0, k0, lane);
    }
#pragma unroll
    for (int np = 0; np < D / 16; ++np) {
      uint32_t bh[4], bl[4];
      const int n0 = np * 16;
      if constexpr (kTransY) {
        load_b_nmajor<D>(bh, y_hi, n0, k0, lane);
        load_b_nmajor<D>(bl, y_lo, n0, k0, lane);
      } else {
        load_b_kmajor<D>(bh, y_hi, k0, n0, lane);
        load_b_kmajor<D>(bl, y_lo, k0, n0, lane);
      }
      mma_bf16(acc[2 * np], ahi, bh[0], bh[1]);
      mma_bf16(acc[2 * np + 1], ahi, bh[2], bh[3]);
      mma_bf16(acc[2 * np], alo, bh[0], bh[1]);
      mma_bf16(acc[2 * np + 1], alo, bh[2], bh[3]);
      mma_bf16(acc[2 * np], ahi, bl[0], bl[1]);
      mma_bf16(acc[2 * np + 1], ahi, bl[2], bl[3]);
    }
  }
}

template <int D>
__device__ __forceinline__ void zero_acc(float (&acc)[D / 8][4]) {
#pragma unroll
  for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
}

// Calls f(row, col, v0, v1) for the element pairs (row, col), (row, col + 1) of a warp's C fragments (rows
// [row0, row0 + 16)).
template <int D, class F>
__device__ __forceinline__ void for_each_pair(const float (&acc)[D / 8][4], int row0, int lane, F&& f) {
  const int g = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    f(row0 + g, n * 8 + 2 * t4, acc[n][0], acc[n][1]);
    f(row0 + g + 8, n * 8 + 2 * t4, acc[n][2], acc[n][3]);
  }
}

// Stores the pairs split into row-major hi / lo arrays (D elements a row).
template <int D>
__device__ __forceinline__ void store_split_pairs(const float (&acc)[D / 8][4], int row0, int lane, uint16_t* hi,
                                                  uint16_t* lo) {
  for_each_pair<D>(acc, row0, lane, [&](int r, int c, float v0, float v1) {
    const SplitBf16 s = split_bf16x2(v0, v1);
    *reinterpret_cast<uint32_t*>(hi + r * D + c) = s.hi;
    *reinterpret_cast<uint32_t*>(lo + r * D + c) = s.lo;
  });
}

}  // namespace sla::cuda
