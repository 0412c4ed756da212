// Reference sparse-branch kernels of the backward pass: one warp per row, scalar fp32 math straight from
// SPEC.md section 5, P recomputed from the saved LSE. Slow (every key costs two warp reductions) but simple enough
// to trust; the tensor-core kernels are checked against the same oracle.
#include <cuda_runtime.h>

#include "cuda/bwd/dispatch.h"
#include "cuda/bwd/linear_epilogue.cuh"
#include "cuda/bwd/sparse_bwd.h"
#include "cuda/common/cuda_status.h"

namespace sla::cuda::bwd {
namespace {

constexpr int kWarps = kGemmThreads / 32;

template <class T, int D>
__device__ __forceinline__ void store_row_out(T* dst, const float* src, int lane) {
#pragma unroll
  for (int t = 0; t < D / 32; ++t) dst[lane + 32 * t] = ElementTraits<T>::from_float(src[lane + 32 * t]);
}

// Grid (Nq, H, B).
template <class T, int D, FeatureMap F>
__global__ void __launch_bounds__(kGemmThreads) dq_simple_kernel(BwdParams p) {
  extern __shared__ float smem[];
  constexpr int P = fp32_pitch(D);
  float* dq_s = smem;                    // bq x P
  float* scratch = dq_s + p.bq * P;      // linear epilogue
  const int64_t b = blockIdx.z, h = blockIdx.y, i = blockIdx.x, bh = b * p.heads + h;
  const int64_t row0 = i * p.bq;
  const int valid = static_cast<int>(min64(p.bq, p.lq - row0));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t part = bh * p.nq + i;
  const int crit = min(max(p.lut_count[part], 0), p.t_crit);

  for (int r = warp; r < valid; r += kWarps) {
    const int64_t row = row0 + r;
    const WarpRow<D> q = load_row<T, D>(row_ptr<T>(p.q, b, h, row), lane);
    const WarpRow<D> d_o = load_row<T, D>(row_ptr<T>(p.d_o, b, h, row), lane);
    const float lse = p.lse[bh * p.lq + row], delta = p.delta[bh * p.lq + row];
    WarpRow<D> acc{};
    for (int t = 0; t < crit; ++t) {
      const int j = p.lut[part * p.t_crit + t];
      if (j < 0 || j >= p.nk) continue;
      const int64_t end = min(p.lk, static_cast<int64_t>(j + 1) * p.bk);
      for (int64_t c = static_cast<int64_t>(j) * p.bk; c < end; ++c) {
        const WarpRow<D> k = load_row<T, D>(row_ptr<T>(p.k, b, h, c), lane);
        const WarpRow<D> v = load_row<T, D>(row_ptr<T>(p.v, b, h, c), lane);
        const float prob = expf(p.scale * row_dot(q, k) - lse);
        const float ds = prob * (row_dot(d_o, v) - delta);
#pragma unroll
        for (int e = 0; e < WarpRow<D>::kPer; ++e) acc.v[e] += p.scale * ds * k.v[e];
      }
    }
    store_row_f32<D>(dq_s + r * P, acc, lane);
  }
  __syncthreads();
  if (p.has_weight) linear_dq_epilogue<T, D, F>(p, b, h, i, row0, valid, dq_s, scratch);
  for (int r = warp; r < valid; r += kWarps) {
    store_row_out<T, D>(row_ptr_mut<T>(p.grad_q, b, h, row0 + r), dq_s + r * P, lane);
  }
}

// Grid (Nk, H, B).
template <class T, int D, FeatureMap F>
__global__ void __launch_bounds__(kGemmThreads) dkdv_simple_kernel(BwdParams p) {
  extern __shared__ float smem[];
  constexpr int P = fp32_pitch(D);
  float* dk_s = smem;                  // bk x P
  float* dv_s = dk_s + p.bk * P;       // bk x P
  float* scratch = dv_s + p.bk * P;    // linear epilogue
  const int64_t b = blockIdx.z, h = blockIdx.y, j = blockIdx.x, bh = b * p.heads + h;
  const int64_t key0 = j * p.bk;
  const int valid = static_cast<int>(min64(p.bk, p.lk - key0));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int32_t* off = p.inv_offset + bh * (p.nk + 1);
  const int32_t* index = p.inv_index + bh * static_cast<int64_t>(p.nq) * p.t_crit;

  for (int r = warp; r < valid; r += kWarps) {
    const int64_t c = key0 + r;
    const WarpRow<D> k = load_row<T, D>(row_ptr<T>(p.k, b, h, c), lane);
    const WarpRow<D> v = load_row<T, D>(row_ptr<T>(p.v, b, h, c), lane);
    WarpRow<D> dk{}, dv{};
    for (int t = off[j]; t < off[j + 1]; ++t) {
      const int i = index[t];
      if (i < 0 || i >= p.nq) continue;
      const int64_t end = min(p.lq, static_cast<int64_t>(i + 1) * p.bq);
      for (int64_t row = static_cast<int64_t>(i) * p.bq; row < end; ++row) {
        const WarpRow<D> q = load_row<T, D>(row_ptr<T>(p.q, b, h, row), lane);
        const WarpRow<D> d_o = load_row<T, D>(row_ptr<T>(p.d_o, b, h, row), lane);
        const float prob = expf(p.scale * row_dot(q, k) - p.lse[bh * p.lq + row]);
        const float ds = prob * (row_dot(d_o, v) - p.delta[bh * p.lq + row]);
#pragma unroll
        for (int e = 0; e < WarpRow<D>::kPer; ++e) {
          dv.v[e] += prob * d_o.v[e];
          dk.v[e] += p.scale * ds * q.v[e];
        }
      }
    }
    store_row_f32<D>(dk_s + r * P, dk, lane);
    store_row_f32<D>(dv_s + r * P, dv, lane);
  }
  __syncthreads();
  if (p.has_weight) linear_dkdv_epilogue<T, D, F>(p, b, h, j, key0, valid, dk_s, dv_s, scratch);
  for (int r = warp; r < valid; r += kWarps) {
    store_row_out<T, D>(row_ptr_mut<T>(p.grad_k, b, h, key0 + r), dk_s + r * P, lane);
    store_row_out<T, D>(row_ptr_mut<T>(p.grad_v, b, h, key0 + r), dv_s + r * P, lane);
  }
}

template <class Kernel>
Status launch_tile_kernel(Kernel kernel, dim3 grid, std::size_t smem, cudaStream_t stream, const BwdParams& p,
                          const char* name) {
  const cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (e != cudaSuccess) return device_error(name, e);
  kernel<<<grid, kGemmThreads, smem, stream>>>(p);
  return check_launch(name);
}

}  // namespace

Status launch_dq_simple(const BwdParams& p, DType dtype, FeatureMap fm, cudaStream_t stream) {
  return dispatch_type_dim(dtype, p.d, [&](auto type_tag, auto dim_tag) {
    return dispatch_feature_map(fm, [&](auto fm_tag) -> Status {
      using T = typename decltype(type_tag)::type;
      constexpr int D = decltype(dim_tag)::value;
      const std::size_t smem = sizeof(float) * (p.bq * fp32_pitch(D) + linear_epilogue_scratch_floats<D>());
      return launch_tile_kernel(dq_simple_kernel<T, D, decltype(fm_tag)::value>, dim3(p.nq, p.heads, p.batch), smem,
                                stream, p, "backward: dq_simple_kernel");
    });
  });
}

Status launch_dkdv_simple(const BwdParams& p, DType dtype, FeatureMap fm, cudaStream_t stream) {
  return dispatch_type_dim(dtype, p.d, [&](auto type_tag, auto dim_tag) {
    return dispatch_feature_map(fm, [&](auto fm_tag) -> Status {
      using T = typename decltype(type_tag)::type;
      constexpr int D = decltype(dim_tag)::value;
      const std::size_t smem = sizeof(float) * (2 * p.bk * fp32_pitch(D) + linear_epilogue_scratch_floats<D>());
      return launch_tile_kernel(dkdv_simple_kernel<T, D, decltype(fm_tag)::value>, dim3(p.nk, p.heads, p.batch),
                                smem, stream, p, "backward: dkdv_simple_kernel");
    });
  });
}

}  // namespace sla::cuda::bwd
