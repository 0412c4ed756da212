// The backward pass's linear branch and projection (docs/SPEC.md section 5), everything except the per-row epilogues
// that the sparse kernels apply to dq, dk, dv. With A_r = a_r / n_r (a_r = phi(q_r)) and G = W H^T:
//   - D_r = dO_l[r] . O_l[r] = A_r . (dO_r G), so no per-row O_l W^T product is needed;
//   - Delta_r = dO . O_s with the forward's fp32 O_s (o_sparse): no 16-bit rounding in it. A caller without
//     o_sparse gets dO . O - D_r - dO . b, which carries the input-dtype rounding of the whole output O;
//   - E = sum_r A_r^T dO_r, then dH = E W (= sum_r A_r^T dO_l[r]) and dW = sum_r dO_r^T O_l[r] = E^T H;
//   - dz = -sum_r A_r D_r and db = sum_r dO_r.
// The per-row products run on the tensor cores with split-bf16 operands (split_mma.cuh). Every reduction writes
// per-CTA partial sums that a second kernel adds in a fixed order: deterministic, no atomics.
//
// Complement variant (docs/KERNELS_NEXT.md 1.3): H_i, z_i come from the selection GEMM (select/marginal_states.h);
// the per-query-block products G_i^T = W H_i^T, dH_i = E_i W and the dW partials E_i^T H_i run one CTA per block on
// the tensor cores (select/split_product.cuh); every key block j then receives dH^(j) = sum over the query blocks i
// with j in M_i of dH_i (and dz^(j) likewise) from a second selection GEMM with the transposed mask, written split in
// place for the dk/dv epilogue.
#include <cuda_runtime.h>

#include <algorithm>

#include "core/validate.h"
#include "cuda/build_switch.h"
#include "cuda/bwd/linear_bwd.h"
#include "cuda/bwd/split_mma.cuh"
#include "cuda/bwd/tile_stage.cuh"
#include "cuda/bwd/warp_row.cuh"
#include "cuda/common/cuda_status.h"
#include "cuda/select/marginal_mask.h"
#include "cuda/select/select_gemm.h"
#include "cuda/select/split_product.cuh"

