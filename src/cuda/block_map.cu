// GPU block map (docs/SPEC.md section 1). Two launches (three or four with the inverse tables), all deterministic: no
// float atomics, every sum in a fixed order, so two runs give the same bits.
//   1. pool_kernel: fp32 mean of every query block, sum of every key block, and the sum of each group of key blocks
//      (one group per CTA), reading Q and K once. This pass is bound by DRAM bandwidth; everything after it reads
//      only the small pooled tensors (L2-resident).
//   2. select_kernel: per (b, h, group of query blocks): smooth-K's key mean from the group sums, the scores
//      S_ij = qbar_i . (ksum_j / n_j - mean) as a register-tiled fp32 GEMM (FFMA in ascending head-dim order, so
//      every score is the same fp32 value whatever the tiling), then one warp per query-block row selects the T
//      largest (score descending, index ascending: the CPU's total order; NaN counts as -inf) and the Tn last of
//      the same order among the rest (the negligible set), each written as a sorted list.
//      Smooth-K only shifts a score row by a constant, but subtracting it keeps the GPU's scores within fp32
//      rounding of the CPU's, so near-ties resolve the same way.
//      The adaptive rules (docs/BLOCK_MAP.md) size each row from the same scores: the top_p count by a bitwise search
//      for the threshold key whose pooled-softmax mass (fp32 weights, summed lane-strided then by a butterfly, so
//      the sum has one fixed order) reaches p times the row's total, the threshold rule's negligible count by
//      comparing each weight with threshold times the total. Entries past a row's count are written as -1.
//   3. invert_kernel (when asked): per 32 key blocks of each (b, h), offsets and lists in ascending i.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "core/validate.h"
#include "cuda/block_map.h"
#include "cuda/common/cuda_status.h"
#include "cuda/common/lut_row.cuh"
#include "cuda/common/numeric.cuh"
#include "cuda/common/params.h"
#include "sla/config.h"

namespace sla::cuda {
namespace {

constexpr uint32_t kAllLanes = 0xFFFFFFFFu;
constexpr int kInvertThreads = 256;
constexpr int kInvertKeys = 32;  // key blocks per invert_kernel CTA

// ---- 1. pooling --------------------------------------------------------------------------------------------------

constexpr int kPoolThreads = 128;
constexpr int kPoolWarps = kPoolThreads / 32;
// Rows of Q or K per pool CTA (whole blocks: 4 or 8). Equal-sized CTAs that are all resident at once (W1: 1536 CTAs,
// 12 per SM) finish together, so the pass has no tail of stragglers; kPoolMinCtas keeps the registers low enough
// for that. Each lane keeps 4 loads of 16 bytes in flight: ~100 KB per SM, over twice what DRAM latency needs.
constexpr int kPoolRows = 512;
constexpr int kPoolMinCtas = 12;
constexpr int kPoolUnroll = 3;

struct PoolParams {
  RowsParams q, k;
  float* q_pool;  // (B, H, Nq, D): means of the query blocks
  float* k_sum;   // (B, H, Nk, D): sums of the key blocks
  float* k_part;  // (B, H, key CTAs, D): sum of each key CTA's blocks (for smooth-K's mean)
  int64_t heads, lq, lk;
  int nq, nk, d, bq, bk;
  int q_group, k_group;  // blocks per query / key CTA
  int q_ctas, k_ctas;    // CTAs per (b, h)
};

__device__ __forceinline__ void add_row(float (&acc)[8], uint4 raw, bool bf16) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 f = bf16 ? ElementTraits<__nv_bfloat16>::unpack2(w[e]) : ElementTraits<__half>::unpack2(w[e]);
    acc[2 * e] += f.x;
    acc[2 * e + 1] += f.y;
  }
}

