// The linear-branch state pass (docs/SPEC.md section 3), three launches:
//   key_state_kernel      per (key group, h, b): partial H_g = phi(K_g)^T V_g and z_g = colsum phi(K_g), fp32
//   head_state_kernel     per (16 rows of H, h, b): H = sum of the partials in group order (deterministic),
//                         z likewise; writes lin_h / lin_z when saved, and for the global variant the epilogue
//                         operands (G = H W^T and H as bf16 hi/lo pairs, z)
//   complement_state_kernel (complement variant) per (query block, h, b): H_i = H - sum over the critical and
//                         negligible blocks of the per-block states (the groups are key blocks there), then G_i
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "core/validate.h"
#include "cuda/common/cuda_status.h"
#include "cuda/common/feature_map.cuh"
#include "cuda/common/numeric.cuh"
#include "cuda/common/tile_io.cuh"
#include "cuda/linear_state.h"

namespace sla::cuda {
namespace {

constexpr int kStateThreads = 256;
constexpr int kGlobalGroupRows = 1024;

struct StateParams {
  RowsParams k, v;
  float* part_h;  // (B*H, groups, D, D)
  float* part_z;  // (B*H, groups, D)
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
  float* ph = p.part_h + (bh * p.groups + grp) * kD * kD;
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int n = 0; n < kCols / 8; ++n) {
    const int col = warp_n * kCols + n * 8 + 2 * t;
    const int row = warp_m * 16 + g;
    *reinterpret_cast<float2*>(ph + row * kD + col) = make_float2(acc[n][0], acc[n][1]);
    *reinterpret_cast<float2*>(ph + (row + 8) * kD + col) = make_float2(acc[n][2], acc[n][3]);
  }
#pragma unroll
  for (int e = 0; e < kE; ++e) z_part[warp * kD + lane * kE + e] = zacc[e];
  __syncthreads();
  if (tid < kD) {
    float z = 0.f;
    for (int w = 0; w < kKeyStateThreads / 32; ++w) z += z_part[w * kD + tid];
    p.part_z[(bh * p.groups + grp) * kD + tid] = z;
  }
}

template <int kD>
constexpr int key_state_smem_bytes() {
  return 4 * kStateRows * kD * 2 + (kKeyStateThreads / 32) * kD * 4;
}

struct HeadParams {
  const float* part_h;
  const float* part_z;
  float* h_all;        // (B*H, D, D) fp32, for the complement pass
  float* z_all;        // (B*H, D)
  float* lin_h;        // saved output or null
  float* lin_z;        // saved output or null
  unsigned char* ops;  // global variant: one operand block per (b, h); null for the complement variant
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
__device__ void write_operands(const float* h_rows, int d0, int d, const float* weight,
                               const LinearOperandLayout& lay, unsigned char* ops) {
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
    p.h_all[bh * d * d + idx] = s;
    if (p.lin_h != nullptr) p.lin_h[bh * d * d + idx] = s;
  }
  if (blockIdx.x == 0) {
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
      float s = 0.f;
      for (int g = 0; g < p.groups; ++g) s += p.part_z[(bh * p.groups + g) * d + c];
      p.z_all[bh * d + c] = s;
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

struct ComplementParams {
  const float* part_h;  // per key block states (B*H, Nk, D, D)
  const float* part_z;  // (B*H, Nk, D)
  const float* h_all;
  const float* z_all;
  const int32_t* lut;
  const int32_t* count;
  const int32_t* negl_lut;    // or null
  const int32_t* negl_count;  // or null
  unsigned char* ops;
  int64_t ops_head_stride, ops_qblock_stride;
  LinearOperandLayout lay;
  const float* weight;
  int64_t heads;
  int nq, nk, t, tn, d;
};

// One CTA per (query block, h, b), kHeadRows rows of H_i at a time. H_i = H - sum over C_i and N_i of h_j.
__global__ void __launch_bounds__(kStateThreads) complement_state_kernel(ComplementParams p) {
  __shared__ float h_rows[kHeadRows * 128];
  __shared__ int blocks[2048];
  __shared__ int n_blocks;
  const int i = blockIdx.x;
  const int64_t bh = static_cast<int64_t>(blockIdx.z) * p.heads + blockIdx.y;
  const int d = p.d;
  unsigned char* ops = p.ops + bh * p.ops_head_stride + static_cast<int64_t>(i) * p.ops_qblock_stride;
  if (threadIdx.x == 0) {
    // The removed blocks, in table order (critical, then negligible): a fixed order keeps the sums deterministic.
    int n = 0;
    const int nc = min(max(p.count[bh * p.nq + i], 0), p.t);
    for (int e = 0; e < nc && n < 2048; ++e) {
      const int j = p.lut[(bh * p.nq + i) * p.t + e];
      if (j >= 0 && j < p.nk) blocks[n++] = j;
    }
    if (p.negl_lut != nullptr) {
      const int nn = min(max(p.negl_count[bh * p.nq + i], 0), p.tn);
      for (int e = 0; e < nn && n < 2048; ++e) {
        const int j = p.negl_lut[(bh * p.nq + i) * p.tn + e];
        if (j >= 0 && j < p.nk) blocks[n++] = j;
      }
    }
    n_blocks = n;
    *reinterpret_cast<int32_t*>(ops + p.lay.marginal_empty()) = n >= p.nk ? 1 : 0;
  }
  __syncthreads();
  const int nb = n_blocks;
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float s = p.z_all[bh * d + c];
    for (int e = 0; e < nb; ++e) s -= p.part_z[(bh * p.nk + blocks[e]) * d + c];
    reinterpret_cast<float*>(ops + p.lay.z())[c] = s;
  }
  for (int d0 = 0; d0 < d; d0 += kHeadRows) {
    for (int e = threadIdx.x; e < kHeadRows * d; e += blockDim.x) {
      const int64_t idx = static_cast<int64_t>(d0) * d + e;
      float s = p.h_all[bh * d * d + idx];
      for (int q = 0; q < nb; ++q) s -= p.part_h[(bh * p.nk + blocks[q]) * d * d + idx];
      h_rows[e] = s;
    }
    __syncthreads();
    write_operands<kHeadRows>(h_rows, d0, d, p.weight, p.lay, ops);
    __syncthreads();
  }
}

struct StateBuffers {
  float* part_h;
  float* part_z;
  float* h_all;
  float* z_all;
};

StateBuffers carve(const Problem& p, const LinearStatePlan& plan, WorkspaceCarver& ws) {
  const std::size_t bh = static_cast<std::size_t>(p.batch * p.heads);
  StateBuffers s;
  s.part_h = ws.take<float>(bh * plan.groups * p.d * p.dv);
  s.part_z = ws.take<float>(bh * plan.groups * p.d);
  s.h_all = ws.take<float>(bh * p.d * p.dv);
  s.z_all = ws.take<float>(bh * p.d);
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
  const LinearStatePlan plan = plan_linear_state(p, cfg);
  WorkspaceCarver ws;
  carve(p, plan, ws);
  return ws.bytes();
}

Status launch_linear_state(const Problem& p, const ForwardArgs& args, const Config& cfg, unsigned char* lin_ops,
                           void* workspace, cudaStream_t stream) {
  const LinearStatePlan plan = plan_linear_state(p, cfg);
  WorkspaceCarver ws(workspace);
  const StateBuffers buf = carve(p, plan, ws);

  StateParams sp;
  sp.k = rows_params(args.k);
  sp.v = rows_params(args.v);
  sp.part_h = buf.part_h;
  sp.part_z = buf.part_z;
  sp.heads = p.heads;
  sp.lk = p.lk;
  sp.rows_per_group = plan.rows_per_group;
  sp.groups = static_cast<int>(plan.groups);
  sp.feature_map = static_cast<int>(cfg.feature_map);
  Status st = Status::Unsupported("linear state: head dim " + std::to_string(p.d) + " / dtype " +
                                  dtype_name(p.dtype) + " not built");
  if (p.dtype == DType::bf16 && p.d == 128) st = launch_key_state<__nv_bfloat16, 128>(sp, p, stream);
  if (p.dtype == DType::bf16 && p.d == 64) st = launch_key_state<__nv_bfloat16, 64>(sp, p, stream);
  if (p.dtype == DType::f16 && p.d == 128) st = launch_key_state<__half, 128>(sp, p, stream);
  if (p.dtype == DType::f16 && p.d == 64) st = launch_key_state<__half, 64>(sp, p, stream);
  SLA_RETURN_IF_ERROR(st);

  const bool complement = cfg.variant == Variant::complement;
  const int64_t ops_head_stride = plan.layout.bytes() * plan.operand_blocks;
  HeadParams hp;
  hp.part_h = buf.part_h;
  hp.part_z = buf.part_z;
  hp.h_all = buf.h_all;
  hp.z_all = buf.z_all;
  hp.lin_h = static_cast<float*>(args.lin_h.data);
  hp.lin_z = static_cast<float*>(args.lin_z.data);
  hp.ops = complement ? nullptr : lin_ops;
  hp.ops_stride = ops_head_stride;
  hp.lay = plan.layout;
  hp.weight = static_cast<const float*>(args.proj_weight.data);
  hp.heads = p.heads;
  hp.groups = static_cast<int>(plan.groups);
  hp.d = static_cast<int>(p.d);
  head_state_kernel<<<dim3(static_cast<unsigned>(p.d / kHeadRows), static_cast<unsigned>(p.heads),
                           static_cast<unsigned>(p.batch)),
                      kStateThreads, 0, stream>>>(hp);
  SLA_CUDA_RETURN_IF_LAUNCH_FAILED("head_state_kernel");

  if (complement) {
    const int64_t removable = p.map.critical + p.map.negligible;
    if (removable > 2048) {
      return Status::Unsupported("forward (complement variant): T + Tn = " + std::to_string(removable) +
                                 " key blocks per row exceed the CUDA kernel's limit of 2048");
    }
    ComplementParams cp;
    cp.part_h = buf.part_h;
    cp.part_z = buf.part_z;
    cp.h_all = buf.h_all;
    cp.z_all = buf.z_all;
    cp.lut = static_cast<const int32_t*>(args.map.lut.data);
    cp.count = static_cast<const int32_t*>(args.map.count.data);
    const bool has_negl = args.map.negl_lut.present() && args.map.negl_lut.shape[3] > 0;
    cp.negl_lut = has_negl ? static_cast<const int32_t*>(args.map.negl_lut.data) : nullptr;
    cp.negl_count = has_negl ? static_cast<const int32_t*>(args.map.negl_count.data) : nullptr;
    cp.ops = lin_ops;
    cp.ops_head_stride = ops_head_stride;
    cp.ops_qblock_stride = plan.layout.bytes();
    cp.lay = plan.layout;
    cp.weight = hp.weight;
    cp.heads = p.heads;
    cp.nq = static_cast<int>(p.map.q_blocks);
    cp.nk = static_cast<int>(p.map.k_blocks);
    cp.t = static_cast<int>(args.map.lut.shape[3]);
    cp.tn = has_negl ? static_cast<int>(args.map.negl_lut.shape[3]) : 0;
    cp.d = static_cast<int>(p.d);
    complement_state_kernel<<<dim3(static_cast<unsigned>(cp.nq), static_cast<unsigned>(p.heads),
                                   static_cast<unsigned>(p.batch)),
                              kStateThreads, 0, stream>>>(cp);
    SLA_CUDA_RETURN_IF_LAUNCH_FAILED("complement_state_kernel");
  }
  return Status::Ok();
}

}  // namespace sla::cuda