namespace sla::cuda::bwd {
namespace {

// Query rows [begin, end) and partial-sum slot of one row_prep CTA.
struct RowRange {
  int64_t begin, end, part;
};

__device__ __forceinline__ RowRange row_range(const BwdParams& p, int64_t bh, int64_t x) {
  RowRange r;
  if (p.complement) {
    r.begin = x * p.bq;
    r.end = min(p.lq, r.begin + p.bq);
    r.part = bh * p.nq + x;
  } else {
    r.begin = x * p.rows_per_chunk;
    r.end = min(p.lq, r.begin + p.rows_per_chunk);
    r.part = bh * p.row_chunks + x;
  }
  return r;
}

// row_prep_kernel runs 16 warps: it is latency-bound (per-row shuffle chains, shared-memory round trips between
// short tensor-core bursts) and its shared memory allows one CTA per SM, so the warps per SM come from the CTA.
// 16 warps also halve each warp's E accumulator tile, which keeps it within the 128 registers 512 threads allow.
constexpr int kRowPrepThreads = 512, kRowPrepWarps = kRowPrepThreads / 32;
constexpr int kUColSplit = kRowPrepWarps / (kStatsTileRows / 16);  // u = dO G: warps per 16-row group

template <int D>
struct RowPrepSmem {
  static constexpr int SR = kStatsTileRows;
  static constexpr int kTile = SR * D * 2, kSquare = D * D * 2;
  static constexpr int g_hi = 0, g_lo = g_hi + kSquare;                // G split, b16 tiles
  static constexpr int q = g_lo + kSquare, o = q + kTile;               // Q and O tiles, dtype T
  static constexpr int d_o = o + kTile;                                 // dO tiles (two buffers), dtype T
  static constexpr int a_hi = d_o + 2 * kTile, a_lo = a_hi + kTile;     // A = a / n split, b16 tiles
  static constexpr int delta0 = a_lo + kTile;                           // dO . O_s (or dO . O - dO . b) per row
  static constexpr int d_r = delta0 + SR * 4;                           // D_r per row, per column split
  static constexpr int kBytes = d_r + kUColSplit * SR * 4;
  // A is kept only as its hi + lo split (~16 significant bits, the precision the E = A^T dO products see): an
  // extra fp32 copy (SR x D x 4 bytes) would push D = 128 past sm_80's 163 KB per block.
  static_assert(kBytes <= 163 * 1024, "row_prep must fit sm_80's shared memory per block");
};

// Grid (row chunks or Nq, H, B), 512 threads. Per 64-row tile: A_r, 1/n_r, Delta_r, D_r (u = dO G on the tensor
// cores), and the partial sums E += A^T dO (tensor cores), dz -= A^T D_r, db += colsum dO of the CTA's rows.
template <class T, int D, FeatureMap F>
__global__ void __launch_bounds__(kRowPrepThreads) row_prep_kernel(BwdParams p, bool need_e) {
  using Smem = RowPrepSmem<D>;
  constexpr int SR = Smem::SR, kThreads = kRowPrepThreads, kSlices = kThreads / D;
  static_assert(kThreads % D == 0 && 2 * kThreads * 4 <= Smem::kTile, "dz/db slices: threads per column, scratch");
  // u = dO G: warp (rg, ch) owns rows 16 rg.. and D / kUColSplit columns. E = A^T dO: warp (erg, ech) owns rows
  // (d) 16 erg.. and D / kEColSplit columns.
  constexpr int kUCols = D / kUColSplit, kNtU = kUCols / 8;
  constexpr int kERowGroups = D / 16, kEColSplit = kRowPrepWarps / kERowGroups, kNtE = D / 8 / kEColSplit;
  static_assert(kNtU % 2 == 0 && kNtE % 2 == 0, "n-tiles come in pairs (one ldmatrix.x4 per two)");
  extern __shared__ float smem_f32[];
  unsigned char* smem = reinterpret_cast<unsigned char*>(smem_f32);
  const uint32_t base = smem_addr(smem);
  float* delta0_s = reinterpret_cast<float*>(smem + Smem::delta0);
  float* dr_s = reinterpret_cast<float*>(smem + Smem::d_r);
  __nv_bfloat16* a_hi = reinterpret_cast<__nv_bfloat16*>(smem + Smem::a_hi);
  __nv_bfloat16* a_lo = reinterpret_cast<__nv_bfloat16*>(smem + Smem::a_lo);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int64_t b = blockIdx.z, h = blockIdx.y, bh = b * p.heads + h;
  const RowRange range = row_range(p, bh, blockIdx.x);
  const float* z = p.complement ? p.grp_z + range.part * p.grp_stride : p.lin_z + bh * D;
  // A[r][c] and A[r][c + 1] (c even) from the split tiles.
  auto a_pair = [&](int r, int c) {
    const uint32_t off = swizzle<D / 8>(r, c / 8) + (c % 8) * 2;
    const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(smem + Smem::a_hi + off));
    const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(smem + Smem::a_lo + off));
    return make_float2(hi.x + lo.x, hi.y + lo.y);
  };

  if (p.has_weight) {
    const uint16_t* gsrc = p.g_split + (p.complement ? range.part : bh) * 2 * D * D;
    load_tile_async<D, D, kThreads>(base + Smem::g_hi, gsrc, D, D, tid);
    load_tile_async<D, D, kThreads>(base + Smem::g_lo, gsrc + D * D, D, D, tid);
  }
  cp_async_commit();

  const int erg = warp % kERowGroups, ech = warp / kERowGroups;
  float e_acc[kNtE][4];
#pragma unroll
  for (int n = 0; n < kNtE; ++n) e_acc[n][0] = e_acc[n][1] = e_acc[n][2] = e_acc[n][3] = 0.f;
  float dz = 0.f, db = 0.f;

