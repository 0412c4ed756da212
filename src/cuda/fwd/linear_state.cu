// The linear-branch state pass (docs/SPEC.md section 3).
// Global variant, two launches:
//   key_state_kernel      per (key group, h, b): partial H_g = phi(K_g)^T V_g and z_g = colsum phi(K_g), fp32
//   head_state_kernel     per (4 rows of H, h, b): H = sum of the partials in group order (deterministic),
//                         z likewise; writes lin_h / lin_z when saved, and the epilogue operands (G = H W^T and H
//                         as bf16 hi/lo pairs, z)
// Complement variant: H_i, z_i of every query block as direct sums over its marginal key blocks
// (select/marginal_states.h: key_state_kernel with one group per key block and split bf16 output, the 0/1 mask,
// one selection GEMM), then complement_operands_kernel per (query block, b * h): the epilogue operands of block i
// (H_i split, G_i = H_i W^T on the tensor cores with split operands, z_i) and lin_h / lin_z from the total row.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "core/validate.h"
#include "cuda/build_switch.h"
#include "cuda/common/cuda_status.h"
#include "cuda/common/feature_map.cuh"
#include "cuda/common/mma_frag.cuh"
#include "cuda/common/numeric.cuh"
#include "cuda/common/tile_io.cuh"
#include "cuda/fwd/linear_state.h"
#include "cuda/select/marginal_states.h"
#include "cuda/select/split_product.cuh"

