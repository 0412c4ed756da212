// GPU block map (SPEC.md section 1). Three launches (four with the inverse tables), all deterministic (integer
// atomics only):
//   1. pool_rows_kernel: fp32 mean of every query block and sum of every key block (one CTA per block).
//   2. key_mean_kernel: smooth-K's key mean from the block sums, in a fixed order.
//   3. select_kernel: per group of query-block rows, kbar_j = sum_j / n_j - mean, scores, then one warp per row runs an exact radix select of the T largest
//      (score descending, index ascending: the CPU's total order; NaN counts as -inf), written as a sorted LUT,
//      then the Tn last entries of the same order among the rest (the negligible set). Smooth-K only shifts each
//      score row by a constant, but subtracting it keeps the GPU's scores within fp32 rounding of the CPU's, so
//      near-ties resolve the same way.
//   4. invert_kernel (when asked): per 32 key blocks of each (b, h), offsets and lists in ascending i.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "cuda/block_map.h"
#include "cuda/common/cuda_status.h"
#include "cuda/common/numeric.cuh"
#include "cuda/common/params.h"
#include "core/validate.h"

namespace sla::cuda {
namespace {

constexpr int kPoolThreads = 128;
constexpr int kSelectMaxRows = 8;    // query-block rows per selection CTA (one warp each); 8 keeps 3 CTAs per SM
constexpr int kMaxHeadDimSelect = 128;
constexpr int kInvertThreads = 256;
constexpr int kInvertKeys = 32;  // key blocks per invert_kernel CTA
constexpr int kHistBins = 256;
constexpr int kMaxSmem = 160 * 1024;  // dynamic shared memory below the sm_80 opt-in limit (163 KB)

struct PoolParams {
  RowsParams q, k;
  float* q_pool;  // (B, H, Nq, D): means of the query blocks
  float* k_sum;   // (B, H, Nk, D): sums of the key blocks (smoothed in select_kernel)
  int64_t heads, lq, lk;
  int nq, nk, d, bq, bk;
};

// One CTA per (block, h, b); the first nq blocks are query blocks. Thread (row group rg, chunk c) sums rows
// rg, rg + G, ... of columns 8c .. 8c + 7 with 16-byte loads; the G partial sums are added in rg order, so the result
// does not depend on scheduling.
template <class T>
__global__ void __launch_bounds__(kPoolThreads) pool_rows_kernel(PoolParams p) {
  __shared__ float partial[kPoolThreads * 8];
  const int blk = blockIdx.x;
  const int64_t h = blockIdx.y, b = blockIdx.z;
  const bool is_q = blk < p.nq;
  const int i = is_q ? blk : blk - p.nq;
  const RowsParams& x = is_q ? p.q : p.k;
  const int rows_per_block = is_q ? p.bq : p.bk;
  const int64_t len = is_q ? p.lq : p.lk;
  const int64_t r0 = static_cast<int64_t>(i) * rows_per_block;
  const int n = static_cast<int>(min_i64(rows_per_block, len - r0));
  const T* base = static_cast<const T*>(x.ptr) + b * x.batch_stride + h * x.head_stride + r0 * x.row_stride;
  const int64_t bh = b * p.heads + h;
  const int chunks = p.d / 8, groups = kPoolThreads / chunks;
  const int c = threadIdx.x % chunks, rg = threadIdx.x / chunks;
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int r = rg; r < n; r += groups) {
    const uint4 raw = *reinterpret_cast<const uint4*>(base + r * x.row_stride + c * 8);
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 f = ElementTraits<T>::unpack2(w[e]);
      acc[2 * e] += f.x;
      acc[2 * e + 1] += f.y;
    }
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) partial[rg * p.d + c * 8 + e] = acc[e];
  __syncthreads();
  for (int col = threadIdx.x; col < p.d; col += blockDim.x) {
    float sum = 0.f;
    for (int g = 0; g < groups; ++g) sum += partial[g * p.d + col];
    if (is_q) {
      p.q_pool[(bh * p.nq + i) * p.d + col] = sum / static_cast<float>(n);
    } else {
      p.k_sum[(bh * p.nk + i) * p.d + col] = sum;
    }
  }
}

constexpr int kMeanThreads = 1024;