  // Tiles of Q, O and dO come in with cp.async; the next tile's loads overlap this tile's products.
  auto issue_tile = [&](int64_t row0, int buf) {
    const int valid = static_cast<int>(min64(SR, range.end - row0));
    load_tile_async<SR, D, kThreads>(base + Smem::q, reinterpret_cast<const uint16_t*>(row_ptr<T>(p.q, b, h, row0)),
                                     p.q.row_stride, valid, tid);
    if (p.o_sparse == nullptr) {
      load_tile_async<SR, D, kThreads>(base + Smem::o, reinterpret_cast<const uint16_t*>(row_ptr<T>(p.o, b, h, row0)),
                                       p.o.row_stride, valid, tid);
    }
    load_tile_async<SR, D, kThreads>(base + Smem::d_o + buf * Smem::kTile,
                                     reinterpret_cast<const uint16_t*>(row_ptr<T>(p.d_o, b, h, row0)),
                                     p.d_o.row_stride, valid, tid);
    cp_async_commit();
  };
  auto tile_row = [&](int offset, int r) {
    WarpRow<D> x;
#pragma unroll
    for (int t = 0; t < WarpRow<D>::kPer; ++t) {
      const int c = lane + 32 * t;
      x.v[t] = ElementTraits<T>::to_float(
          *reinterpret_cast<const T*>(smem + offset + swizzle<D / 8>(r, c / 8) + (c % 8) * 2));
    }
    return x;
  };
  if (range.begin < range.end) issue_tile(range.begin, 0);