namespace sla::cuda {
namespace {

constexpr int kStateThreads = 256;
constexpr int kGlobalGroupRows = 1024;

struct StateParams {
  RowsParams k, v;
  float* part_h;  // (B*H, groups, D, D), or null with split_rows
  float* part_z;  // (B*H, groups, D)
  // Or the states as the selection GEMM's B operand: per (b, h), 2 * groups rows of split_ld bf16, the hi part of
  // group g's [H_g, z_g] in row g and the lo part in row groups + g.
  uint16_t* split_rows;
  int64_t split_ld;
  int64_t heads, lk, rows_per_group;
  int groups, feature_map;
};

constexpr int kStateRows = 64;  // keys per tensor-core step of key_state_kernel
// key_state_kernel is latency-bound (per-row feature map with shuffle chains, then a short mma burst per 64 keys):
// 16 warps per CTA instead of 8 give the scheduler twice the warps to hide it, and halve each warp's accumulator
// tile (D/16 x 2 warp grid over H), which keeps it under the 128 registers that 512 threads allow.
constexpr int kKeyStateThreads = 512;

// Partial H_g = phi(K_g)^T V_g on the tensor cores. phi(k) enters as an unevaluated sum hi + lo of two values of
// the input type (16+ significant bits) and V exactly, so the fp32 accumulators see phi(k) v to ~2^-16 relative.
// Warp tiling of H (D x D): D/16 warps along d, 16 / (D/16) along dv. z = colsum phi(k) is summed in fp32 from the
// unrounded phi, per warp in key order, then across warps in warp order.
template <class T, int kD, FeatureMap F>
__global__ void __launch_bounds__(kKeyStateThreads) key_state_kernel(StateParams p) {
  using Tag = typename ElementTraits<T>::MmaTag;
  constexpr int kChunks = kD / 8;
  constexpr int kWarpsM = kD / 16, kWarpsN = (kKeyStateThreads / 32) / kWarpsM;
  constexpr int kCols = kD / kWarpsN;  // dv columns per warp
  constexpr int kE = kD / 32;          // elements of a key row per lane
  constexpr int kTileBytes = kStateRows * kD * 2;
  extern __shared__ __align__(128) unsigned char state_smem[];
  // Two V stages, phi(K) as hi and lo, and the per-warp z partials.
  const uint32_t v_stages = smem_addr(state_smem);
  const uint32_t phi_hi = v_stages + 2 * kTileBytes, phi_lo = phi_hi + kTileBytes;
  float* z_part = reinterpret_cast<float*>(state_smem + 4 * kTileBytes);  // (warps, D)

  const int grp = blockIdx.x;
  const int64_t h = blockIdx.y, b = blockIdx.z, bh = b * p.heads + h;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int warp_m = warp % kWarpsM, warp_n = warp / kWarpsM;
  const T* k_head = static_cast<const T*>(p.k.ptr) + b * p.k.batch_stride + h * p.k.head_stride;
  const T* v_head = static_cast<const T*>(p.v.ptr) + b * p.v.batch_stride + h * p.v.head_stride;
  const int64_t r_begin = grp * p.rows_per_group;
  const int64_t r_end = min_i64(p.lk, r_begin + p.rows_per_group);

  float acc[kCols / 8][4];
#pragma unroll
  for (int n = 0; n < kCols / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  float zacc[kE];
#pragma unroll
  for (int e = 0; e < kE; ++e) zacc[e] = 0.f;

  // Software pipeline: while chunk c is multiplied, V of chunk c + 1 streams into the other stage (cp.async) and
  // the K rows of chunk c + 1 into registers.
  constexpr int kRowsPerWarp = kStateRows / (kKeyStateThreads / 32);
  uint32_t raw[kRowsPerWarp][kE / 2];
  auto issue_loads = [&](int64_t r0, int stage) {
    const int valid = static_cast<int>(min_i64(kStateRows, r_end - r0));
    load_tile_async<kStateRows, kD, kKeyStateThreads>(v_stages + stage * kTileBytes,
                                                      reinterpret_cast<const uint16_t*>(v_head + r0 * p.v.row_stride),
                                                      p.v.row_stride, valid, tid);
#pragma unroll
    for (int q = 0; q < kRowsPerWarp; ++q) {
      const int rr = warp + q * (kKeyStateThreads / 32);
      const T* src = k_head + (r0 + (rr < valid ? rr : 0)) * p.k.row_stride + lane * kE;
      if constexpr (kE == 4) {
        const uint2 u = *reinterpret_cast<const uint2*>(src);
        raw[q][0] = u.x;
        raw[q][1] = u.y;
      } else {
        raw[q][0] = *reinterpret_cast<const uint32_t*>(src);
      }
    }
  };
  if (r_begin < r_end) issue_loads(r_begin, 0);
  cp_async_commit();

  int stage = 0;
  for (int64_t r0 = r_begin; r0 < r_end; r0 += kStateRows, stage ^= 1) {
    const int valid = static_cast<int>(min_i64(kStateRows, r_end - r0));
    // phi of each key row: lanes own kE consecutive columns.
#pragma unroll
    for (int q = 0; q < kRowsPerWarp; ++q) {
      const int rr = warp + q * (kKeyStateThreads / 32);
      const bool ok = rr < valid;
      float x[kE];
#pragma unroll
      for (int e = 0; e < kE / 2; ++e) {
        const float2 f = ElementTraits<T>::unpack2(raw[q][e]);
        x[2 * e] = ok ? f.x : 0.f;
        x[2 * e + 1] = ok ? f.y : 0.f;
      }
      FeatureRowStats st;
      if constexpr (F == FeatureMap::softmax) {
        float mx = x[0];
#pragma unroll
        for (int e = 1; e < kE; ++e) mx = fmaxf(mx, x[e]);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, off));
        float s = 0.f;
#pragma unroll
        for (int e = 0; e < kE; ++e) s += __expf(x[e] - mx);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xFFFFFFFFu, s, off);
        st.max = mx;
        st.inv_sum = 1.f / s;
      }
      float a[kE];
#pragma unroll
      for (int e = 0; e < kE; ++e) {
        a[e] = ok ? phi_forward<F>(x[e], st) : 0.f;
        zacc[e] += a[e];
      }
      uint32_t hi[kE / 2], lo[kE / 2];
#pragma unroll
      for (int e = 0; e < kE / 2; ++e) {
        hi[e] = ElementTraits<T>::pack2(a[2 * e], a[2 * e + 1]);
        const float2 hf = ElementTraits<T>::unpack2(hi[e]);
        lo[e] = ElementTraits<T>::pack2(a[2 * e] - hf.x, a[2 * e + 1] - hf.y);
      }
      const int c0 = lane * kE;
      const uint32_t off = swizzle<kChunks>(rr, c0 / 8) + (c0 % 8) * 2;
      if constexpr (kE == 4) {
        asm volatile("st.shared.v2.u32 [%0], {%1, %2};\n" ::"r"(phi_hi + off), "r"(hi[0]), "r"(hi[1]));
        asm volatile("st.shared.v2.u32 [%0], {%1, %2};\n" ::"r"(phi_lo + off), "r"(lo[0]), "r"(lo[1]));
      } else {
        asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(phi_hi + off), "r"(hi[0]));
        asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(phi_lo + off), "r"(lo[0]));
      }
    }
    if (r0 + kStateRows < r_end) issue_loads(r0 + kStateRows, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // V of this chunk has landed
    __syncthreads();
    const uint32_t v_tile = v_stages + stage * kTileBytes;
#pragma unroll
    for (int ks = 0; ks < kStateRows / 16; ++ks) {
      uint32_t ah[4], al[4];
      ldsm_a_trans<kChunks>(ah, phi_hi, warp_m * 16, ks * 16, lane);
      ldsm_a_trans<kChunks>(al, phi_lo, warp_m * 16, ks * 16, lane);
#pragma unroll
      for (int np = 0; np < kCols / 16; ++np) {
        uint32_t bv[4];
        ldsm_b_kn<kChunks>(bv, v_tile, warp_n * kCols + np * 16, ks * 16, lane);
        const uint32_t b0[2] = {bv[0], bv[1]}, b1[2] = {bv[2], bv[3]};
        mma_16816(acc[2 * np], ah, b0, Tag{});
        mma_16816(acc[2 * np], al, b0, Tag{});
        mma_16816(acc[2 * np + 1], ah, b1, Tag{});
        mma_16816(acc[2 * np + 1], al, b1, Tag{});
      }
    }
    __syncthreads();  // phi and this V stage are free again
  }
  cp_async_wait<0>();
  const int g = lane >> 2, t = lane & 3;
  uint16_t* split_hi = nullptr;
  uint16_t* split_lo = nullptr;
  if (p.split_rows != nullptr) {
    split_hi = p.split_rows + (bh * 2 * p.groups + grp) * p.split_ld;
    split_lo = split_hi + p.groups * p.split_ld;
  }