// Grid (key CTAs + query CTAs, H, B). Warp w of a CTA pools the CTA's blocks w, w + 4, ...: lane (row group rg,
// chunk c) sums rows rg, rg + G, ... (in order) of columns 8c .. 8c + 7 with 16-byte loads, then the G row groups are
// added by a butterfly (each step adds two equal-order partial sums, so every lane holds the same bits).
template <class T, int D>
__global__ void __launch_bounds__(kPoolThreads, kPoolMinCtas) pool_kernel(PoolParams p) {
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  const int64_t h = blockIdx.y, b = blockIdx.z, bh = b * p.heads + h;
  const bool is_k = static_cast<int>(blockIdx.x) < p.k_ctas;
  const int cta = is_k ? blockIdx.x : blockIdx.x - p.k_ctas;
  // Field by field: selecting a whole RowsParams by reference would copy the parameters to local memory.
  const T* head = static_cast<const T*>(is_k ? p.k.ptr : p.q.ptr) + b * (is_k ? p.k.batch_stride : p.q.batch_stride) +
                  h * (is_k ? p.k.head_stride : p.q.head_stride);
  const int64_t row_stride = is_k ? p.k.row_stride : p.q.row_stride;
  const int rows_per_block = is_k ? p.bk : p.bq;
  const int64_t len = is_k ? p.lk : p.lq;
  const int group = is_k ? p.k_group : p.q_group;
  const int first = cta * group, blocks = min(group, (is_k ? p.nk : p.nq) - first);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  constexpr int chunks = D / 8, row_groups = 32 / chunks;
  const int c = lane % chunks, rg = lane / chunks;

  for (int bi = warp; bi < blocks; bi += kPoolWarps) {
    const int blk = first + bi;
    const int64_t r0 = static_cast<int64_t>(blk) * rows_per_block;
    const int n = static_cast<int>(min_i64(rows_per_block, len - r0));
    const T* src = head + (r0 + rg) * row_stride + c * 8;
    const int64_t step = row_groups * row_stride;
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    int r = rg;
    for (; r + (kPoolUnroll - 1) * row_groups < n; r += kPoolUnroll * row_groups) {
      uint4 raw[kPoolUnroll];
#pragma unroll
      for (int u = 0; u < kPoolUnroll; ++u) raw[u] = *reinterpret_cast<const uint4*>(src + u * step);
#pragma unroll
      for (int u = 0; u < kPoolUnroll; ++u) add_row(acc, raw[u], kBf16);
      src += kPoolUnroll * step;
    }
    for (; r < n; r += row_groups, src += step) add_row(acc, *reinterpret_cast<const uint4*>(src), kBf16);
#pragma unroll
    for (int off = chunks; off < 32; off <<= 1) {
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[e] += __shfl_xor_sync(kAllLanes, acc[e], off);
    }
    if (rg == 0) {
      float4* dst;
      if (is_k) {
        dst = reinterpret_cast<float4*>(p.k_sum + (bh * p.nk + blk) * D + c * 8);
      } else {
        // The real row count: a partial (ragged) block is not diluted by rows that do not exist.
        const float rows = static_cast<float>(n);
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[e] /= rows;
        dst = reinterpret_cast<float4*>(p.q_pool + (bh * p.nq + blk) * D + c * 8);
      }
      dst[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
      dst[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
    }
  }
  if (!is_k) return;  // uniform per CTA
  // The group sum, in block order, from the block sums just written (visible to the CTA after the barrier).
  __syncthreads();
  const float* sums = p.k_sum + (bh * p.nk + first) * D;
  for (int col = threadIdx.x; col < D; col += kPoolThreads) {
    float s = sums[col];
    for (int bi = 1; bi < blocks; ++bi) s += sums[bi * D + col];
    p.k_part[(bh * p.k_ctas + cta) * D + col] = s;
  }
}

// ---- 2. scores and selection -------------------------------------------------------------------------------------

constexpr int kSelectThreads = 256;
constexpr int kSelectWarps = kSelectThreads / 32;
// GEMM tiling: a warp computes 4 row groups x 8 key groups of lanes, each lane TM query rows x 8 keys (two float4 of
// 4 keys, 32 apart), so a warp tile is 4 TM rows x 64 keys and its operand loads are 128-byte rows of shared
// memory (one wavefront each) feeding 8 TM FFMA per head-dim column. The 8 warps split as warp_rows x (8 /
// warp_rows), with as many along the keys as Nk needs (Nk 512: 1 x 8, a tile of 4 TM rows x 512 keys).
constexpr int kWarpKeys = 64;
constexpr int kMaxTileKeys = kSelectWarps * kWarpKeys;
constexpr int kStageCols = 8;  // head-dim columns of K^T per shared-memory stage (double-buffered)
constexpr int kStageLoads = kMaxTileKeys * (kStageCols / 4) / kSelectThreads;  // float4 per thread per stage
constexpr int kCandidates = 64;  // per warp: entries that can still be in a row's selection (fast path)

// Heads whose per-head rule parameters fit the kernel's parameter block (more heads with per-head values: rejected).
constexpr int kMaxRuleHeads = 128;

struct SelectParams {
  const float* q_pool;  // (B, H, Nq, D) query block means
  const float* k_sum;   // (B, H, Nk, D) key block sums (smoothed here)
  const float* k_part;  // (B, H, Ng, D) sums of groups of key blocks
  int32_t* lut;         // (B, H, Nq, T)
  int32_t* count;       // (B, H, Nq)
  int32_t* negl_lut;    // (B, H, Nq, Tn) or null
  int32_t* negl_count;  // (B, H, Nq) or null
  int64_t heads, lk;
  int nq, nk, ng, d, bk, t, tn;  // t, tn: the widths of the LUT and of the negligible table
  int warp_rows;  // warps along the query rows of the GEMM tile
  int rows;       // query blocks per CTA (at most the tile's rows; fewer only when Nk is huge)
  // Row rule (docs/BLOCK_MAP.md). top_p == 0: head h's rows have head_count[h] blocks (every head the same unless
  // per-head topk was given). top_p == 1: the top_p count with p = head_p[h], clamped to [min_count, max_count].
  int top_p;
  int per_head;  // 0: index 0 of head_count / head_p serves every head
  int min_count, max_count;
  float scale;      // softmax scale of the pooled scores
  float threshold;  // > 0: negligible = weight < threshold * total (at most tn per row)
  int head_count[kMaxRuleHeads];
  float head_p[kMaxRuleHeads];
};

// Shared memory of select_kernel, in 4-byte words; every region starts 16-byte aligned.
struct SelectLayout {
  int64_t tile_rows, tile_keys, kt_stride;
  int64_t mean, scratch, qt, kt, scores, cand, words;
};

__host__ __device__ inline int64_t round4(int64_t x) { return (x + 3) / 4 * 4; }

__host__ __device__ inline SelectLayout select_layout(int tm, int warp_rows, int rows, int nk, int d) {
  SelectLayout l;
  l.tile_rows = static_cast<int64_t>(warp_rows) * 4 * tm;
  l.tile_keys = static_cast<int64_t>(kSelectWarps / warp_rows) * kWarpKeys;
  l.kt_stride = l.tile_keys + 4;  // +4 words: the transposing stores of a warp hit 32 distinct banks
  l.mean = 0;
  l.qt = l.mean + d;                                            // Q^T: d x tile_rows
  l.kt = l.qt + static_cast<int64_t>(d) * l.tile_rows;          // K^T stages: 2 x kStageCols x kt_stride
  l.scratch = l.kt;  // the mean's partial sums, dead before the first K^T stage is stored (>= 1088 words)
  l.scores = l.kt + 2 * kStageCols * l.kt_stride;               // rows x nk order keys
  l.cand = round4(l.scores + static_cast<int64_t>(rows) * nk);  // per warp: kCandidates keys, then indices
  l.words = l.cand + kSelectWarps * 2 * kCandidates;
  return l;
}

// Monotone map float -> uint32 (larger float, larger key). NaN ranks as -inf, -0 as +0, like the CPU's compare.
// Every key of a real score is in [order_key(-inf), order_key(+inf)] = [0x007FFFFF, 0xFF800000]: never 0 (which marks
// an entry that may not be selected) and unchanged in range by ~ (the negligible pass's reversed order).
__device__ __forceinline__ uint32_t order_key(float s) {
  if (isnan(s)) s = -INFINITY;
  if (s == 0.f) s = 0.f;
  const uint32_t u = __float_as_uint(s);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The largest x with count_ge(x) >= k (count_ge: entries >= x, non-increasing in x), given lo <= x <= hi: x keeps
// the leading bits on which lo and hi agree, and the others are set greedily from the top.
template <class CountGe>
__device__ __forceinline__ uint32_t kth_largest(uint32_t lo, uint32_t hi, int k, CountGe count_ge) {
  const int free_bits = 32 - __clz(static_cast<int>(lo ^ hi));
  uint32_t v = free_bits == 32 ? 0u : lo & ~((1u << free_bits) - 1u);
  for (int bit = free_bits - 1; bit >= 0; --bit) {
    const uint32_t c = v | (1u << bit);
    if (count_ge(c) >= k) v = c;
  }
  return v;
}

// One warp selects `want` entries of a row of n keys in shared memory: keys descending, ties to the lower index
// (prefer_low) or to the higher; a key of 0 is never selected, and at least `want` keys are nonzero. The selection is
// written ascending to `out`; with clear_selected its keys are then set to 0.
//
// The threshold v (the want-th largest key) is found by a bitwise search over counts. Fast path (want <= 32): the
// want-th largest of the 32 lane maxima is a lower bound of v (that many distinct entries reach it), so only the
// entries at or above it (usually ~1.5 want) can be selected: they are compacted in index order into the warp's
// candidate list (at most kCandidates, else the general path), where the search counts two registers per lane
// instead of the whole row. The general path searches over the whole row in shared memory.
__device__ void select_row(uint32_t* keys, int n, int want, bool prefer_low, bool clear_selected, uint32_t* cand_key,
                           int32_t* cand_idx, int32_t* out) {
  const int lane = threadIdx.x & 31;
  const uint32_t lanes_below = (1u << lane) - 1u;
  uint32_t lane_max = 0;
#pragma unroll 4
  for (int j = lane; j < n; j += 32) lane_max = max(lane_max, keys[j]);
  const uint32_t row_max = __reduce_max_sync(kAllLanes, lane_max);

  uint32_t bound = 0;
  if (want <= 32) {
    // Rank of this lane's maximum by (value descending, lane ascending): a permutation of 0 .. 31.
    int rank = 0;
#pragma unroll
    for (int q = 0; q < 32; ++q) {
      const uint32_t m = __shfl_sync(kAllLanes, lane_max, q);
      rank += (m > lane_max || (m == lane_max && q < lane)) ? 1 : 0;
    }
    const uint32_t at = __ballot_sync(kAllLanes, rank == want - 1);
    bound = __shfl_sync(kAllLanes, lane_max, __ffs(at) - 1);  // 0: fewer than `want` lanes hold a nonzero key
  }
  int cands = 0;
  if (bound != 0) {
#pragma unroll 4
    for (int base = 0; base < n; base += 32) {  // no early exit: the loads of 4 chunks go out together
      const int j = base + lane;
      const uint32_t key = j < n ? keys[j] : 0u;
      const bool in = key >= bound;
      const uint32_t bits = __ballot_sync(kAllLanes, in);
      const int pos = cands + __popc(bits & lanes_below);
      if (in && pos < kCandidates) {
        cand_key[pos] = key;
        cand_idx[pos] = j;
      }
      cands += __popc(bits);
    }
    __syncwarp();
  }
  const bool fast = bound != 0 && cands <= kCandidates;

  uint32_t v;
  int above, ties;  // entries with key > v, and == v
  if (fast) {
    const uint32_t a0 = lane < cands ? cand_key[lane] : 0u;
    const uint32_t a1 = lane + 32 < cands ? cand_key[lane + 32] : 0u;
    auto count_ge = [&](uint32_t x) {
      return __popc(__ballot_sync(kAllLanes, a0 >= x)) + __popc(__ballot_sync(kAllLanes, a1 >= x));
    };
    v = kth_largest(bound, row_max, want, count_ge);
    above = count_ge(v + 1);  // v <= 0xFF800000: no overflow
    ties = count_ge(v) - above;
  } else {
    auto count_ge = [&](uint32_t x) {
      unsigned c = 0;
      for (int j = lane; j < n; j += 32) c += keys[j] >= x ? 1u : 0u;
      return static_cast<int>(__reduce_add_sync(kAllLanes, c));
    };
    v = kth_largest(1u, row_max, want, count_ge);
    above = count_ge(v + 1);
    ties = count_ge(v) - above;
  }

  // All `above` entries, and `need` of the ties: the first ones in index order (prefer_low) or the last ones.
  const int need = want - above, skip = prefer_low ? 0 : ties - need;
  const int items = fast ? cands : n;
  int tie_seen = 0, written = 0;
  for (int base = 0; base < items && written < want; base += 32) {
    const int pos = base + lane;
    uint32_t key = 0;
    int j = 0;
    if (pos < items) {
      key = fast ? cand_key[pos] : keys[pos];
      j = fast ? cand_idx[pos] : pos;
    }
    const bool tie = key == v;  // v >= 1, so padding (key 0) never ties
    const uint32_t tie_bits = __ballot_sync(kAllLanes, tie);
    bool sel = key > v;
    if (tie) {
      const int r = tie_seen + __popc(tie_bits & lanes_below);
      sel = r >= skip && r < skip + need;
    }
    tie_seen += __popc(tie_bits);
    const uint32_t sel_bits = __ballot_sync(kAllLanes, sel);
    if (sel) {
      out[written + __popc(sel_bits & lanes_below)] = j;
      if (clear_selected) keys[j] = 0u;
    }
    written += __popc(sel_bits);
  }
  __syncwarp();
}

// The score of an order key (the inverse of order_key for keys != 0).
__device__ __forceinline__ float key_score(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

// Pooled-softmax weight of a score: 1 at the row maximum (also when it is infinite), else exp(scale * (s - max)).
__device__ __forceinline__ float key_weight(uint32_t key, uint32_t top_key, float top, float scale) {
  return key == top_key ? 1.f : expf(scale * (key_score(key) - top));
}

// Sum over the row of the weights of the keys >= x (x >= 1: cleared keys never count). Lane-strided in index order,
// then a butterfly: every lane ends with the same bits, and adding a key can only increase the sum (each rounding
// is monotone), so the sum is non-increasing in x.
__device__ __forceinline__ float mass_ge(const uint32_t* keys, int n, uint32_t x, uint32_t top_key, float top,
                                         float scale) {
  const int lane = threadIdx.x & 31;
  float m = 0.f;
  for (int j = lane; j < n; j += 32) {
    const uint32_t key = keys[j];
    if (key >= x) m += key_weight(key, top_key, top, scale);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m += __shfl_xor_sync(kAllLanes, m, off);
  return m;
}

__device__ __forceinline__ int warp_count_ge(const uint32_t* keys, int n, uint32_t x) {
  const int lane = threadIdx.x & 31;
  unsigned c = 0;
  for (int j = lane; j < n; j += 32) c += keys[j] >= x ? 1u : 0u;
  return static_cast<int>(__reduce_add_sync(kAllLanes, c));
}

// top_p count of a row (docs/BLOCK_MAP.md): the largest key v whose mass_ge(v) reaches target = p * total, then all
// keys above v and, of the ties at v, as many as the remaining mass needs (ceil((target - mass above) / w_v)).
__device__ int top_p_count(const uint32_t* keys, int n, uint32_t top_key, float top, float scale, float total,
                           float p) {
  const float target = p * total;  // <= total: mass_ge(1) == total, so the search starts from a true predicate
  const int free_bits = 32 - __clz(static_cast<int>(1u ^ top_key));
  uint32_t v = free_bits == 32 ? 0u : 1u & ~((1u << free_bits) - 1u);
  for (int bit = free_bits - 1; bit >= 0; --bit) {
    const uint32_t c = v | (1u << bit);
    if (mass_ge(keys, n, c, top_key, top, scale) >= target) v = c;
  }
  const int above = warp_count_ge(keys, n, v + 1);  // v <= 0xFF800000: no overflow
  const int ties = warp_count_ge(keys, n, v) - above;
  const float rest = target - mass_ge(keys, n, v + 1, top_key, top, scale);
  const float wv = key_weight(v, top_key, top, scale);
  int need = ties;
  if (wv > 0.f) need = min(ties, max(1, static_cast<int>(ceilf(rest / wv))));
  return above + need;
}

// Grid (ceil(Nq / rows), H, B), 256 threads.
//   a. Smooth-K's mean from the pool kernel's group sums, and Q^T of the CTA's query blocks.
//   b. Scores: K^T stages of kStageCols head-dim columns x tile_keys keys, kbar = fma(ksum, 1/n, -mean) formed as they
//      are stored (transposed), double-buffered with the next stage's global loads in registers (one barrier per
//      stage). Each accumulator sums q[c] * kbar[c] with fmaf in ascending c, as the one-thread-per-key kernel did.
//   c. Selection: warp w takes the rows w, w + 8, ... (critical set, then the negligible set among the rest).
template <int TM>
__global__ void __launch_bounds__(kSelectThreads, TM <= 6 ? 2 : 1) select_kernel(SelectParams p) {
  extern __shared__ float4 select_smem4[];
  float* smem = reinterpret_cast<float*>(select_smem4);
  const SelectLayout lay = select_layout(TM, p.warp_rows, p.rows, p.nk, p.d);
  float* mean = smem + lay.mean;
  float* scratch = smem + lay.scratch;
  float* qt = smem + lay.qt;
  float* kt = smem + lay.kt;
  uint32_t* scores = reinterpret_cast<uint32_t*>(smem + lay.scores);
  uint32_t* cand = reinterpret_cast<uint32_t*>(smem + lay.cand);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t bh = static_cast<int64_t>(blockIdx.z) * p.heads + blockIdx.y;
  const int i0 = blockIdx.x * p.rows, rows_here = min(p.rows, p.nq - i0);
  const int d = p.d, nk = p.nk;
  const int tile_rows = static_cast<int>(lay.tile_rows), tile_keys = static_cast<int>(lay.tile_keys);
  const int kt_stride = static_cast<int>(lay.kt_stride);

  // b's first global loads go out first: the prologue's loads then share their L2 round trip.
  const int keys_warps = kSelectWarps / p.warp_rows;
  const int stages = d / kStageCols, total = ((nk + tile_keys - 1) / tile_keys) * stages;
  const float* ksum = p.k_sum + bh * nk * d;
  float4 pending[kStageLoads];
  // Stage st covers keys [pass * tile_keys, + tile_keys) and columns [c0, c0 + kStageCols); item u of a thread is
  // the 4 columns c0 + 4 * (item & 1) of tile key item >> 1 (two lanes per key: 32-byte global segments).
  auto load_stage = [&](int st) {
    const int key_base = (st / stages) * tile_keys, c0 = (st % stages) * kStageCols;
#pragma unroll
    for (int u = 0; u < kStageLoads; ++u) {
      const int item = tid + u * kSelectThreads, key = key_base + (item >> 1);
      if (item < tile_keys * 2 && key < nk) {
        pending[u] = *reinterpret_cast<const float4*>(ksum + static_cast<int64_t>(key) * d + c0 + (item & 1) * 4);
      }
    }
  };
  load_stage(0);

  // a. Key mean: thread (4 columns, part) sums a contiguous range of the pool kernel's group sums, then the parts are
  // added in order (a fixed order). Q^T of the CTA's query blocks, zero rows past the end.
  const int parts = kSelectThreads / (d / 4);
  {
    const int c4 = tid % (d / 4), part = tid / (d / 4);
    const int per = (p.ng + parts - 1) / parts, g0 = min(p.ng, part * per), g1 = min(p.ng, g0 + per);
    const float4* kp = reinterpret_cast<const float4*>(p.k_part + bh * p.ng * d) + c4;
    float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
    for (int g = g0; g < g1; ++g) {
      const float4 v = kp[static_cast<int64_t>(g) * (d / 4)];
      s.x += v.x;
      s.y += v.y;
      s.z += v.z;
      s.w += v.w;
    }
    reinterpret_cast<float4*>(scratch)[part * (d / 4) + c4] = s;
  }
  for (int e = tid; e < tile_rows * (d / 4); e += kSelectThreads) {
    const int r = e % tile_rows, c4 = e / tile_rows;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (r < rows_here) v = *reinterpret_cast<const float4*>(p.q_pool + (bh * p.nq + i0 + r) * d + c4 * 4);
    qt[(c4 * 4 + 0) * tile_rows + r] = v.x;
    qt[(c4 * 4 + 1) * tile_rows + r] = v.y;
    qt[(c4 * 4 + 2) * tile_rows + r] = v.z;
    qt[(c4 * 4 + 3) * tile_rows + r] = v.w;
  }
  __syncthreads();
  if (tid < d) {
    float total_sum = 0.f;
    for (int q = 0; q < parts; ++q) total_sum += scratch[q * d + tid];
    mean[tid] = total_sum / static_cast<float>(p.lk);
  }
  __syncthreads();

  // b. Scores.
  const int wr = warp / keys_warps, wc = warp % keys_warps;
  const int row0 = (wr * 4 + (lane >> 3)) * TM;     // this lane's tile rows: row0 .. row0 + TM - 1
  const int key0 = wc * kWarpKeys + (lane & 7) * 4;  // its keys: key0 .. key0 + 3, key0 + 32 .. key0 + 35
  auto store_stage = [&](int st) {
    const int key_base = (st / stages) * tile_keys, c0 = (st % stages) * kStageCols;
    float* dst = kt + (st & 1) * kStageCols * kt_stride;
#pragma unroll
    for (int u = 0; u < kStageLoads; ++u) {
      const int item = tid + u * kSelectThreads, tk = item >> 1, half = item & 1, key = key_base + tk;
      if (item < tile_keys * 2) {
        float4 kv = make_float4(0.f, 0.f, 0.f, 0.f);
        if (key < nk) {
          const float inv_n = 1.f / static_cast<float>(min_i64(p.bk, p.lk - static_cast<int64_t>(key) * p.bk));
          const float* mu = mean + c0 + half * 4;
          kv = make_float4(fmaf(pending[u].x, inv_n, -mu[0]), fmaf(pending[u].y, inv_n, -mu[1]),
                           fmaf(pending[u].z, inv_n, -mu[2]), fmaf(pending[u].w, inv_n, -mu[3]));
        }
        float* col = dst + half * 4 * kt_stride + tk;
        col[0] = kv.x;
        col[kt_stride] = kv.y;
        col[2 * kt_stride] = kv.z;
        col[3 * kt_stride] = kv.w;
      }
    }
  };

  float acc[TM][8];
  store_stage(0);
  __syncthreads();
  for (int st = 0; st < total; ++st) {
    if (st % stages == 0) {
#pragma unroll
      for (int m = 0; m < TM; ++m)
#pragma unroll
        for (int n = 0; n < 8; ++n) acc[m][n] = 0.f;
    }
    if (st + 1 < total) load_stage(st + 1);
    const float* qs = qt + (st % stages) * kStageCols * tile_rows + row0;
    const float* ks = kt + (st & 1) * kStageCols * kt_stride + key0;
#pragma unroll
    for (int cc = 0; cc < kStageCols; ++cc) {
      float q[TM];
      if constexpr (TM % 4 == 0) {
#pragma unroll
        for (int m = 0; m < TM; m += 4) {
          const float4 v = *reinterpret_cast<const float4*>(qs + cc * tile_rows + m);
          q[m] = v.x;
          q[m + 1] = v.y;
          q[m + 2] = v.z;
          q[m + 3] = v.w;
        }
      } else {
#pragma unroll
        for (int m = 0; m < TM; m += 2) {
          const float2 v = *reinterpret_cast<const float2*>(qs + cc * tile_rows + m);
          q[m] = v.x;
          q[m + 1] = v.y;
        }
      }
      const float4 lo = *reinterpret_cast<const float4*>(ks + cc * kt_stride);
      const float4 hi = *reinterpret_cast<const float4*>(ks + cc * kt_stride + 32);
      const float k[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
      for (int m = 0; m < TM; ++m)
#pragma unroll
        for (int n = 0; n < 8; ++n) acc[m][n] = fmaf(q[m], k[n], acc[m][n]);
    }
    if (st % stages == stages - 1) {
      const int key_base = (st / stages) * tile_keys;
#pragma unroll
      for (int m = 0; m < TM; ++m) {
        const int r = row0 + m;
        if (r >= rows_here) continue;
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          const int key = key_base + key0 + (n < 4 ? n : 28 + n);
          if (key < nk) scores[static_cast<int64_t>(r) * nk + key] = order_key(acc[m][n]);
        }
      }
    }
    if (st + 1 < total) store_stage(st + 1);  // the other buffer: its last readers passed the previous barrier
    __syncthreads();
  }

  // c. Selection.
  uint32_t* cand_key = cand + warp * 2 * kCandidates;
  int32_t* cand_idx = reinterpret_cast<int32_t*>(cand_key + kCandidates);
  // This CTA's head parameters, read with constant indices only: a dynamic index into the parameter block would
  // make the compiler copy it to local memory.
  int head_count = p.head_count[0];
  float head_p = p.head_p[0];
  if (p.per_head) {
    const int rule_head = static_cast<int>(blockIdx.y);
#pragma unroll
    for (int hh = 1; hh < kMaxRuleHeads; ++hh) {
      if (hh == rule_head) {
        head_count = p.head_count[hh];
        head_p = p.head_p[hh];
      }
    }
  }
  const bool weighted = p.top_p != 0 || p.threshold > 0.f;
  for (int r = warp; r < rows_here; r += kSelectWarps) {
    uint32_t* keys = scores + static_cast<int64_t>(r) * nk;
    const int64_t row = bh * p.nq + i0 + r;
    int t_row = head_count, below = nk;
    if (weighted) {
      uint32_t top_key = 0;
      for (int j = lane; j < nk; j += 32) top_key = max(top_key, keys[j]);
      top_key = __reduce_max_sync(kAllLanes, top_key);
      const float top = key_score(top_key);
      const float total = mass_ge(keys, nk, 1u, top_key, top, p.scale);
      if (p.top_p != 0) {
        t_row = min(max(top_p_count(keys, nk, top_key, top, p.scale, total, head_p), p.min_count), p.max_count);
      }
      if (p.threshold > 0.f) {
        const float bound = p.threshold * total;
        unsigned c = 0;
        for (int j = lane; j < nk; j += 32) c += key_weight(keys[j], top_key, top, p.scale) < bound ? 1u : 0u;
        below = static_cast<int>(__reduce_add_sync(kAllLanes, c));
      }
    }
    int32_t* lut_row = p.lut + row * p.t;
    select_row(keys, nk, t_row, true, p.tn > 0, cand_key, cand_idx, lut_row);
    for (int e = t_row + lane; e < p.t; e += 32) lut_row[e] = -1;
    if (lane == 0) p.count[row] = t_row;
    if (p.tn > 0) {
      // The negligible set: the last of the same total order, i.e. the first of its reverse (key ascending, index
      // descending) among the entries not critical (their keys were cleared to 0).
      const int tn_row = min(min(p.tn, nk - t_row), below);
      int32_t* negl_row = p.negl_lut + row * p.tn;
      if (tn_row > 0) {
        for (int j = lane; j < nk; j += 32) {
          const uint32_t key = keys[j];
          keys[j] = key != 0u ? ~key : 0u;
        }
        __syncwarp();
        select_row(keys, nk, tn_row, false, false, cand_key, cand_idx, negl_row);
      }
      for (int e = tn_row + lane; e < p.tn; e += 32) negl_row[e] = -1;
      if (lane == 0) p.negl_count[row] = tn_row;
    }
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
  __shared__ int total;  // entries of the whole head (set by the CTA of the last keys)
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
    return (t < LutRow::clamp_count(__ldg(cnt + i), p.cap) && j >= 0 && j < p.nk) ? j : -1;
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
    if (j0 + keys == p.nk && lane == 31) {  // lane 31: every key of the last CTA
      offset[p.nk] = base + incl;
      total = base + incl;
    }
  }
  __syncthreads();
  // Rows with fewer than cap entries leave the end of the index unused: the last CTA writes -1 there, so the table
  // is the same bytes run after run (and as the CPU's). Valid entries go below `total`: no other CTA writes here.
  if (j0 + keys == p.nk) {
    for (int64_t e = total + threadIdx.x; e < entries; e += kInvertThreads) index[e] = -1;
  }

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

struct PoolShape {
  int q_group, k_group, q_ctas, k_ctas;
};

PoolShape pool_shape(const Problem& p, const Config& cfg) {
  PoolShape s;
  s.q_group = std::max(1, kPoolRows / cfg.block_q);
  s.k_group = std::max(1, kPoolRows / cfg.block_k);
  s.q_ctas = static_cast<int>((p.map.q_blocks + s.q_group - 1) / s.q_group);
  s.k_ctas = static_cast<int>((p.map.k_blocks + s.k_group - 1) / s.k_group);
  return s;
}

struct PoolBuffers {
  float* q_pool;
  float* k_sum;
  float* k_part;
};

PoolBuffers carve(const Problem& p, const Config& cfg, WorkspaceCarver& ws) {
  const int64_t bh = p.batch * p.heads;
  PoolBuffers b;
  b.q_pool = ws.take<float>(static_cast<std::size_t>(bh * p.map.q_blocks * p.d));
  b.k_sum = ws.take<float>(static_cast<std::size_t>(bh * p.map.k_blocks * p.d));
  b.k_part = ws.take<float>(static_cast<std::size_t>(bh * pool_shape(p, cfg).k_ctas * p.d));
  return b;
}

struct SelectPlan {
  int tm = 0, warp_rows = 0, rows = 0;
  std::size_t smem = 0;
};

// Rows per thread (TM), warp layout and query blocks per CTA of select_kernel. The GEMM is FFMA-bound, so the plan
// minimises the tile rows an SM computes (CTAs per SM, rounded up, times the tile rows; W1: TM 6, 24 query blocks
// per CTA, 132 CTAs), preferring taller tiles on ties (fewer CTAs stream the same pooled K from L2). The scores of a
// CTA's rows stay in shared memory, so huge Nk shrinks the rows per CTA (down to 1) below the tile.
SelectPlan plan_select(int64_t bh, int nq, int nk, int d, int sms, std::size_t smem_limit) {
  int keys_warps = kSelectWarps;
  while (keys_warps > 1 && (keys_warps / 2) * kWarpKeys >= nk) keys_warps /= 2;
  const int warp_rows = kSelectWarps / keys_warps;
  SelectPlan best;
  int64_t best_cost = 0;
  for (int tm : {2, 4, 6, 8}) {
    const int tile_rows = warp_rows * 4 * tm;
    int rows = std::min(tile_rows, nq);
    while (rows > 0 && static_cast<std::size_t>(select_layout(tm, warp_rows, rows, nk, d).words) * 4 > smem_limit) {
      --rows;
    }
    if (rows == 0) continue;
    const int64_t ctas = bh * ((nq + rows - 1) / rows);
    const int64_t cost = (ctas + sms - 1) / sms * tile_rows;
    if (best.tm == 0 || cost < best_cost || (cost == best_cost && rows > best.rows)) {
      best.tm = tm;
      best.warp_rows = warp_rows;
      best.rows = rows;
      best.smem = static_cast<std::size_t>(select_layout(tm, warp_rows, rows, nk, d).words) * 4;
      best_cost = cost;
    }
  }
  return best;
}

// The row rule of every head into the kernel's parameters (resolve_row_rule is the one definition of each value).
Status fill_rule(const Problem& p, const Config& cfg, SelectParams* sp) {
  const bool per_head = !cfg.head_topk.empty() || !cfg.head_top_p.empty();
  if (per_head && p.heads > kMaxRuleHeads) {
    return Status::Unsupported("cfg.head_topk/head_top_p: the CUDA block map takes per-head values for at most " +
                               std::to_string(kMaxRuleHeads) + " heads, got H = " + std::to_string(p.heads));
  }
  const RowRule first = resolve_row_rule(cfg, p.map, 0);
  sp->top_p = first.top_p ? 1 : 0;
  sp->per_head = per_head ? 1 : 0;
  sp->min_count = static_cast<int>(first.min_count);
  sp->max_count = static_cast<int>(first.max_count);
  sp->scale = static_cast<float>(p.scale);
  sp->threshold = static_cast<float>(first.threshold);
  const int64_t heads = per_head ? p.heads : 1;
  for (int64_t h = 0; h < heads; ++h) {
    const RowRule r = resolve_row_rule(cfg, p.map, h);
    sp->head_count[h] = static_cast<int>(r.min_count);
    sp->head_p[h] = static_cast<float>(r.p);
  }
  return Status::Ok();
}

template <int TM>
Status launch_select(const SelectParams& sp, const SelectPlan& plan, dim3 grid, cudaStream_t stream) {
  if (plan.smem > 48 * 1024) SLA_RETURN_IF_ERROR(set_dynamic_smem(select_kernel<TM>, plan.smem, "select_kernel"));
  select_kernel<TM><<<grid, kSelectThreads, plan.smem, stream>>>(sp);
  return check_launch("select_kernel");
}

Status device_limits(int* sms, std::size_t* smem_limit) {
  int dev = 0, count = 0, optin = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return device_error("predict_block_map: device attributes", e);
  }
  *sms = std::max(1, count);
  *smem_limit = static_cast<std::size_t>(optin);
  return Status::Ok();
}

}  // namespace

std::size_t block_map_workspace_bytes(const Problem& p, const Config& cfg) {
  WorkspaceCarver ws;
  carve(p, cfg, ws);
  return ws.bytes();
}

Status launch_predict_block_map(const Problem& p, const TensorView& q, const TensorView& k, const Config& cfg,
                                const BlockMap& map, void* workspace, cudaStream_t stream) {
  WorkspaceCarver ws(workspace);
  const PoolBuffers buf = carve(p, cfg, ws);
  const PoolShape shape = pool_shape(p, cfg);
  const int nq = static_cast<int>(p.map.q_blocks), nk = static_cast<int>(p.map.k_blocks), d = static_cast<int>(p.d);

  int sms = 0;
  std::size_t smem_limit = 0;
  SLA_RETURN_IF_ERROR(device_limits(&sms, &smem_limit));
  const SelectPlan plan = plan_select(p.batch * p.heads, nq, nk, d, sms, smem_limit);
  if (plan.tm == 0) {
    return Status::Unsupported("predict_block_map: Nk = " + std::to_string(nk) +
                               " key blocks exceed the CUDA selection kernel's shared-memory limit");
  }

  PoolParams pp;
  pp.q = rows_params(q);
  pp.k = rows_params(k);
  pp.q_pool = buf.q_pool;
  pp.k_sum = buf.k_sum;
  pp.k_part = buf.k_part;
  pp.heads = p.heads;
  pp.lq = p.lq;
  pp.lk = p.lk;
  pp.nq = nq;
  pp.nk = nk;
  pp.d = d;
  pp.bq = cfg.block_q;
  pp.bk = cfg.block_k;
  pp.q_group = shape.q_group;
  pp.k_group = shape.k_group;
  pp.q_ctas = shape.q_ctas;
  pp.k_ctas = shape.k_ctas;
  const dim3 pool_grid(static_cast<unsigned>(shape.q_ctas + shape.k_ctas), static_cast<unsigned>(p.heads),
                       static_cast<unsigned>(p.batch));
  const bool bf16 = p.dtype == DType::bf16;
  if (d == 128) {
    (bf16 ? pool_kernel<__nv_bfloat16, 128> : pool_kernel<__half, 128>)<<<pool_grid, kPoolThreads, 0, stream>>>(pp);
  } else {
    (bf16 ? pool_kernel<__nv_bfloat16, 64> : pool_kernel<__half, 64>)<<<pool_grid, kPoolThreads, 0, stream>>>(pp);
  }
  SLA_CUDA_RETURN_IF_LAUNCH_FAILED("pool_kernel");

  SelectParams sp;
  sp.q_pool = buf.q_pool;
  sp.k_sum = buf.k_sum;
  sp.k_part = buf.k_part;
  sp.lut = static_cast<int32_t*>(map.lut.data);
  sp.count = static_cast<int32_t*>(map.count.data);
  sp.tn = static_cast<int>(p.map.negligible);
  sp.negl_lut = sp.tn > 0 ? static_cast<int32_t*>(map.negl_lut.data) : nullptr;
  sp.negl_count = sp.tn > 0 ? static_cast<int32_t*>(map.negl_count.data) : nullptr;
  sp.heads = p.heads;
  sp.lk = p.lk;
  sp.nq = nq;
  sp.nk = nk;
  sp.ng = shape.k_ctas;
  sp.d = d;
  sp.bk = cfg.block_k;
  sp.t = static_cast<int>(p.map.critical);
  SLA_RETURN_IF_ERROR(fill_rule(p, cfg, &sp));
  sp.warp_rows = plan.warp_rows;
  sp.rows = plan.rows;
  const dim3 sel_grid(static_cast<unsigned>((nq + plan.rows - 1) / plan.rows), static_cast<unsigned>(p.heads),
                      static_cast<unsigned>(p.batch));
  switch (plan.tm) {
    case 2: SLA_RETURN_IF_ERROR(launch_select<2>(sp, plan, sel_grid, stream)); break;
    case 4: SLA_RETURN_IF_ERROR(launch_select<4>(sp, plan, sel_grid, stream)); break;
    case 6: SLA_RETURN_IF_ERROR(launch_select<6>(sp, plan, sel_grid, stream)); break;
    default: SLA_RETURN_IF_ERROR(launch_select<8>(sp, plan, sel_grid, stream)); break;
  }

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