  int buf = 0;
  for (int64_t row0 = range.begin; row0 < range.end; row0 += SR, buf ^= 1) {
    const int valid = static_cast<int>(min64(SR, range.end - row0));
    const int do_off = Smem::d_o + buf * Smem::kTile;
    cp_async_wait<0>();
    __syncthreads();  // this tile has landed; the previous tile's readers are done
    // Per row (warp per row): A = phi(q) / n, 1/n and dO . O - dO . b. Unrolled so that independent rows overlap
    // their shuffle chains.
#pragma unroll 2
    for (int r = warp; r < SR; r += kRowPrepWarps) {
      WarpRow<D> scaled{};
      float delta0 = 0.f;
      if (r < valid) {
        const int64_t row = row0 + r;
        const WarpRow<D> a = feature_map_row<F, D>(tile_row(Smem::q, r));
        const float n = row_dot(a, load_row_f32<D>(z, lane)) + p.eps;
        // Global: n >= eps > 0 always. Complement: a denominator <= 0 defines O_l = 0 (docs/SPEC.md 3); a NaN one
        // (non-finite q or k) is no zero row and keeps the gradients NaN.
        const float inv_n = (!p.complement || !(n <= 0.f)) ? 1.f / n : 0.f;
        const WarpRow<D> d_o = tile_row(do_off, r);
        if (p.o_sparse != nullptr) {
          delta0 = row_dot(d_o, load_row_f32<D>(p.o_sparse + (bh * p.lq + row) * D, lane));
        } else {
          delta0 = row_dot(d_o, tile_row(Smem::o, r));
          if (p.proj_b) delta0 -= row_dot(d_o, load_row_f32<D>(p.proj_b, lane));
        }
        if (lane == 0) p.inv_n[bh * p.lq + row] = inv_n;
#pragma unroll
        for (int t = 0; t < WarpRow<D>::kPer; ++t) scaled.v[t] = a.v[t] * inv_n;
      }
#pragma unroll
      for (int t = 0; t < WarpRow<D>::kPer; ++t) {
        const int c = lane + 32 * t;
        const uint32_t off = swizzle<D / 8>(r, c / 8) + (c % 8) * 2;
        const __nv_bfloat16 hi = __float2bfloat16_rn(scaled.v[t]);
        a_hi[off / 2] = hi;
        a_lo[off / 2] = __float2bfloat16_rn(scaled.v[t] - __bfloat162float(hi));
      }
      if (lane == 0) delta0_s[r] = delta0;
    }
    __syncthreads();  // Q and O tiles are free; A is complete
    if (row0 + SR < range.end) issue_tile(row0 + SR, buf ^ 1);

    // D_r = A_r . (dO_r G), each warp over D / kUColSplit columns; the parts meet in shared memory.
    if (p.has_weight) {
      const int rg = warp % (SR / 16), ch = warp / (SR / 16);
      float u[kNtU][4];
#pragma unroll
      for (int n = 0; n < kNtU; ++n) u[n][0] = u[n][1] = u[n][2] = u[n][3] = 0.f;
      warp_mma_t_split<T, D, D, true, kNtU>(u, base + do_off, rg * 16, base + Smem::g_hi, base + Smem::g_lo, D,
                                            ch * kUCols, lane);
      float part[2] = {0.f, 0.f};
#pragma unroll
      for (int n = 0; n < kNtU; ++n)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const float2 a = a_pair(rg * 16 + g + 8 * hf, ch * kUCols + n * 8 + 2 * t4);
          part[hf] += u[n][2 * hf] * a.x + u[n][2 * hf + 1] * a.y;
        }
      part[0] = quad_sum(part[0]);
      part[1] = quad_sum(part[1]);
      if (t4 == 0) {
        dr_s[ch * SR + rg * 16 + g] = part[0];
        dr_s[ch * SR + rg * 16 + g + 8] = part[1];
      }
    }
    __syncthreads();
    if (tid < SR) {
      float d_r = 0.f;
      if (p.has_weight) {
#pragma unroll
        for (int sp = 0; sp < kUColSplit; ++sp) d_r += dr_s[sp * SR + tid];
      }
      if (tid < valid) {
        p.delta[bh * p.lq + row0 + tid] = p.o_sparse != nullptr ? delta0_s[tid] : delta0_s[tid] - d_r;
        p.d_lin[bh * p.lq + row0 + tid] = d_r;
      }
      dr_s[tid] = d_r;
    }
    __syncthreads();
    {
      // dz and db of column tid % D over every kSlices-th row: all threads take part, so the serial chain per
      // thread is SR / kSlices rows instead of SR.
      const int c = tid % D;
      const unsigned char* do_tile = smem + do_off;
      for (int r = tid / D; r < valid; r += kSlices) {
        const uint32_t off = swizzle<D / 8>(r, c / 8) + (c % 8) * 2;
        const float a = __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(smem + Smem::a_hi + off)) +
                        __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(smem + Smem::a_lo + off));
        dz -= a * dr_s[r];
        db += ElementTraits<T>::to_float(*reinterpret_cast<const T*>(do_tile + off));
      }
    }
    // E += A^T dO over the tile's rows.
    if (need_e) {
      for (int k0 = 0; k0 < SR; k0 += 16) {
        uint32_t ahi[4], alo[4];
        load_a_kmajor<D>(ahi, base + Smem::a_hi, k0, erg * 16, lane);
        load_a_kmajor<D>(alo, base + Smem::a_lo, k0, erg * 16, lane);
#pragma unroll
        for (int np = 0; np < kNtE / 2; ++np) {
          uint32_t bx[4], bh4[4], bl4[4];
          load_b_kmajor<D>(bx, base + do_off, k0, ech * kNtE * 8 + np * 16, lane);
          split_regs<T>(bx, bh4, bl4);
          mma_bf16(e_acc[2 * np], ahi, bh4[0], bh4[1]);
          mma_bf16(e_acc[2 * np + 1], ahi, bh4[2], bh4[3]);
          mma_bf16(e_acc[2 * np], alo, bh4[0], bh4[1]);
          mma_bf16(e_acc[2 * np + 1], alo, bh4[2], bh4[3]);
          if constexpr (!kExactInBf16<T>) {
            mma_bf16(e_acc[2 * np], ahi, bl4[0], bl4[1]);
            mma_bf16(e_acc[2 * np + 1], ahi, bl4[2], bl4[3]);
          }
        }
      }
    }
  }
  if (need_e) {
    float* dst = p.e_part + range.part * D * D;
#pragma unroll
    for (int n = 0; n < kNtE; ++n)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int r = erg * 16 + g + 8 * hf, c = ech * kNtE * 8 + n * 8 + 2 * t4;
        *reinterpret_cast<float2*>(dst + r * D + c) = make_float2(e_acc[n][2 * hf], e_acc[n][2 * hf + 1]);
      }
  }
  // The row slices of dz and db meet in shared memory (the Q tile is free: no copy is in flight after the loop)
  // and are added in slice order.
  __syncthreads();
  float* slice_sums = reinterpret_cast<float*>(smem + Smem::q);
  slice_sums[tid] = dz;
  slice_sums[kThreads + tid] = db;
  __syncthreads();
  if (tid < D) {
    float dz_sum = 0.f, db_sum = 0.f;
#pragma unroll
    for (int sl = 0; sl < kSlices; ++sl) {
      dz_sum += slice_sums[sl * D + tid];
      db_sum += slice_sums[kThreads + sl * D + tid];
    }
    p.dz_part[range.part * D + tid] = dz_sum;
    p.db_part[range.part * D + tid] = db_sum;
  }
}