#pragma unroll
  for (int n = 0; n < kCols / 8; ++n) {
    const int col = warp_n * kCols + n * 8 + 2 * t;
    const int row = warp_m * 16 + g;
    if (split_hi != nullptr) {
      const SplitBf16 s0 = split_bf16x2(acc[n][0], acc[n][1]), s1 = split_bf16x2(acc[n][2], acc[n][3]);
      *reinterpret_cast<uint32_t*>(split_hi + row * kD + col) = s0.hi;
      *reinterpret_cast<uint32_t*>(split_lo + row * kD + col) = s0.lo;
      *reinterpret_cast<uint32_t*>(split_hi + (row + 8) * kD + col) = s1.hi;
      *reinterpret_cast<uint32_t*>(split_lo + (row + 8) * kD + col) = s1.lo;
    } else {
      float* ph = p.part_h + (bh * p.groups + grp) * kD * kD;
      *reinterpret_cast<float2*>(ph + row * kD + col) = make_float2(acc[n][0], acc[n][1]);
      *reinterpret_cast<float2*>(ph + (row + 8) * kD + col) = make_float2(acc[n][2], acc[n][3]);
    }
  }
#pragma unroll
  for (int e = 0; e < kE; ++e) z_part[warp * kD + lane * kE + e] = zacc[e];
  __syncthreads();
  if (tid < kD) {
    float z = 0.f;
    for (int w = 0; w < kKeyStateThreads / 32; ++w) z += z_part[w * kD + tid];
    if (split_hi != nullptr) {
      const __nv_bfloat16 zh = __float2bfloat16_rn(z);
      reinterpret_cast<__nv_bfloat16*>(split_hi)[kD * kD + tid] = zh;
      reinterpret_cast<__nv_bfloat16*>(split_lo)[kD * kD + tid] = __float2bfloat16_rn(z - __bfloat162float(zh));
    } else {
      p.part_z[(bh * p.groups + grp) * kD + tid] = z;
    }
  }
}