// Smooth-K's key mean, one CTA per (h, b): thread (column c, part q) sums the block sums of part q in block order,
// then the parts are added in part order: a fixed order, so the result does not depend on scheduling.
__global__ void __launch_bounds__(kMeanThreads) key_mean_kernel(const float* k_sum, float* k_mean, int64_t heads,
                                                                int64_t lk, int nk, int d) {
  __shared__ float part_sum[kMeanThreads];
  const int64_t bh = static_cast<int64_t>(blockIdx.y) * heads + blockIdx.x;
  const float* ks = k_sum + bh * nk * d;
  const int parts = kMeanThreads / d;
  const int c = threadIdx.x % d, part = threadIdx.x / d;
  const int per = (nk + parts - 1) / parts;
  const int j0 = min(nk, part * per), j1 = min(nk, j0 + per);
  float s = 0.f;
#pragma unroll 8
  for (int j = j0; j < j1; ++j) s += ks[static_cast<int64_t>(j) * d + c];
  part_sum[part * d + c] = s;
  __syncthreads();
  if (threadIdx.x < d) {
    float total = 0.f;
    for (int q = 0; q < parts; ++q) total += part_sum[q * d + threadIdx.x];
    k_mean[bh * d + threadIdx.x] = total / static_cast<float>(lk);
  }
}

struct SelectParams {
  const float* q_pool;   // (B, H, Nq, D) query block means
  const float* k_sum;    // (B, H, Nk, D) key block sums (not yet smoothed)
  const float* k_mean;   // (B, H, D) mean of all keys
  int64_t lk;
  int bk;
  int32_t* lut;         // (B, H, Nq, T)
  int32_t* count;       // (B, H, Nq)
  int32_t* negl_lut;    // (B, H, Nq, Tn) or null
  int32_t* negl_count;  // (B, H, Nq) or null
  int64_t heads;
  int nq, nk, d, t, tn;
  int rows;             // query blocks per CTA (= warps)
  int mask_words;       // ceil(nk / 32)
};

// Monotone map float -> uint32 (larger float, larger key). NaN ranks as -inf, -0 as +0, like the CPU's compare.
__device__ __forceinline__ uint32_t order_key(float s) {
  if (isnan(s)) s = -INFINITY;
  if (s == 0.f) s = 0.f;
  const uint32_t u = __float_as_uint(s);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Selects `want` entries of one row held in shared memory, for one warp. The total order is (key descending,
// index ascending) when prefer_low, and its reverse otherwise (key ascending, index descending), with key =
// order_key(score) or its complement. Candidates with their bit set in `exclude` are skipped. The selection is
// written ascending to `out` and marked in `mark` (when not null).
__device__ void warp_select(const float* scores, int nk, int want, bool largest, const uint32_t* exclude,
                            uint32_t* mark, uint32_t* hist, int32_t* out) {
  const int lane = threadIdx.x & 31;
  auto key_of = [&](int j) {
    const uint32_t k = order_key(scores[j]);
    return largest ? k : ~k;
  };
  auto candidate = [&](int j) { return exclude == nullptr || !((exclude[j >> 5] >> (j & 31)) & 1u); };

  // Radix select, 8 bits at a time from the top: find the want-th largest key (with multiplicity).
  uint32_t prefix = 0, prefix_mask = 0;
  int need = want;
  int ties = 0;  // keys equal to the threshold, known after the last pass
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = lane; b < kHistBins; b += 32) hist[b] = 0;
    __syncwarp();
    // Lanes with the same bin add once (the top bits of nearby scores coincide: plain atomics would serialise).
    for (int base = 0; base < nk; base += 32) {
      const int j = base + lane;
      int bin = -1;
      if (j < nk && candidate(j)) {
        const uint32_t k = key_of(j);
        if ((k & prefix_mask) == prefix) bin = static_cast<int>((k >> shift) & 0xFF);
      }
      const uint32_t peers = __match_any_sync(0xFFFFFFFFu, bin);
      if (bin >= 0 && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], static_cast<uint32_t>(__popc(peers)));
    }
    __syncwarp();
    // Lane l owns bins 255 - 8l ... 248 - 8l (descending); scan lanes in that order.
    int own[8];
    int lane_total = 0;
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      own[q] = static_cast<int>(hist[255 - (lane * 8 + q)]);
      lane_total += own[q];
    }
    int incl = lane_total;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int v = __shfl_up_sync(0xFFFFFFFFu, incl, off);
      if (lane >= off) incl += v;
    }
    const int before = incl - lane_total;
    int found_bin = -1, above = 0, in_bin = 0;
    if (before < need && incl >= need) {
      int cum = before;
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        if (found_bin < 0 && cum + own[q] >= need) {
          found_bin = 255 - (lane * 8 + q);
          above = cum;
          in_bin = own[q];
        }
        cum += own[q];
      }
    }
    const uint32_t who = __ballot_sync(0xFFFFFFFFu, found_bin >= 0);
    const int src = who ? __ffs(who) - 1 : 0;
    found_bin = __shfl_sync(0xFFFFFFFFu, found_bin, src);
    above = __shfl_sync(0xFFFFFFFFu, above, src);
    in_bin = __shfl_sync(0xFFFFFFFFu, in_bin, src);
    need -= above;
    prefix |= static_cast<uint32_t>(found_bin) << shift;
    prefix_mask |= 0xFFu << shift;
    ties = in_bin;
    __syncwarp();
  }
  // prefix is now the threshold key; `need` of the `ties` equal keys are taken: the lowest indices when
  // prefer_low (largest), the highest otherwise.
  const int skip_ties = largest ? 0 : ties - need;
  int tie_seen = 0, written = 0;
  for (int base = 0; base < nk; base += 32) {
    const int j = base + lane;
    bool sel = false, tie = false;
    if (j < nk && candidate(j)) {
      const uint32_t k = key_of(j);
      sel = k > prefix;
      tie = k == prefix;
    }
    const uint32_t tie_bits = __ballot_sync(0xFFFFFFFFu, tie);
    const uint32_t lower = (1u << lane) - 1u;
    if (tie) {
      const int rank = tie_seen + __popc(tie_bits & lower);
      sel = rank >= skip_ties && rank < skip_ties + need;
    }
    tie_seen += __popc(tie_bits);
    const uint32_t sel_bits = __ballot_sync(0xFFFFFFFFu, sel);
    if (sel) {
      out[written + __popc(sel_bits & lower)] = j;
    }
    if (mark != nullptr && lane == 0) mark[base >> 5] = sel_bits;
    written += __popc(sel_bits);
  }
  __syncwarp();
}