// out[g, e] = sum over c in [0, parts) of in[g * parts + c, e], in increasing c: a fixed-order reduction.
__global__ void sum_partials_kernel(const float* __restrict__ in, float* __restrict__ out, int parts, int64_t n) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= n) return;
  const int64_t g = blockIdx.y;
  const float* src = in + g * parts * n + e;
  float s = 0.f;
  for (int c = 0; c < parts; ++c) s += src[c * n];
  out[g * n + e] = s;
}

// Output rows per CTA of the small per-group products below: many CTAs per group, so that the few groups of the
// global variant (one per head) still fill the GPU.
constexpr int kSliceRows = 16;

// Global variant. Grid (B*H, D / kSliceRows). Rows of G = W H^T (Dv x D), stored split: then dO_l H^T = dO W H^T =
// dO G.
template <int D>
__global__ void __launch_bounds__(kGemmThreads) gmat_kernel(BwdParams p) {
  extern __shared__ float smem[];
  constexpr int P = fp32_pitch(D);
  float* w_s = smem;          // D x P: W
  float* ht_s = w_s + D * P;  // D x P: H^T
  const int64_t g = blockIdx.x;
  const int row0 = blockIdx.y * kSliceRows;
  const float* hg = p.lin_h + g * D * D;
  stage_square_f32<D>(w_s, p.proj_w, false);
  stage_square_f32<D>(ht_s, hg, true);
  __syncthreads();
  GemmAcc<kSliceRows, D> acc;
  acc.zero();
  gemm_xm(acc, w_s + row0 * P, P, ht_s, P, D);
  uint16_t* dst = p.g_split + g * 2 * D * D;
  const int tr = gemm_row_lane(), tc = gemm_col_lane();
#pragma unroll
  for (int c = 0; c < D / 16; ++c) store_split<D>(dst, (row0 + tr) * D + tc + 16 * c, acc.v[0][c]);
}

// Global variant. Grid (B*H, D / kSliceRows). Rows of dH = E W, with E the head's sum of partials (e_src, fp32 D x D),
// written split; with `with_dw`, also rows of the head's dW partial E^T H.
template <int D>
__global__ void __launch_bounds__(kGemmThreads) dh_kernel(BwdParams p, const float* e_src, bool with_dw) {
  extern __shared__ float smem[];
  constexpr int P = fp32_pitch(D);
  float* e_s = smem;          // D x P: E
  float* w_s = e_s + D * P;   // D x P: W, then H
  const int64_t g = blockIdx.x;
  const int row0 = blockIdx.y * kSliceRows;
  stage_square_f32<D>(e_s, e_src + g * D * D, false);
  const int tr = gemm_row_lane(), tc = gemm_col_lane();
  if (p.has_weight) {
    stage_square_f32<D>(w_s, p.proj_w, false);
    __syncthreads();
    GemmAcc<kSliceRows, D> acc;
    acc.zero();
    gemm_xm(acc, e_s + row0 * P, P, w_s, P, D);
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
      const int idx = (row0 + tr) * D + tc + 16 * c;
      store_split<D>(p.dh_split + g * 2 * D * D, idx, acc.v[0][c]);
    }
  }
  if (with_dw) {
    __syncthreads();
    stage_square_f32<D>(w_s, p.lin_h + g * D * D, false);
    __syncthreads();
    // Rows row0.. of E^T H = columns row0.. of E against all of H.
    GemmAcc<kSliceRows, D> acc;
    acc.zero();
    gemm_atb(acc, e_s + row0, P, w_s, P, D);
    store_acc(acc, p.dw_part + g * D * D + row0 * D, D, false);
  }
}

template <class Kernel>
Status set_smem(Kernel kernel, std::size_t bytes) {
  return set_dynamic_smem(kernel, bytes, "backward: linear-branch kernel");
}

Status sum_partials(const float* in, float* out, int64_t groups, int parts, int64_t n, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((n + 255) / 256), static_cast<unsigned>(groups));
  sum_partials_kernel<<<grid, 256, 0, stream>>>(in, out, parts, n);
  return check_launch("backward: sum_partials_kernel");
}

// ---- complement variant: one CTA per query block, products on the tensor cores (select/split_product.cuh) ----

template <int D>
constexpr int square_pair_smem() {
  return 2 * SplitSquare<D>::kOperandBytes;
}