template <int kD>
constexpr int key_state_smem_bytes() {
  return 4 * kStateRows * kD * 2 + (kKeyStateThreads / 32) * kD * 4;
}

struct HeadParams {
  const float* part_h;
  const float* part_z;
  float* lin_h;        // saved output or null
  float* lin_z;        // saved output or null
  unsigned char* ops;  // one operand block per (b, h)
  int64_t ops_stride;
  LinearOperandLayout lay;
  const float* weight;  // (D, D) or null
  int64_t heads;
  int groups, d;
};

// Rows [d0, d0 + rows) of the operand block from fp32 rows of H in shared memory: H as hi/lo, and, when W is
// present, G = H W^T as hi/lo. One warp per output column n of G: lanes split the reduction over m (W's row n is
// read coalesced) and combine with shuffles in a fixed pattern.
template <int kRows>
__device__ void write_operands(const float* h_rows, int d0, int d, const float* weight, const LinearOperandLayout& lay,
                               unsigned char* ops) {
  __nv_bfloat16* g_hi = reinterpret_cast<__nv_bfloat16*>(ops + lay.g_hi());
  __nv_bfloat16* g_lo = reinterpret_cast<__nv_bfloat16*>(ops + lay.g_lo());
  __nv_bfloat16* h_hi = reinterpret_cast<__nv_bfloat16*>(ops + lay.h_hi());
  __nv_bfloat16* h_lo = reinterpret_cast<__nv_bfloat16*>(ops + lay.h_lo());
  for (int e = threadIdx.x; e < kRows * d; e += blockDim.x) {
    const int r = e / d, n = e % d;
    const float hv = h_rows[r * d + n];
    const __nv_bfloat16 hh = __float2bfloat16_rn(hv);
    h_hi[(d0 + r) * d + n] = hh;
    h_lo[(d0 + r) * d + n] = __float2bfloat16_rn(hv - __bfloat162float(hh));
  }
  if (weight == nullptr) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int n = warp; n < d; n += warps) {
    float acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = 0.f;
    for (int m = lane; m < d; m += 32) {
      const float w = __ldg(weight + static_cast<int64_t>(n) * d + m);
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[r] = fmaf(h_rows[r * d + m], w, acc[r]);
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[r] += __shfl_xor_sync(0xFFFFFFFFu, acc[r], off);
    }
    if (lane < kRows) {
      float gv = acc[0];
#pragma unroll
      for (int r = 1; r < kRows; ++r)
        if (lane == r) gv = acc[r];
      const __nv_bfloat16 gh = __float2bfloat16_rn(gv);
      g_hi[(d0 + lane) * d + n] = gh;
      g_lo[(d0 + lane) * d + n] = __float2bfloat16_rn(gv - __bfloat162float(gh));
    }
  }
}

constexpr int kHeadRows = 4;  // rows of H per head_state CTA: D/4 CTAs per head

__global__ void __launch_bounds__(kStateThreads) head_state_kernel(HeadParams p) {
  __shared__ float h_rows[kHeadRows * 128];
  const int d0 = blockIdx.x * kHeadRows;
  const int64_t bh = static_cast<int64_t>(blockIdx.z) * p.heads + blockIdx.y;
  const int d = p.d;
  for (int e = threadIdx.x; e < kHeadRows * d; e += blockDim.x) {
    const int64_t idx = static_cast<int64_t>(d0) * d + e;
    float s = 0.f;
    for (int g = 0; g < p.groups; ++g) s += p.part_h[(bh * p.groups + g) * d * d + idx];
    h_rows[e] = s;
    if (p.lin_h != nullptr) p.lin_h[bh * d * d + idx] = s;
  }
  if (blockIdx.x == 0) {
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
      float s = 0.f;
      for (int g = 0; g < p.groups; ++g) s += p.part_z[(bh * p.groups + g) * d + c];
      if (p.lin_z != nullptr) p.lin_z[bh * d + c] = s;
      if (p.ops != nullptr) reinterpret_cast<float*>(p.ops + bh * p.ops_stride + p.lay.z())[c] = s;
    }
    if (p.ops != nullptr && threadIdx.x == 0) {
      *reinterpret_cast<int32_t*>(p.ops + bh * p.ops_stride + p.lay.marginal_empty()) = 0;
    }
  }
  __syncthreads();
  if (p.ops != nullptr) write_operands<kHeadRows>(h_rows, d0, d, p.weight, p.lay, p.ops + bh * p.ops_stride);
}