__global__ void select_kernel(SelectParams p) {
  extern __shared__ float4 select_smem[];
  const int rows = p.rows;
  float* q_rows = reinterpret_cast<float*>(select_smem);           // rows x d
  float* scores = q_rows + rows * p.d;                              // rows x nk
  uint32_t* masks = reinterpret_cast<uint32_t*>(scores + static_cast<int64_t>(rows) * p.nk);  // rows x mask_words
  uint32_t* hists = masks + rows * p.mask_words;                    // rows x 256

  const int64_t bh = static_cast<int64_t>(blockIdx.z) * p.heads + blockIdx.y;
  const int i0 = blockIdx.x * rows;
  const int rows_here = min(rows, p.nq - i0);
  const float* qp = p.q_pool + (bh * p.nq + i0) * p.d;
  for (int e = threadIdx.x; e < rows_here * p.d; e += blockDim.x) q_rows[e] = qp[e];

  __shared__ float4 mean4[kMaxHeadDimSelect / 4];
  const float* ks = p.k_sum + bh * p.nk * p.d;
  for (int c = threadIdx.x; c < p.d; c += blockDim.x) reinterpret_cast<float*>(mean4)[c] = p.k_mean[bh * p.d + c];
  __syncthreads();

  // Scores: thread per key block, all rows of the CTA at once (each key block row is read once per CTA).
  for (int j = threadIdx.x; j < p.nk; j += blockDim.x) {
    float acc[kSelectMaxRows];
#pragma unroll
    for (int r = 0; r < kSelectMaxRows; ++r) acc[r] = 0.f;
    const float4* kj = reinterpret_cast<const float4*>(ks + static_cast<int64_t>(j) * p.d);
    const float inv_n = 1.f / static_cast<float>(min_i64(p.bk, p.lk - static_cast<int64_t>(j) * p.bk));
    for (int c4 = 0; c4 < p.d / 4; ++c4) {
      const float4 raw = kj[c4];
      const float4 mu = mean4[c4];
      // kbar = block mean - key mean, as the CPU computes it up to rounding.
      const float4 kv = make_float4(raw.x * inv_n - mu.x, raw.y * inv_n - mu.y, raw.z * inv_n - mu.z,
                                    raw.w * inv_n - mu.w);
#pragma unroll
      for (int r = 0; r < kSelectMaxRows; ++r) {
        if (r < rows_here) {
          const float4 qv = reinterpret_cast<const float4*>(q_rows + r * p.d)[c4];
          acc[r] = fmaf(qv.x, kv.x, acc[r]);
          acc[r] = fmaf(qv.y, kv.y, acc[r]);
          acc[r] = fmaf(qv.z, kv.z, acc[r]);
          acc[r] = fmaf(qv.w, kv.w, acc[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kSelectMaxRows; ++r) {
      if (r < rows_here) scores[static_cast<int64_t>(r) * p.nk + j] = acc[r];
    }
  }
  __syncthreads();

  const int warp = threadIdx.x >> 5;
  if (warp >= rows_here) return;
  const int i = i0 + warp;
  const float* row_scores = scores + static_cast<int64_t>(warp) * p.nk;
  uint32_t* mask = masks + warp * p.mask_words;
  uint32_t* hist = hists + warp * kHistBins;
  warp_select(row_scores, p.nk, p.t, true, nullptr, mask, hist, p.lut + (bh * p.nq + i) * p.t);
  if ((threadIdx.x & 31) == 0) p.count[bh * p.nq + i] = p.t;
  if (p.tn > 0) {
    __syncwarp();
    warp_select(row_scores, p.nk, p.tn, false, mask, nullptr, hist, p.negl_lut + (bh * p.nq + i) * p.tn);
    if ((threadIdx.x & 31) == 0) p.negl_count[bh * p.nq + i] = p.tn;
  }
}

struct InvertParams {
  const int32_t* lut;    // (B, H, Nq, cap)
  const int32_t* count;  // (B, H, Nq)
  int32_t* offset;       // (B, H, Nk + 1)
  int32_t* index;        // (B, H, Nq * cap)
  int64_t heads;
  int nq, nk, cap;
};

// Grid (ceil(Nk / 32), H, B): CTA c builds the lists of key blocks [32c, 32c + 32) of one (b, h), so the work is
// spread over Nk / 32 CTAs per head instead of one (a per-head CTA scattering row after row was bound by one
// barrier per query block). Each CTA reads the head's whole LUT (Nq x cap entries, small and L2-resident) twice:
//   1. entries of keys below its range (its first offset) and per-key counts;
//   2. in entry order (ascending i, then t), chunks of 256 entries: within a warp, lanes with the same key rank by
//      __match_any_sync; across warps, per-key counts are turned into write positions in warp order. So every key
//      block's list is in ascending i, exactly as the CPU builds it, with integer arithmetic only.
// Entries outside [0, Nk) are skipped and counts clamped to [0, cap], as for any caller LUT; a key repeated within
// one row (a malformed caller LUT) gets one slot per repetition, like the CPU's.
__global__ void __launch_bounds__(kInvertThreads) invert_kernel(InvertParams p) {
  constexpr int kWarps = kInvertThreads / 32;
  static_assert(kInvertKeys == 32, "one lane per key of the CTA in the per-key scans");
  __shared__ int cursor[kInvertKeys];             // per key: entries, then the next write position
  __shared__ int warp_count[kWarps][kInvertKeys];  // per chunk: entries of each key in each warp
  __shared__ int warp_pos[kWarps][kInvertKeys];    // per chunk: first write position of each key in each warp
  __shared__ int before_part[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t bh = static_cast<int64_t>(blockIdx.z) * p.heads + blockIdx.y;
  const int j0 = blockIdx.x * kInvertKeys, keys = min(p.nk - j0, kInvertKeys);
  const int32_t* lut = p.lut + bh * p.nq * p.cap;
  const int32_t* cnt = p.count + bh * p.nq;
  int32_t* offset = p.offset + bh * (p.nk + 1);
  int32_t* index = p.index + bh * static_cast<int64_t>(p.nq) * p.cap;
  const int64_t entries = static_cast<int64_t>(p.nq) * p.cap;
  // Key of entry e, or -1 when the entry is past its row's count or outside [0, Nk).
  auto key_of = [&](int64_t e) {
    const int i = static_cast<int>(e / p.cap), t = static_cast<int>(e % p.cap);
    const int j = __ldg(lut + e);
    return (t < min(max(__ldg(cnt + i), 0), p.cap) && j >= 0 && j < p.nk) ? j : -1;
  };

  if (threadIdx.x < kInvertKeys) cursor[threadIdx.x] = 0;
  (&warp_count[0][0])[threadIdx.x] = 0;
  static_assert(kWarps * kInvertKeys == kInvertThreads, "one warp_count slot per thread to clear");
  __syncthreads();
  int before = 0;
  for (int64_t e = threadIdx.x; e < entries; e += kInvertThreads) {
    const int j = key_of(e);
    if (j >= 0 && j < j0) {
      ++before;
    } else if (j >= j0 && j < j0 + keys) {
      atomicAdd(&cursor[j - j0], 1);
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) before += __shfl_xor_sync(0xFFFFFFFFu, before, off);
  if (lane == 0) before_part[warp] = before;
  __syncthreads();
  if (warp == 0) {
    int base = 0;
    for (int w = 0; w < kWarps; ++w) base += before_part[w];
    const int c = lane < keys ? cursor[lane] : 0;
    int incl = c;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int u = __shfl_up_sync(0xFFFFFFFFu, incl, off);
      if (lane >= off) incl += u;
    }
    cursor[lane] = base + incl - c;
    if (lane < keys) offset[j0 + lane] = base + incl - c;
    if (j0 + keys == p.nk && lane == 31) offset[p.nk] = base + incl;  // lane 31: every key of the last CTA
  }
  __syncthreads();

  const unsigned lanes_below = (1u << lane) - 1u;
  for (int64_t e0 = 0; e0 < entries; e0 += kInvertThreads) {
    const int64_t e = e0 + threadIdx.x;
    const int j = e < entries ? key_of(e) : -1;
    const int k = (j >= j0 && j < j0 + keys) ? j - j0 : -1;
    const unsigned peers = __match_any_sync(0xFFFFFFFFu, k);
    const int rank = __popc(peers & lanes_below);
    if (k >= 0 && rank == 0) warp_count[warp][k] = __popc(peers);
    __syncthreads();
    if (warp == 0) {  // lane = key: positions in warp order, counts cleared for the next chunk
      int run = cursor[lane];
      for (int w = 0; w < kWarps; ++w) {
        warp_pos[w][lane] = run;
        run += warp_count[w][lane];
        warp_count[w][lane] = 0;
      }
      cursor[lane] = run;
    }
    __syncthreads();
    // The next chunk writes warp_count (already cleared by warp 0) before its first barrier and warp_pos only after
    // it, so these reads of warp_pos race with no writer.
    if (k >= 0) index[warp_pos[warp][k] + rank] = static_cast<int32_t>(e / p.cap);
  }
}

Status launch_invert_table(const Problem& p, const TensorView& lut, const TensorView& count,
                           const TensorView& offset, const TensorView& index, cudaStream_t stream) {
  InvertParams ip;
  ip.lut = static_cast<const int32_t*>(lut.data);
  ip.count = static_cast<const int32_t*>(count.data);
  ip.offset = static_cast<int32_t*>(offset.data);
  ip.index = static_cast<int32_t*>(index.data);
  ip.heads = p.heads;
  ip.nq = static_cast<int>(p.map.q_blocks);
  ip.nk = static_cast<int>(p.map.k_blocks);
  ip.cap = static_cast<int>(lut.shape[3]);
  // At least one CTA per head: it also writes offset[Nk] (the total).
  const dim3 grid(static_cast<unsigned>(std::max(1, (ip.nk + kInvertKeys - 1) / kInvertKeys)), static_cast<unsigned>(p.heads),
                  static_cast<unsigned>(p.batch));
  invert_kernel<<<grid, kInvertThreads, 0, stream>>>(ip);
  return check_launch("invert_kernel");
}

// Largest number of query-block rows per selection CTA whose scores fit in shared memory (0: none fits).
int select_rows_per_cta(int nk, int d) {
  const int words = (nk + 31) / 32;
  for (int rows = kSelectMaxRows; rows >= 1; rows /= 2) {
    const std::size_t bytes = static_cast<std::size_t>(rows) * (d * 4 + nk * 4 + words * 4 + kHistBins * 4);
    if (bytes <= kMaxSmem) return rows;
  }
  return 0;
}

struct PoolBuffers {
  float* q_pool;
  float* k_pool;
  float* k_mean;
};

PoolBuffers carve(const Problem& p, WorkspaceCarver& ws) {
  PoolBuffers b;
  b.q_pool = ws.take<float>(static_cast<std::size_t>(p.batch * p.heads * p.map.q_blocks * p.d));
  b.k_pool = ws.take<float>(static_cast<std::size_t>(p.batch * p.heads * p.map.k_blocks * p.d));
  b.k_mean = ws.take<float>(static_cast<std::size_t>(p.batch * p.heads * p.d));
  return b;
}

}  // namespace

std::size_t block_map_workspace_bytes(const Problem& p, const Config&) {
  WorkspaceCarver ws;
  carve(p, ws);
  return ws.bytes();
}

Status launch_predict_block_map(const Problem& p, const TensorView& q, const TensorView& k, const Config& cfg,
                                const BlockMap& map, void* workspace, cudaStream_t stream) {
  WorkspaceCarver ws(workspace);
  const PoolBuffers buf = carve(p, ws);
  const int nq = static_cast<int>(p.map.q_blocks), nk = static_cast<int>(p.map.k_blocks), d = static_cast<int>(p.d);

  PoolParams pp;
  pp.q = rows_params(q);
  pp.k = rows_params(k);
  pp.q_pool = buf.q_pool;
  pp.k_sum = buf.k_pool;
  pp.heads = p.heads;
  pp.lq = p.lq;
  pp.lk = p.lk;
  pp.nq = nq;
  pp.nk = nk;
  pp.d = d;
  pp.bq = cfg.block_q;
  pp.bk = cfg.block_k;
  const dim3 pool_grid(static_cast<unsigned>(nq + nk), static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch));
  if (p.dtype == DType::bf16) {
    pool_rows_kernel<__nv_bfloat16><<<pool_grid, kPoolThreads, 0, stream>>>(pp);
  } else {
    pool_rows_kernel<__half><<<pool_grid, kPoolThreads, 0, stream>>>(pp);
  }
  SLA_CUDA_RETURN_IF_LAUNCH_FAILED("pool_rows_kernel");


  key_mean_kernel<<<dim3(static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch)), kMeanThreads, 0, stream>>>(
      buf.k_pool, buf.k_mean, p.heads, p.lk, nk, d);
  SLA_CUDA_RETURN_IF_LAUNCH_FAILED("key_mean_kernel");

  SelectParams sp;
  sp.q_pool = buf.q_pool;
  sp.k_sum = buf.k_pool;
  sp.k_mean = buf.k_mean;
  sp.lk = p.lk;
  sp.bk = cfg.block_k;
  sp.lut = static_cast<int32_t*>(map.lut.data);
  sp.count = static_cast<int32_t*>(map.count.data);
  sp.tn = static_cast<int>(p.map.negligible);
  sp.negl_lut = sp.tn > 0 ? static_cast<int32_t*>(map.negl_lut.data) : nullptr;
  sp.negl_count = sp.tn > 0 ? static_cast<int32_t*>(map.negl_count.data) : nullptr;
  sp.heads = p.heads;
  sp.nq = nq;
  sp.nk = nk;
  sp.d = d;
  sp.t = static_cast<int>(p.map.critical);
  sp.rows = select_rows_per_cta(nk, d);
  sp.mask_words = (nk + 31) / 32;
  if (sp.rows == 0) {
    return Status::Unsupported("predict_block_map: Nk = " + std::to_string(nk) +
                               " key blocks exceed the CUDA selection kernel's shared-memory limit");
  }
  const std::size_t smem =
      static_cast<std::size_t>(sp.rows) * (d * 4 + nk * 4 + sp.mask_words * 4 + kHistBins * 4);
  if (smem > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(select_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return device_error("select_kernel: cudaFuncSetAttribute", e);
  }
  const dim3 sel_grid(static_cast<unsigned>((nq + sp.rows - 1) / sp.rows), static_cast<unsigned>(p.heads),
                      static_cast<unsigned>(p.batch));
  select_kernel<<<sel_grid, sp.rows * 32, smem, stream>>>(sp);
  SLA_CUDA_RETURN_IF_LAUNCH_FAILED("select_kernel");

  if (map.inv_offset.present() && map.inv_index.present()) {
    SLA_RETURN_IF_ERROR(launch_invert_table(p, map.lut, map.count, map.inv_offset, map.inv_index, stream));
  }
  if (sp.tn > 0 && map.negl_inv_offset.present() && map.negl_inv_index.present()) {
    SLA_RETURN_IF_ERROR(
        launch_invert_table(p, map.negl_lut, map.negl_count, map.negl_inv_offset, map.negl_inv_index, stream));
  }
  return Status::Ok();
}

Status launch_invert_block_map(const Problem& p, const BlockMap& map, cudaStream_t stream) {
  SLA_RETURN_IF_ERROR(launch_invert_table(p, map.lut, map.count, map.inv_offset, map.inv_index, stream));
  if (map.negl_lut.present() && map.negl_lut.shape[3] > 0 && map.negl_inv_offset.present() &&
      map.negl_inv_index.present()) {
    SLA_RETURN_IF_ERROR(
        launch_invert_table(p, map.negl_lut, map.negl_count, map.negl_inv_offset, map.negl_inv_index, stream));
  }
  return Status::Ok();
}

}  // namespace sla::cuda