// Grid (Nq, B*H). G_i^T = W H_i^T, stored split per query block: the dq and row-prep epilogues read it as G.
template <int D>
__global__ void __launch_bounds__(SplitSquare<D>::kThreads) complement_gmat_kernel(BwdParams p) {
  constexpr int kTile = SplitSquare<D>::kTileBytes;
  extern __shared__ __align__(128) unsigned char pair_smem[];
  const uint32_t x_hi = smem_addr(pair_smem), x_lo = x_hi + kTile, y_hi = x_lo + kTile, y_lo = y_hi + kTile;
  const int64_t part = static_cast<int64_t>(blockIdx.y) * p.nq + blockIdx.x;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  stage_split<D>(x_hi, x_lo, p.proj_w, D, tid);
  stage_split<D>(y_hi, y_lo, p.grp_h + part * p.grp_stride, D, tid);
  __syncthreads();
  float acc[D / 8][4];
  zero_acc<D>(acc);
  split_product<D, false, true>(acc, x_hi, x_lo, y_hi, y_lo, warp * 16, lane);
  uint16_t* dst = p.g_split + part * 2 * D * D;
  store_split_pairs<D>(acc, warp * 16, lane, dst, dst + D * D);
}

// Grid (Nq, B*H). Row i of the head's dh_rows: [dH_i = E_i W, dz_i], hi part in row i and lo part in row Nq + i.
template <int D>
__global__ void __launch_bounds__(SplitSquare<D>::kThreads) complement_dh_kernel(BwdParams p) {
  constexpr int kTile = SplitSquare<D>::kTileBytes;
  extern __shared__ __align__(128) unsigned char pair_smem[];
  const uint32_t x_hi = smem_addr(pair_smem), x_lo = x_hi + kTile, y_hi = x_lo + kTile, y_lo = y_hi + kTile;
  const int64_t bh = blockIdx.y, i = blockIdx.x, part = bh * p.nq + i;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  uint16_t* hi = p.dh_rows + (bh * 2 * p.nq + i) * p.dh_row_stride;
  uint16_t* lo = hi + p.nq * p.dh_row_stride;
  for (int c = tid; c < D; c += SplitSquare<D>::kThreads) {
    const float dz = p.dz_part[part * D + c];
    const __nv_bfloat16 zh = __float2bfloat16_rn(dz);
    reinterpret_cast<__nv_bfloat16*>(hi)[D * D + c] = zh;
    reinterpret_cast<__nv_bfloat16*>(lo)[D * D + c] = __float2bfloat16_rn(dz - __bfloat162float(zh));
  }
  stage_split<D>(x_hi, x_lo, p.e_part + part * D * D, D, tid);
  stage_split<D>(y_hi, y_lo, p.proj_w, D, tid);
  __syncthreads();
  float acc[D / 8][4];
  zero_acc<D>(acc);
  split_product<D, false, false>(acc, x_hi, x_lo, y_hi, y_lo, warp * 16, lane);
  store_split_pairs<D>(acc, warp * 16, lane, hi, lo);
}

// Grid (ceil(Nq / kDwGroup), B*H). dW partial of a group of query blocks: sum over its blocks, in order, of E_i^T H_i
// (dW = sum_r dO_r^T O_l[r] = sum_i E_i^T H_i since O_l[r] = A_r H_i).
template <int D>
__global__ void __launch_bounds__(SplitSquare<D>::kThreads) complement_dw_kernel(BwdParams p) {
  constexpr int kTile = SplitSquare<D>::kTileBytes;
  extern __shared__ __align__(128) unsigned char pair_smem[];
  const uint32_t x_hi = smem_addr(pair_smem), x_lo = x_hi + kTile, y_hi = x_lo + kTile, y_lo = y_hi + kTile;
  const int64_t bh = blockIdx.y;
  const int i0 = blockIdx.x * kDwGroup, i1 = min(p.nq, i0 + kDwGroup);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  float acc[D / 8][4];
  zero_acc<D>(acc);
  for (int i = i0; i < i1; ++i) {
    const int64_t part = bh * p.nq + i;
    __syncthreads();  // the previous block's tiles are read
    stage_split<D>(x_hi, x_lo, p.e_part + part * D * D, D, tid);
    stage_split<D>(y_hi, y_lo, p.grp_h + part * p.grp_stride, D, tid);
    __syncthreads();
    split_product<D, true, false>(acc, x_hi, x_lo, y_hi, y_lo, warp * 16, lane);
  }
  float* dst = p.dw_part + (bh * gridDim.x + blockIdx.x) * D * D;
  for_each_pair<D>(acc, warp * 16, lane, [&](int r, int c, float v0, float v1) {
    *reinterpret_cast<float2*>(dst + r * D + c) = make_float2(v0, v1);
  });
}

