// fp32 tile products on the CUDA cores over shared-memory operands, for the linear branch of the backward pass
// (dO W, dO G, V dH^T, phi(K) dH, and the reductions A^T dO_l, dO^T O_l). These carry fp32 states whose digits
// matter (docs/SPEC.md section 3), and they are a few percent of the work, so they stay in fp32.
//
// kThreads threads (128 or 256) as a (kThreads / 16) x 16 grid; thread (tr, tc) owns rows tr + RL i (RL = kThreads /
// 16) and columns tc + 16 c of the output. The interleaved ownership makes a half-warp read 16 consecutive words of a
// row (no bank conflicts) and the two half-warps read two rows, which sit in different banks when the row pitch is
// odd (fp32_pitch below).
#pragma once

namespace sla::cuda::bwd {

constexpr int kGemmThreads = 256;

// Row pitch (floats) of every fp32 tile with `cols` columns: odd, so consecutive rows start in different banks.
__host__ __device__ constexpr int fp32_pitch(int cols) { return cols + 1; }

template <int R, int N, int kThreads = kGemmThreads>
struct GemmAcc {
  static constexpr int kRowLanes = kThreads / 16;
  static_assert(R % kRowLanes == 0 && N % 16 == 0, "tile sides must be multiples of the thread grid");
  float v[R / kRowLanes][N / 16];
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < R / kRowLanes; ++i)
#pragma unroll
      for (int c = 0; c < N / 16; ++c) v[i][c] = 0.f;
  }
};

__device__ __forceinline__ int gemm_row_lane() { return static_cast<int>(threadIdx.x) / 16; }
__device__ __forceinline__ int gemm_col_lane() { return static_cast<int>(threadIdx.x) % 16; }

// acc (R x N) += x (R x K) * m (K x N).
template <int R, int N, int kThreads>
__device__ __forceinline__ void gemm_xm(GemmAcc<R, N, kThreads>& acc, const float* x, int ldx, const float* m, int ldm,
                                        int k_len) {
  const int tr = gemm_row_lane(), tc = gemm_col_lane();
#pragma unroll 4
  for (int k = 0; k < k_len; ++k) {
    float mv[N / 16];
#pragma unroll
    for (int c = 0; c < N / 16; ++c) mv[c] = m[k * ldm + tc + 16 * c];
#pragma unroll
    for (int i = 0; i < R / GemmAcc<R, N, kThreads>::kRowLanes; ++i) {
      const float xv = x[(tr + GemmAcc<R, N, kThreads>::kRowLanes * i) * ldx + k];
#pragma unroll
      for (int c = 0; c < N / 16; ++c) acc.v[i][c] = fmaf(xv, mv[c], acc.v[i][c]);
    }
  }
}

// acc (M x N) += x^T y, x is (rows x M), y is (rows x N): a reduction over rows.
template <int M, int N, int kThreads>
__device__ __forceinline__ void gemm_atb(GemmAcc<M, N, kThreads>& acc, const float* x, int ldx, const float* y, int ldy,
                                         int rows) {
  const int tr = gemm_row_lane(), tc = gemm_col_lane();
#pragma unroll 2
  for (int r = 0; r < rows; ++r) {
    float yv[N / 16];
#pragma unroll
    for (int c = 0; c < N / 16; ++c) yv[c] = y[r * ldy + tc + 16 * c];
#pragma unroll
    for (int i = 0; i < M / GemmAcc<M, N, kThreads>::kRowLanes; ++i) {
      const float xv = x[r * ldx + tr + GemmAcc<M, N, kThreads>::kRowLanes * i];
#pragma unroll
      for (int c = 0; c < N / 16; ++c) acc.v[i][c] = fmaf(xv, yv[c], acc.v[i][c]);
    }
  }
}

// dst[row * ld + col] = acc (or += when `add`).
template <int R, int N, int kThreads>
__device__ __forceinline__ void store_acc(const GemmAcc<R, N, kThreads>& acc, float* dst, int ld, bool add) {
  const int tr = gemm_row_lane(), tc = gemm_col_lane();
  constexpr int RL = GemmAcc<R, N, kThreads>::kRowLanes;
#pragma unroll
  for (int i = 0; i < R / RL; ++i)
#pragma unroll
    for (int c = 0; c < N / 16; ++c) {
      float* p = dst + (tr + RL * i) * ld + tc + 16 * c;
      *p = add ? *p + acc.v[i][c] : acc.v[i][c];
    }
}

}  // namespace sla::cuda::bwd