// The forward's per-query-block operands of the complement variant from the selected states (one CTA per row of
// MarginalStates::out): z_i, the empty flag, H_i split when the epilogue reads it, and G_i = H_i W^T split, a product
// on the tensor cores with split operands (select/split_product.cuh). Row Nq, the sum over all key blocks, goes to
// lin_h / lin_z when they are saved.
struct OperandsParams {
  const float* states;  // (B*H, rows, n): row i = [H_i, z_i]
  int64_t n = 0, rows = 0;
  const int32_t* count;
  const int32_t* negl_count;  // or null
  int nq = 0, nk = 0;
  unsigned char* ops;
  int64_t ops_head_stride = 0, ops_qblock_stride = 0;
  LinearOperandLayout lay;
  const float* weight;  // (D, D) or null
  bool write_h = false;
  float* lin_h;  // or null
  float* lin_z;  // or null
};

template <int D>
constexpr int operands_smem_bytes() {
  return 2 * SplitSquare<D>::kOperandBytes;
}

template <int D>
__global__ void __launch_bounds__(SplitSquare<D>::kThreads) complement_operands_kernel(OperandsParams p) {
  constexpr int kThreads = SplitSquare<D>::kThreads, kTile = SplitSquare<D>::kTileBytes;
  extern __shared__ __align__(128) unsigned char operands_smem[];
  const uint32_t x_hi = smem_addr(operands_smem), x_lo = x_hi + kTile, y_hi = x_lo + kTile, y_lo = y_hi + kTile;
  const int i = blockIdx.x, tid = threadIdx.x;
  const int64_t bh = blockIdx.y;
  const float* src = p.states + (bh * p.rows + i) * p.n;
  if (i == p.nq) {  // the total row
    if (p.lin_h != nullptr) {
      for (int e = tid; e < D * D; e += kThreads) p.lin_h[bh * D * D + e] = src[e];
    }
    if (p.lin_z != nullptr) {
      for (int c = tid; c < D; c += kThreads) p.lin_z[bh * D + c] = src[D * D + c];
    }
    return;
  }
  unsigned char* ops = p.ops + bh * p.ops_head_stride + static_cast<int64_t>(i) * p.ops_qblock_stride;
  float* z = reinterpret_cast<float*>(ops + p.lay.z());
  for (int c = tid; c < D; c += kThreads) z[c] = src[D * D + c];
  if (tid == 0) {
    // The checked map's rows hold distinct in-range blocks, so the counts say whether any block is marginal.
    const int64_t part = bh * p.nq + i;
    const int removed = p.count[part] + (p.negl_count != nullptr ? p.negl_count[part] : 0);
    *reinterpret_cast<int32_t*>(ops + p.lay.marginal_empty()) = removed >= p.nk ? 1 : 0;
  }
  uint16_t* h_hi = p.write_h ? reinterpret_cast<uint16_t*>(ops + p.lay.h_hi()) : nullptr;
  uint16_t* h_lo = p.write_h ? reinterpret_cast<uint16_t*>(ops + p.lay.h_lo()) : nullptr;
  stage_split<D>(x_hi, x_lo, src, D, tid, h_hi, h_lo);
  if (p.weight == nullptr) return;
  stage_split<D>(y_hi, y_lo, p.weight, D, tid);
  __syncthreads();
  const int warp = tid / 32, lane = tid % 32;
  float acc[D / 8][4];
  zero_acc<D>(acc);
  split_product<D, false, true>(acc, x_hi, x_lo, y_hi, y_lo, warp * 16, lane);
  store_split_pairs<D>(acc, warp * 16, lane, reinterpret_cast<uint16_t*>(ops + p.lay.g_hi()),
                       reinterpret_cast<uint16_t*>(ops + p.lay.g_lo()));
}