// Grid (B*H*Nk). The fp32 dH^(j) (D x D) of key group j, at dh_split + j * dh_key_stride read as floats, rewritten
// in place as its split: hi (D x D bf16) then lo. Every thread holds its elements before the barrier, so the writes
// cannot overtake the reads.
template <int D>
__global__ void __launch_bounds__(256) split_in_place_kernel(BwdParams p) {
  constexpr int kPer = D * D / 256;
  uint16_t* base = p.dh_split + static_cast<int64_t>(blockIdx.x) * p.dh_key_stride;
  const float* src = reinterpret_cast<const float*>(base);
  float v[kPer];
#pragma unroll
  for (int e = 0; e < kPer; ++e) v[e] = src[e * 256 + threadIdx.x];
  __syncthreads();
  __nv_bfloat16* hi = reinterpret_cast<__nv_bfloat16*>(base);
#pragma unroll
  for (int e = 0; e < kPer; ++e) {
    const __nv_bfloat16 h = __float2bfloat16_rn(v[e]);
    hi[e * 256 + threadIdx.x] = h;
    hi[D * D + e * 256 + threadIdx.x] = __float2bfloat16_rn(v[e] - __bfloat162float(h));
  }
}
}  // namespace

Status launch_sum_partials(const float* in, float* out, int64_t groups, int parts, int64_t n, cudaStream_t stream) {
  return sum_partials(in, out, groups, parts, n, stream);
}

Status launch_row_prep(const BwdParams& p, DType dtype, FeatureMap fm, cudaStream_t stream) {
  return SLA_CUDA_DTYPE_SWITCH(dtype, T, "backward", [&] {
    return SLA_CUDA_HEADDIM_SWITCH(p.d, D, "backward", [&] {
      return SLA_FEATURE_MAP_SWITCH(fm, F, [&]() -> Status {
        const auto kernel = row_prep_kernel<T, D, F>;
        const std::size_t smem = RowPrepSmem<D>::kBytes;
        SLA_RETURN_IF_ERROR(set_smem(kernel, smem));
        const int64_t grid_x = p.complement ? p.nq : p.row_chunks;
        // E feeds dH (W present) and dW.
        const bool need_e = p.has_weight || p.d_proj_w != nullptr;
        kernel<<<dim3(grid_x, p.heads, p.batch), kRowPrepThreads, smem, stream>>>(p, need_e);
        return check_launch("backward: row_prep_kernel");
      });
    });
  });
}

namespace {

// Complement: dW from the per-group partials E_i^T H_i; dH_i, dz_i as split rows; the key side's selection GEMM
// (dH^(j), dz^(j) of every key block, fp32) and its split in place.
Status complement_reductions(const BwdParams& p, cudaStream_t stream) {
  const int64_t bh = p.batch * p.heads, dd = int64_t{p.d} * p.d;
  return SLA_CUDA_HEADDIM_SWITCH(p.d, D, "backward", [&]() -> Status {
    constexpr int smem = square_pair_smem<D>();
    if (p.d_proj_w) {
      SLA_RETURN_IF_ERROR(set_smem(complement_dw_kernel<D>, smem));
      const int groups = (p.nq + kDwGroup - 1) / kDwGroup;
      complement_dw_kernel<D><<<dim3(groups, static_cast<unsigned>(bh)), SplitSquare<D>::kThreads, smem, stream>>>(p);
      SLA_RETURN_IF_ERROR(check_launch("backward: complement_dw_kernel"));
      SLA_RETURN_IF_ERROR(sum_partials(p.dw_part, p.d_proj_w, 1, static_cast<int>(bh * groups), dd, stream));
    }
    if (!p.has_weight) return Status::Ok();
    SLA_RETURN_IF_ERROR(set_smem(complement_dh_kernel<D>, smem));
    complement_dh_kernel<D><<<dim3(p.nq, static_cast<unsigned>(bh)), SplitSquare<D>::kThreads, smem, stream>>>(p);
    SLA_RETURN_IF_ERROR(check_launch("backward: complement_dh_kernel"));
    SLA_RETURN_IF_ERROR(launch_transpose_mask(p.mask_args, p.mask, p.mask_t, stream));
    SelectGemm g;
    g.m = p.nk;
    g.n = p.dh_row_stride;
    g.k = 2 * int64_t{p.nq};
    g.lda = mask_row_stride(p.nq);
    g.ldb = p.dh_row_stride;
    g.ldc = p.dz_key_stride;
    g.stride_a = int64_t{p.nk} * g.lda;
    g.stride_b = g.k * g.ldb;
    g.stride_c = int64_t{p.nk} * g.ldc;
    g.batch = bh;
    SLA_RETURN_IF_ERROR(
        launch_select_gemm(g, p.mask_t, p.dh_rows, reinterpret_cast<float*>(p.dh_split), p.gemm_workspace, stream));
    split_in_place_kernel<D><<<static_cast<unsigned>(bh * p.nk), 256, 0, stream>>>(p);
    return check_launch("backward: split_in_place_kernel");
  });
}

}  // namespace

Status launch_linear_reductions(const BwdParams& p, DType dtype, cudaStream_t stream) {
  (void)dtype;
  const int64_t bh = p.batch * p.heads, dd = int64_t{p.d} * p.d;
  const int parts = p.complement ? p.nq : p.row_chunks;
  // db over every (b, h, part).
  if (p.d_proj_b) {
    SLA_RETURN_IF_ERROR(sum_partials(p.db_part, p.d_proj_b, 1, static_cast<int>(bh * parts), p.d, stream));
  }
  if (p.complement) return complement_reductions(p, stream);
  const bool global_dw = p.d_proj_w != nullptr;
  if (!p.has_weight && !global_dw) return Status::Ok();
  if (p.has_weight) SLA_RETURN_IF_ERROR(sum_partials(p.dz_part, p.dz_key, bh, parts, p.d, stream));
  return SLA_CUDA_HEADDIM_SWITCH(p.d, D, "backward", [&]() -> Status {
    const std::size_t smem = sizeof(float) * 2 * D * fp32_pitch(D);
    SLA_RETURN_IF_ERROR(set_smem(dh_kernel<D>, smem));
    // E per (b, h) is the sum of its row chunks' partials.
    SLA_RETURN_IF_ERROR(sum_partials(p.e_part, p.e_total, bh, p.row_chunks, dd, stream));
    dh_kernel<D>
        <<<dim3(static_cast<unsigned>(bh), D / kSliceRows), kGemmThreads, smem, stream>>>(p, p.e_total, global_dw);
    SLA_RETURN_IF_ERROR(check_launch("backward: dh_kernel"));
    if (global_dw) SLA_RETURN_IF_ERROR(sum_partials(p.dw_part, p.d_proj_w, 1, static_cast<int>(bh), dd, stream));
    return Status::Ok();
  });
}

Status launch_gmat(const BwdParams& p, cudaStream_t stream) {
  if (!p.has_weight) return Status::Ok();
  const int64_t bh = p.batch * p.heads;
  return SLA_CUDA_HEADDIM_SWITCH(p.d, D, "backward", [&]() -> Status {
    if (p.complement) {
      constexpr int smem = square_pair_smem<D>();
      SLA_RETURN_IF_ERROR(set_smem(complement_gmat_kernel<D>, smem));
      complement_gmat_kernel<D><<<dim3(p.nq, static_cast<unsigned>(bh)), SplitSquare<D>::kThreads, smem, stream>>>(p);
      return check_launch("backward: complement_gmat_kernel");
    }
    const std::size_t smem = sizeof(float) * 2 * D * fp32_pitch(D);
    SLA_RETURN_IF_ERROR(set_smem(gmat_kernel<D>, smem));
    gmat_kernel<D><<<dim3(static_cast<unsigned>(bh), D / kSliceRows), kGemmThreads, smem, stream>>>(p);
    return check_launch("backward: gmat_kernel");
  });
}

}  // namespace sla::cuda::bwd