struct StateBuffers {
  float* part_h;
  float* part_z;
};

// Global variant: the group partials. Complement variant: the selected states (with the total row, so that the
// size does not depend on whether lin_h is saved).
StateBuffers carve_global(const Problem& p, const LinearStatePlan& plan, WorkspaceCarver& ws) {
  const std::size_t bh = static_cast<std::size_t>(p.batch * p.heads);
  StateBuffers s;
  s.part_h = ws.take<float>(bh * plan.groups * p.d * p.dv);
  s.part_z = ws.take<float>(bh * plan.groups * p.d);
  return s;
}

template <class T, int kD>
Status launch_key_state(const StateParams& sp, const Problem& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(sp.groups), static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch));
  constexpr int smem = key_state_smem_bytes<kD>();
  cudaError_t attr = cudaSuccess;
  SLA_FEATURE_MAP_SWITCH(static_cast<FeatureMap>(sp.feature_map), FM, [&] {
    attr = cudaFuncSetAttribute(key_state_kernel<T, kD, FM>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (attr == cudaSuccess) key_state_kernel<T, kD, FM><<<grid, kKeyStateThreads, smem, stream>>>(sp);
  });
  if (attr != cudaSuccess) return device_error("key_state_kernel: cudaFuncSetAttribute", attr);
  return check_launch("key_state_kernel");
}

Status launch_key_states(const StateParams& sp, const Problem& p, cudaStream_t stream) {
  return SLA_CUDA_DTYPE_SWITCH(p.dtype, T, "linear state", [&] {
    return SLA_CUDA_HEADDIM_SWITCH(p.d, kD, "linear state", [&] {
      return launch_key_state<T, kD>(sp, p, stream);
    });
  });
}

StateParams state_params(const Problem& p, const TensorView& k, const TensorView& v, FeatureMap fm,
                         int64_t rows_per_group) {
  StateParams sp{};
  sp.k = rows_params(k);
  sp.v = rows_params(v);
  sp.heads = p.heads;
  sp.lk = p.lk;
  sp.rows_per_group = rows_per_group;
  sp.groups = static_cast<int>((p.lk + rows_per_group - 1) / rows_per_group);
  sp.feature_map = static_cast<int>(fm);
  return sp;
}

Status launch_complement_operands(const Problem& p, const ForwardArgs& args, const LinearStatePlan& plan,
                                  const MarginalStates& s, unsigned char* lin_ops, cudaStream_t stream) {
  OperandsParams op{};
  op.states = s.out;
  op.n = s.n;
  op.rows = s.rows;
  op.count = static_cast<const int32_t*>(args.map.count.data);
  const bool has_negl = args.map.negl_lut.present() && args.map.negl_lut.shape[3] > 0;
  op.negl_count = has_negl ? static_cast<const int32_t*>(args.map.negl_count.data) : nullptr;
  op.nq = static_cast<int>(p.map.q_blocks);
  op.nk = static_cast<int>(p.map.k_blocks);
  op.ops = lin_ops;
  op.ops_qblock_stride = plan.layout.bytes();
  op.ops_head_stride = op.ops_qblock_stride * plan.operand_blocks;
  op.lay = plan.layout;
  op.weight = static_cast<const float*>(args.proj_weight.data);
  // The epilogue reads H_i for O_l (saved) or as its only operand (no W).
  op.write_h = args.o_lin.present() || op.weight == nullptr;
  op.lin_h = static_cast<float*>(args.lin_h.data);
  op.lin_z = static_cast<float*>(args.lin_z.data);
  return SLA_CUDA_HEADDIM_SWITCH(p.d, D, "linear state", [&]() -> Status {
    constexpr int smem = operands_smem_bytes<D>();
    SLA_RETURN_IF_ERROR(set_dynamic_smem(complement_operands_kernel<D>, smem, "complement_operands_kernel"));
    const dim3 grid(static_cast<unsigned>(s.rows), static_cast<unsigned>(p.batch * p.heads));
    complement_operands_kernel<D><<<grid, SplitSquare<D>::kThreads, smem, stream>>>(op);
    return check_launch("complement_operands_kernel");
  });
}

}  // namespace

LinearStatePlan plan_linear_state(const Problem& p, const Config& cfg) {
  LinearStatePlan plan;
  if (cfg.variant == Variant::complement) {
    plan.rows_per_group = cfg.block_k;
    plan.operand_blocks = p.map.q_blocks;
  } else {
    plan.rows_per_group = kGlobalGroupRows;
    plan.operand_blocks = 1;
  }
  plan.groups = (p.lk + plan.rows_per_group - 1) / plan.rows_per_group;
  plan.layout.d = p.d;
  plan.layout.dv = p.dv;
  return plan;
}

std::size_t linear_state_workspace_bytes(const Problem& p, const Config& cfg) {
  WorkspaceCarver ws;
  if (cfg.variant == Variant::complement) {
    carve_marginal_states(p, /*total_row=*/true, ws);
  } else {
    carve_global(p, plan_linear_state(p, cfg), ws);
  }
  return ws.bytes();
}

bool linear_ops_share_state(const Problem& p, const Config& cfg) {
  if (cfg.variant != Variant::complement) return false;
  const LinearStatePlan plan = plan_linear_state(p, cfg);
  const int64_t key_state_bytes = 2 * p.map.k_blocks * marginal_state_cols(p) * 2;  // per (b, h), bf16
  return plan.operand_blocks * plan.layout.bytes() <= key_state_bytes;
}

Status launch_key_block_states(const Problem& p, const TensorView& k, const TensorView& v, const Config& cfg,
                               uint16_t* out, int64_t ld, cudaStream_t stream) {
  StateParams sp = state_params(p, k, v, cfg.feature_map, cfg.block_k);
  sp.split_rows = out;
  sp.split_ld = ld;
  return launch_key_states(sp, p, stream);
}

Status launch_linear_state(const Problem& p, const ForwardArgs& args, const Config& cfg, unsigned char* lin_ops,
                           void* workspace, cudaStream_t stream) {
  const LinearStatePlan plan = plan_linear_state(p, cfg);
  WorkspaceCarver ws(workspace);
  if (cfg.variant == Variant::complement) {
    const MarginalStates s = carve_marginal_states(p, /*total_row=*/true, ws);
    SLA_RETURN_IF_ERROR(launch_marginal_states(p, args.k, args.v, args.map, cfg, s, stream));
    return launch_complement_operands(p, args, plan, s, lin_ops, stream);
  }

  const StateBuffers buf = carve_global(p, plan, ws);
  StateParams sp = state_params(p, args.k, args.v, cfg.feature_map, plan.rows_per_group);
  sp.part_h = buf.part_h;
  sp.part_z = buf.part_z;
  SLA_RETURN_IF_ERROR(launch_key_states(sp, p, stream));

  HeadParams hp;
  hp.part_h = buf.part_h;
  hp.part_z = buf.part_z;
  hp.lin_h = static_cast<float*>(args.lin_h.data);
  hp.lin_z = static_cast<float*>(args.lin_z.data);
  hp.ops = lin_ops;
  hp.ops_stride = plan.layout.bytes() * plan.operand_blocks;
  hp.lay = plan.layout;
  hp.weight = static_cast<const float*>(args.proj_weight.data);
  hp.heads = p.heads;
  hp.groups = static_cast<int>(plan.groups);
  hp.d = static_cast<int>(p.d);
  head_state_kernel<<<dim3(static_cast<unsigned>(p.d / kHeadRows), static_cast<unsigned>(p.heads),
                           static_cast<unsigned>(p.batch)),
                      kStateThreads, 0, stream>>>(hp);
  SLA_CUDA_RETURN_IF_LAUNCH_FAILED("head_state_kernel");
  return Status::Ok();
}

}  // namespace sla::cuda
