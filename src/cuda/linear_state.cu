// The linear-branch state pass (SPEC.md section 3), three launches:
//   key_state_kernel      persistent CTAs over the (b, h, key group) items: partial H_g = phi(K_g)^T V_g and
//                         z_g = colsum phi(K_g), fp32, one partial per item
//   head_state_kernel     per (8 rows of H, h, b): H = sum of the partials in group order (deterministic),
//                         z likewise; writes lin_h / lin_z when saved, and for the global variant the epilogue
//                         operands (G = H W^T and H as bf16 hi/lo pairs, z)
//   complement_state_kernel (complement variant) per (query block, h, b): H_i = H - sum over the critical and
//                         negligible blocks of the per-block states (the groups are key blocks there), then G_i
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
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
  float* part_h;  // (B*H, groups, D, D): item (b * H + h) * groups + g
  float* part_z;  // (B*H, groups, D)
  int64_t heads, lk, rows_per_group;
  int groups, items, feature_map;
};

// ---- key_state_kernel ----------------------------------------------------------------------------------------------
// Warp-specialised: 8 producer warps turn K into phi(K) (hi and lo) and z, 8 consumer warps multiply phi(K)^T V on
// the tensor cores. The per-row feature map (MUFU, shuffles, conversions) and the mma stream then run on different
// warps at the same time instead of alternating between two barriers (v5: 176 us at W1, latency-bound).
//
// Per 64-key chunk n, through shared memory (stage counts SK, SV, P: KeyStateConfig):
//   K(n)   cp.async by the producers into SK stages; every producer thread copies exactly the bytes it later reads,
//          so K needs no barrier at all (cp.async.wait_group of the thread itself).
//   V(n)   cp.async by the producers into SV stages, read by the consumers (ldmatrix.trans).
//   phi(n) hi and lo tiles written by the producers into P stages, read by the consumers (ldmatrix.trans).
// Producer -> consumer hand-off through named barriers: FULL[s] (producers bar.arrive, consumers bar.sync) and
// EMPTY[s] (consumers bar.arrive, producers bar.sync), s = n % P. A barrier completes one generation at a time: the
// producers arrive on FULL[s] again only after EMPTY[s] of the previous use, and vice versa.
//
// Loads run ahead of use: K(n + dK) and V(n + dV) (dK = SK - 1, dV = SV - P) are issued while chunk n is turned
// into phi. V(n + dV) overwrites V(n - P), which the consumers released (EMPTY of chunk n - P) before the producer
// stores phi(n); K(n + dK) overwrites K(n - 1), read by the same thread. Per producer thread the cp.async groups go
// V(n + dV), K(n + dK) per chunk, so "K(n) landed" is wait_group 2 (dK - 1) and "V(n) landed" wait_group 2 dV - 1.
//
// Persistent grid (one CTA per SM, 160 KB of shared memory at D = 128): CTA c owns items c, c + grid, ... and walks
// their chunks without draining the pipeline between items, which also suits the complement variant (1-2 chunks
// per key block). Each item's partial is computed by the same code whatever CTA runs it, so the results do not
// depend on the grid size (or on the device's SM count).
constexpr int kStateRows = 64;  // keys per chunk
constexpr int kConsumerWarps = 8, kProducerWarps = 8;
constexpr int kProducerThreads = kProducerWarps * 32;
constexpr int kKeyStateThreads = (kConsumerWarps + kProducerWarps) * 32;
// Named barriers (0 is __syncthreads, unused here).
constexpr int kBarFull = 1;       // + stage (P <= 2)
constexpr int kBarEmpty = 3;      // + stage
constexpr int kBarProducers = 5;  // producer warps only (z reduction at the end of an item)

// Stage counts and the shared-memory layout. D = 128: 3/3/2 (160 KB; sm_80 allows 163 KB, sm_90 227 KB) where the
// device allows it, else 2/2/1 (96 KB, sm_86 / sm_89: 99 KB), where the single phi stage makes the producers'
// stores wait for the consumers but phi is still computed during the previous chunk's products. D = 64: 4/4/2
// (96 KB): more loads in flight for a pass that is bound by memory there.
template <int kD, int kSK, int kSV, int kP>
struct KeyStateConfig {
  static constexpr int SK = kSK, SV = kSV, P = kP;
  static constexpr int dK = SK - 1, dV = SV - P;
  static_assert(dK >= 1 && dV >= 1 && P >= 1 && P <= 2, "stage counts");
  static constexpr int kTile = kStateRows * kD * 2;  // one 64 x D tile of b16
  static constexpr int kK = 0;
  static constexpr int kV = kK + SK * kTile;
  static constexpr int kPhi = kV + SV * kTile;
  static constexpr int kPhiStage = 2 * kTile;  // hi, then lo
  static constexpr int kBytes = kPhi + P * kPhiStage;
};

__device__ __forceinline__ void bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void bar_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void lds128(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void sts128(uint32_t addr, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(a), "r"(b), "r"(c), "r"(d));
}

// Elementwise max of two packed pairs (exact: the max of two values of the type is one of them).
template <class T>
__device__ __forceinline__ uint32_t max2(uint32_t a, uint32_t b);
template <>
__device__ __forceinline__ uint32_t max2<__nv_bfloat16>(uint32_t a, uint32_t b) {
  const __nv_bfloat162 r = __hmax2(*reinterpret_cast<const __nv_bfloat162*>(&a),
                                   *reinterpret_cast<const __nv_bfloat162*>(&b));
  return *reinterpret_cast<const uint32_t*>(&r);
}
template <>
__device__ __forceinline__ uint32_t max2<__half>(uint32_t a, uint32_t b) {
  const __half2 r = __hmax2(*reinterpret_cast<const __half2*>(&a), *reinterpret_cast<const __half2*>(&b));
  return *reinterpret_cast<const uint32_t*>(&r);
}

// The chunks of the items one CTA owns, in order: producers and consumers walk identical sequences.
struct ChunkCursor {
  int item;
  int64_t r0, r_end;  // keys [r0, min(r0 + kStateRows, r_end)) of the current chunk
  int64_t k_off, v_off;  // element offsets of key row r0 in K and V

  __device__ __forceinline__ void start(const StateParams& p, int it) {
    item = it;
    if (it < p.items) {
      const int bh = it / p.groups, grp = it - bh * p.groups;
      const int64_t b = bh / p.heads, h = bh - b * p.heads;
      r0 = static_cast<int64_t>(grp) * p.rows_per_group;
      r_end = min_i64(p.lk, r0 + p.rows_per_group);
      k_off = b * p.k.batch_stride + h * p.k.head_stride + r0 * p.k.row_stride;
      v_off = b * p.v.batch_stride + h * p.v.head_stride + r0 * p.v.row_stride;
    }
  }
  __device__ __forceinline__ bool valid(const StateParams& p) const { return item < p.items; }
  __device__ __forceinline__ int rows() const { return static_cast<int>(min_i64(kStateRows, r_end - r0)); }
  __device__ __forceinline__ bool last_of_item() const { return r0 + kStateRows >= r_end; }
  __device__ __forceinline__ void next(const StateParams& p) {
    if (item >= p.items) return;
    r0 += kStateRows;
    k_off += p.k.row_stride * kStateRows;
    v_off += p.v.row_stride * kStateRows;
    if (r0 >= r_end) start(p, item + static_cast<int>(gridDim.x));
  }
};

// One step of a reduce-scatter over lanes `bit` apart: each lane keeps the half of z selected by its lane bit and
// adds the partner's copy of that half (the partner does the same with the other half), so after the steps over
// bits 16, 8, 4 every lane holds the sums over its 8 rows of kN / 8 columns, in a fixed order.
template <int kHalf, int kN>
__device__ __forceinline__ void fold_half(float (&z)[kN], int lane, int bit) {
  const bool upper = (lane & bit) != 0;
#pragma unroll
  for (int i = 0; i < kHalf; ++i) {
    const float send = upper ? z[i] : z[i + kHalf];
    const float keep = upper ? z[i + kHalf] : z[i];
    z[i] = keep + __shfl_xor_sync(0xFFFFFFFFu, send, bit);
  }
}

// t[0] = pairwise sum of t[0 .. 2 kW) (the levels unrolled at compile time).
template <int kW, int kN>
__device__ __forceinline__ void fold_sum(float (&t)[kN]) {
#pragma unroll
  for (int i = 0; i < kW; ++i) t[i] += t[i + kW];
  if constexpr (kW > 1) fold_sum<kW / 2>(t);
}

// Producer warps. Thread (warp pw, lane) owns key row 8 pw + lane / 4 of every chunk and its quarter q = lane % 4
// of the columns (kD / 4 consecutive elements): the row statistics of softmax need two quad shuffles, and the
// thread's z partials stay in registers for the whole item.
template <class T, int kD, FeatureMap F, class S>
__device__ __forceinline__ void key_state_producer(const StateParams& p, unsigned char* smem_ptr, int pw, int lane) {
  constexpr int kChunks = kD / 8;  // 16-byte chunks per row
  constexpr int kPE = kD / 4;      // elements per thread
  constexpr int kPC = kPE / 8;     // 16-byte chunks per thread
  const uint32_t smem = smem_addr(smem_ptr);
  const int ptid = pw * 32 + lane;
  const int row = pw * 8 + (lane >> 2), q = lane & 3;
  const T* k_ptr = static_cast<const T*>(p.k.ptr);
  const T* v_ptr = static_cast<const T*>(p.v.ptr);

  // Per-thread parts of the load addresses, fixed for the whole kernel (the chunk's row r0 comes from the cursor).
  // K: this thread's quarter of its own row (row 0 of the chunk when the row is past the end: cp.async zero-fills
  // it but wants a legal address). V: rows v_row + kVRowStep * it, 16-byte chunk v_chunk, as load_tile_async.
  constexpr int kVPerThread = kStateRows * kChunks / kProducerThreads;
  constexpr int kVRowStep = kProducerThreads / kChunks;
  static_assert(kVRowStep % 8 == 0, "V rows of one thread share their swizzle phase");
  const int64_t k_thread = row * p.k.row_stride + q * kPE;
  const int v_row = ptid / kChunks, v_chunk = ptid % kChunks;
  const int64_t v_thread = v_row * p.v.row_stride + v_chunk * 8;
  const int64_t v_step = kVRowStep * p.v.row_stride;
  const uint32_t v_dst = swizzle<kChunks>(v_row, v_chunk);

  auto issue_k = [&](const ChunkCursor& c, int stage) {
    if (c.valid(p)) {
      const bool ok = row < c.rows();
      const T* src = k_ptr + c.k_off + (ok ? k_thread : q * kPE);
      const uint32_t dst = smem + S::kK + stage * S::kTile;
#pragma unroll
      for (int j = 0; j < kPC; ++j) cp_async_16(dst + swizzle<kChunks>(row, q * kPC + j), src + j * 8, ok);
    }
    cp_async_commit();
  };
  auto issue_v = [&](const ChunkCursor& c, int stage) {
    if (c.valid(p)) {
      const int rows = c.rows();
      const T* src = v_ptr + c.v_off + v_thread;
      const uint32_t dst = smem + S::kV + stage * S::kTile + v_dst;
      if (rows == kStateRows) {  // all but the last chunk of a group: no masks
#pragma unroll
        for (int it = 0; it < kVPerThread; ++it) cp_async_16(dst + it * kVRowStep * kD * 2, src + it * v_step, true);
      } else {
        const T* legal = v_ptr + c.v_off + v_chunk * 8;
#pragma unroll
        for (int it = 0; it < kVPerThread; ++it) {
          const bool ok = v_row + it * kVRowStep < rows;
          cp_async_16(dst + it * kVRowStep * kD * 2, ok ? src + it * v_step : legal, ok);
        }
      }
    }
    cp_async_commit();
  };

  ChunkCursor cc, cv, ck;  // chunk being computed, next V to load, next K to load
  cc.start(p, blockIdx.x);
  cv = cc;
  ck = cc;
  // The groups of the virtual iterations -max(dK, dV) .. -1: V(j + dV), K(j + dK), empty where negative.
  constexpr int kPro = S::dK > S::dV ? S::dK : S::dV;
#pragma unroll
  for (int j = -kPro; j < 0; ++j) {
    if (j + S::dV >= 0) {
      issue_v(cv, j + S::dV);
      cv.next(p);
    } else {
      cp_async_commit();
    }
    if (j + S::dK >= 0) {
      issue_k(ck, j + S::dK);
      ck.next(p);
    } else {
      cp_async_commit();
    }
  }

  float zacc[kPE];
#pragma unroll
  for (int i = 0; i < kPE; ++i) zacc[i] = 0.f;

  int n = 0;
  for (; cc.valid(p); ++n) {
    const int phi_stage = n % S::P, k_stage = n % S::SK;
    cp_async_wait<2 * (S::dK - 1)>();  // K(n) of this thread has landed
    uint32_t raw[kPE / 2];
#pragma unroll
    for (int j = 0; j < kPC; ++j) {
      uint32_t r[4];
      lds128(r, smem + S::kK + k_stage * S::kTile + swizzle<kChunks>(row, q * kPC + j));
#pragma unroll
      for (int e = 0; e < 4; ++e) raw[4 * j + e] = r[e];
    }
    const bool ok = row < cc.rows();
    float a[kPE];
    if constexpr (F == FeatureMap::softmax) {
      uint32_t m2 = raw[0];
#pragma unroll
      for (int e = 1; e < kPE / 2; ++e) m2 = max2<T>(m2, raw[e]);
      const float2 mf = ElementTraits<T>::unpack2(m2);
      float mx = fmaxf(mf.x, mf.y);
      mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, 2));
      // exp(x - mx) = 2^(x log2e - mx log2e): one FFMA per element. The rounding of mx log2e shifts every exponent
      // of the row alike and cancels in e / sum(e). The flush-to-zero ex2 skips __expf's fix-up for results below
      // 2^-126 (3 instructions per element).
      const float neg_mx = -mx * kLog2e;
#pragma unroll
      for (int e = 0; e < kPE / 2; ++e) {
        const float2 f = ElementTraits<T>::unpack2(raw[e]);
        a[2 * e] = fast_exp2(fmaf(f.x, kLog2e, neg_mx));
        a[2 * e + 1] = fast_exp2(fmaf(f.y, kLog2e, neg_mx));
      }
      // Pairwise sum (short dependency chains), then the quad: all four lanes end with the same bits.
      float t[kPE / 2];
#pragma unroll
      for (int i = 0; i < kPE / 2; ++i) t[i] = a[i] + a[i + kPE / 2];
      fold_sum<kPE / 4>(t);
      float s = t[0];
      s += __shfl_xor_sync(0xFFFFFFFFu, s, 1);
      s += __shfl_xor_sync(0xFFFFFFFFu, s, 2);
      const float inv = ok ? 1.f / s : 0.f;  // rows past the end (zero-filled K) get phi = 0
#pragma unroll
      for (int i = 0; i < kPE; ++i) a[i] *= inv;
    } else {
      const FeatureRowStats none;
#pragma unroll
      for (int e = 0; e < kPE / 2; ++e) {
        const float2 f = ElementTraits<T>::unpack2(raw[e]);
        a[2 * e] = ok ? phi_forward<F>(f.x, none) : 0.f;
        a[2 * e + 1] = ok ? phi_forward<F>(f.y, none) : 0.f;
      }
    }
    uint32_t hi[kPE / 2], lo[kPE / 2];
#pragma unroll
    for (int e = 0; e < kPE / 2; ++e) {
      zacc[2 * e] += a[2 * e];
      zacc[2 * e + 1] += a[2 * e + 1];
      hi[e] = ElementTraits<T>::pack2(a[2 * e], a[2 * e + 1]);
      const float2 hf = ElementTraits<T>::unpack2(hi[e]);
      lo[e] = ElementTraits<T>::pack2(a[2 * e] - hf.x, a[2 * e + 1] - hf.y);
    }
    if (n >= S::P) bar_sync(kBarEmpty + phi_stage, kKeyStateThreads);  // consumers are done with n - P
    const uint32_t phi_hi = smem + S::kPhi + phi_stage * S::kPhiStage, phi_lo = phi_hi + S::kTile;
#pragma unroll
    for (int j = 0; j < kPC; ++j) {
      const uint32_t off = swizzle<kChunks>(row, q * kPC + j);
      sts128(phi_hi + off, hi[4 * j], hi[4 * j + 1], hi[4 * j + 2], hi[4 * j + 3]);
      sts128(phi_lo + off, lo[4 * j], lo[4 * j + 1], lo[4 * j + 2], lo[4 * j + 3]);
    }
    cp_async_wait<2 * S::dV - 1>();  // V(n) of this thread has landed
    bar_arrive(kBarFull + phi_stage, kKeyStateThreads);
    issue_v(cv, (n + S::dV) % S::SV);  // over V(n - P), released by the EMPTY above
    cv.next(p);
    issue_k(ck, (n + S::dK) % S::SK);  // over K(n - 1), read by this thread only
    ck.next(p);

    if (cc.last_of_item()) {
      // z of the item: reduce the 8 rows of the warp (lane bits 2-4) in registers, then the 8 warps through a
      // scratch in K stage n % SK (all producers have read K(n) once the first barrier completes; K(n + SK) is
      // issued into it only after the last one).
      fold_half<kPE / 2>(zacc, lane, 16);
      fold_half<kPE / 4>(zacc, lane, 8);
      fold_half<kPE / 8>(zacc, lane, 4);
      float* scratch = reinterpret_cast<float*>(smem_ptr + S::kK + k_stage * S::kTile);  // (8 warps, kD)
      const int col = q * kPE + ((lane >> 4) & 1) * (kPE / 2) + ((lane >> 3) & 1) * (kPE / 4) +
                      ((lane >> 2) & 1) * (kPE / 8);
      bar_sync(kBarProducers, kProducerThreads);
#pragma unroll
      for (int i = 0; i < kPE / 8; ++i) scratch[pw * kD + col + i] = zacc[i];
      bar_sync(kBarProducers, kProducerThreads);
      if (ptid < kD) {
        float z = 0.f;
#pragma unroll
        for (int w = 0; w < kProducerWarps; ++w) z += scratch[w * kD + ptid];
        p.part_z[static_cast<int64_t>(cc.item) * kD + ptid] = z;
      }
      bar_sync(kBarProducers, kProducerThreads);
#pragma unroll
      for (int i = 0; i < kPE; ++i) zacc[i] = 0.f;
    }
    cc.next(p);
  }
  // The consumers' EMPTY arrivals of the last P chunks: complete those generations before the CTA exits.
  for (int m = n - S::P < 0 ? 0 : n - S::P; m < n; ++m) bar_sync(kBarEmpty + m % S::P, kKeyStateThreads);
  cp_async_wait<0>();
}

// Consumer warps: a 4 x 2 grid of warp tiles over H (D x D), 32 x 64 at D = 128 (16 x 32 at D = 64). phi(k) enters
// as hi + lo (16+ significant bits) and V exactly, so the fp32 accumulators see phi(k) v to ~2^-16 relative.
template <class T, int kD, class S>
__device__ __forceinline__ void key_state_consumer(const StateParams& p, unsigned char* smem_ptr, int cw, int lane) {
  using Tag = typename ElementTraits<T>::MmaTag;
  constexpr int kChunks = kD / 8;
  constexpr int kMT = kD / 64;  // m-tiles (16 rows of d) per warp
  constexpr int kWarpsM = kD / (16 * kMT), kWarpsN = kConsumerWarps / kWarpsM;
  constexpr int kCols = kD / kWarpsN;  // dv columns per warp
  constexpr int kNT = kCols / 8;
  static_assert(kWarpsM * kWarpsN == kConsumerWarps && kNT % 2 == 0, "warp tiling of H");
  constexpr uint32_t kRowBytes = kD * 2;
  const uint32_t smem = smem_addr(smem_ptr);
  const int warp_m = cw % kWarpsM, warp_n = cw / kWarpsM;
  const int m0 = warp_m * 16 * kMT, n0 = warp_n * kCols;
  // ldmatrix addresses as tile + ((lane part + 16-key row block) ^ (16-byte chunk << 4)), as LdsmLane (tile_io.cuh):
  // the swizzle XOR then touches only the chunk bits, so the loop needs a handful of address registers instead of
  // one per (ks, tile) pair.
  const int a_row = (lane & 7) + ((lane >> 4) << 3);  // as ldsm_a_trans
  const uint32_t lane_a = a_row * kRowBytes + ((((lane >> 3) & 1) ^ (a_row & 7)) << 4);
  const uint32_t lane_b = LdsmLane<kChunks>::b_kn(lane);

  float acc[kMT][kNT][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.f;

  ChunkCursor cc;
  cc.start(p, blockIdx.x);
  for (int n = 0; cc.valid(p); ++n) {
    const int phi_stage = n % S::P;
    bar_sync(kBarFull + phi_stage, kKeyStateThreads);
    const uint32_t a_tile = smem + S::kPhi + phi_stage * S::kPhiStage;  // hi; lo is S::kTile further
    const uint32_t b_tile = smem + S::kV + (n % S::SV) * S::kTile;
#pragma unroll
    for (int ks = 0; ks < kStateRows / 16; ++ks) {
      uint32_t ah[kMT][4], al[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        const uint32_t addr = a_tile + ((lane_a + ks * 16 * kRowBytes) ^ static_cast<uint32_t>(((m0 >> 3) + 2 * mt) << 4));
        ldmatrix_x4_trans(ah[mt], addr);
        ldmatrix_x4_trans(al[mt], addr + S::kTile);
      }
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t bv[4];
        ldmatrix_x4_trans(bv, b_tile + ((lane_b + ks * 16 * kRowBytes) ^ static_cast<uint32_t>(((n0 >> 3) + 2 * np) << 4)));
        const uint32_t b0[2] = {bv[0], bv[1]}, b1[2] = {bv[2], bv[3]};
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_16816(acc[mt][2 * np], ah[mt], b0, Tag{});
          mma_16816(acc[mt][2 * np + 1], ah[mt], b1, Tag{});
        }
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_16816(acc[mt][2 * np], al[mt], b0, Tag{});
          mma_16816(acc[mt][2 * np + 1], al[mt], b1, Tag{});
        }
      }
    }
    bar_arrive(kBarEmpty + phi_stage, kKeyStateThreads);
    if (cc.last_of_item()) {
      float* ph = p.part_h + static_cast<int64_t>(cc.item) * kD * kD;
      const int g = lane >> 2, t = lane & 3;
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          const int r = m0 + mt * 16 + g, c = n0 + nt * 8 + 2 * t;
          *reinterpret_cast<float2*>(ph + r * kD + c) = make_float2(acc[mt][nt][0], acc[mt][nt][1]);
          *reinterpret_cast<float2*>(ph + (r + 8) * kD + c) = make_float2(acc[mt][nt][2], acc[mt][nt][3]);
          acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.f;
        }
      }
    }
    cc.next(p);
  }
}

template <class T, int kD, FeatureMap F, class S>
__global__ void __launch_bounds__(kKeyStateThreads, 1) key_state_kernel(StateParams p) {
  extern __shared__ __align__(128) unsigned char state_smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  // Warp-uniform roles; consumers are warps 0-7 and producers 8-15, two of each per SM sub-partition.
  if (warp < kConsumerWarps) {
    key_state_consumer<T, kD, S>(p, state_smem, warp, lane);
  } else {
    key_state_producer<T, kD, F, S>(p, state_smem, warp - kConsumerWarps, lane);
  }
}

// ---- head_state_kernel / complement_state_kernel ----------------------------------------------------------------

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
  int groups;
};

constexpr int kHeadRows = 8;  // rows of H per head_state CTA (and per complement_state step)

// W[:, m0 .. m0 + 32) staged in shared memory with rows padded to 33 floats: the thread of output column n reads
// row n, and the 32 lanes of a warp (32 consecutive n) hit 32 different banks.
template <int kD>
using WTile = float[kD][33];

// Rows [d0, d0 + kHeadRows) of the operand block from fp32 rows of H in shared memory: H as hi/lo, and, when W is
// present, G = H W^T as hi/lo. Thread (n, s) computes G[r][n] for the kHeadRows / kSets rows r of set s as one
// sequential fp32 dot product over m (fixed order). W comes through shared memory 32 columns at a time, read
// coalesced (v5 read W with one warp per column and a serial loop of L2 loads). All threads must call it.
template <int kD>
__device__ __forceinline__ void write_operands(const float* h_rows, int d0, const float* weight,
                                               const LinearOperandLayout& lay, unsigned char* ops, WTile<kD>& w_tile) {
  __nv_bfloat16* g_hi = reinterpret_cast<__nv_bfloat16*>(ops + lay.g_hi());
  __nv_bfloat16* g_lo = reinterpret_cast<__nv_bfloat16*>(ops + lay.g_lo());
  __nv_bfloat16* h_hi = reinterpret_cast<__nv_bfloat16*>(ops + lay.h_hi());
  __nv_bfloat16* h_lo = reinterpret_cast<__nv_bfloat16*>(ops + lay.h_lo());
  for (int e = threadIdx.x; e < kHeadRows * kD; e += blockDim.x) {
    const int r = e / kD, n = e % kD;
    const float hv = h_rows[r * kD + n];
    const __nv_bfloat16 hh = __float2bfloat16_rn(hv);
    h_hi[(d0 + r) * kD + n] = hh;
    h_lo[(d0 + r) * kD + n] = __float2bfloat16_rn(hv - __bfloat162float(hh));
  }
  if (weight == nullptr) return;
  constexpr int kSets = kStateThreads / kD, kRows = kHeadRows / kSets;
  static_assert(kSets * kRows == kHeadRows, "rows of G per thread");
  const int n = threadIdx.x % kD, s = threadIdx.x / kD;
  const float* h_set = h_rows + s * kRows * kD;
  float acc[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = 0.f;
  for (int m0 = 0; m0 < kD; m0 += 32) {
    __syncthreads();  // the previous tile has been read
#pragma unroll 4
    for (int e = threadIdx.x; e < kD * 32; e += blockDim.x) {
      const int r = e / 32, c = e % 32;
      w_tile[r][c] = __ldg(weight + static_cast<int64_t>(r) * kD + m0 + c);
    }
    __syncthreads();
#pragma unroll 8
    for (int m = 0; m < 32; ++m) {
      const float w = w_tile[n][m];
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[r] = fmaf(h_set[r * kD + m0 + m], w, acc[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int row = d0 + s * kRows + r;
    const __nv_bfloat16 gh = __float2bfloat16_rn(acc[r]);
    g_hi[row * kD + n] = gh;
    g_lo[row * kD + n] = __float2bfloat16_rn(acc[r] - __bfloat162float(gh));
  }
}

__device__ __forceinline__ void add4(float4& s, const float4& v) {
  s.x += v.x;
  s.y += v.y;
  s.z += v.z;
  s.w += v.w;
}

template <int kD>
__global__ void __launch_bounds__(kStateThreads, 1) head_state_kernel(HeadParams p) {
  __shared__ __align__(16) float h_rows[kHeadRows * kD];
  __shared__ WTile<kD> w_tile;
  const int d0 = blockIdx.x * kHeadRows;
  const int64_t bh = static_cast<int64_t>(blockIdx.z) * p.heads + blockIdx.y;
  constexpr int64_t kHH = static_cast<int64_t>(kD) * kD;
  constexpr int kVec = kHeadRows * kD / 4;  // float4s of this CTA's rows
  const int groups = p.groups;
  // Sum over the groups in group order; the partials were just written (L2), so the loads are issued 8 at a time.
  for (int e = threadIdx.x; e < kVec; e += blockDim.x) {
    const float4* src = reinterpret_cast<const float4*>(p.part_h + bh * groups * kHH + d0 * kD) + e;
    float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
    int g = 0;
    for (; g + 8 <= groups; g += 8) {
      float4 v[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) v[u] = __ldg(src + (g + u) * (kHH / 4));
#pragma unroll
      for (int u = 0; u < 8; ++u) add4(s, v[u]);
    }
    for (; g < groups; ++g) add4(s, __ldg(src + g * (kHH / 4)));
    reinterpret_cast<float4*>(h_rows)[e] = s;
    const int64_t idx = bh * kHH + d0 * kD + 4 * e;
    reinterpret_cast<float4*>(p.h_all + idx)[0] = s;
    if (p.lin_h != nullptr) {  // a caller's tensor: only 4-byte alignment is known
      p.lin_h[idx] = s.x;
      p.lin_h[idx + 1] = s.y;
      p.lin_h[idx + 2] = s.z;
      p.lin_h[idx + 3] = s.w;
    }
  }
  if (blockIdx.x == 0) {
    for (int c = threadIdx.x; c < kD; c += blockDim.x) {
      const float* src = p.part_z + bh * groups * kD + c;
      float s = 0.f;
      int g = 0;
      for (; g + 8 <= groups; g += 8) {
        float v[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) v[u] = __ldg(src + (g + u) * kD);
#pragma unroll
        for (int u = 0; u < 8; ++u) s += v[u];
      }
      for (; g < groups; ++g) s += __ldg(src + g * kD);
      p.z_all[bh * kD + c] = s;
      if (p.lin_z != nullptr) p.lin_z[bh * kD + c] = s;
      if (p.ops != nullptr) reinterpret_cast<float*>(p.ops + bh * p.ops_stride + p.lay.z())[c] = s;
    }
    if (p.ops != nullptr && threadIdx.x == 0) {
      *reinterpret_cast<int32_t*>(p.ops + bh * p.ops_stride + p.lay.marginal_empty()) = 0;
    }
  }
  __syncthreads();
  if (p.ops != nullptr) write_operands<kD>(h_rows, d0, p.weight, p.lay, p.ops + bh * p.ops_stride, w_tile);
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
  int nq, nk, t, tn;
};

// One CTA per (query block, h, b), kHeadRows rows of H_i at a time. H_i = H - sum over C_i and N_i of h_j.
template <int kD>
__global__ void __launch_bounds__(kStateThreads) complement_state_kernel(ComplementParams p) {
  __shared__ __align__(16) float h_rows[kHeadRows * kD];
  __shared__ WTile<kD> w_tile;
  __shared__ int blocks[2048];
  __shared__ int n_blocks;
  constexpr int64_t kHH = static_cast<int64_t>(kD) * kD;
  const int i = blockIdx.x;
  const int64_t bh = static_cast<int64_t>(blockIdx.z) * p.heads + blockIdx.y;
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
  for (int c = threadIdx.x; c < kD; c += blockDim.x) {
    float s = p.z_all[bh * kD + c];
    for (int e = 0; e < nb; ++e) s -= p.part_z[(bh * p.nk + blocks[e]) * kD + c];
    reinterpret_cast<float*>(ops + p.lay.z())[c] = s;
  }
  constexpr int kVec = kHeadRows * kD / 4;
  for (int d0 = 0; d0 < kD; d0 += kHeadRows) {
    for (int e = threadIdx.x; e < kVec; e += blockDim.x) {
      const int64_t idx = static_cast<int64_t>(d0) * kD + 4 * e;
      float4 s = *reinterpret_cast<const float4*>(p.h_all + bh * kHH + idx);
#pragma unroll 4
      for (int q = 0; q < nb; ++q) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(p.part_h + (bh * p.nk + blocks[q]) * kHH + idx));
        s.x -= v.x;
        s.y -= v.y;
        s.z -= v.z;
        s.w -= v.w;
      }
      reinterpret_cast<float4*>(h_rows)[e] = s;
    }
    __syncthreads();
    write_operands<kD>(h_rows, d0, p.weight, p.lay, ops, w_tile);
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

template <class T, int kD, class S>
Status launch_key_state_config(const StateParams& sp, int sms, cudaStream_t stream) {
  constexpr int smem = S::kBytes;
  Status st = Status::Ok();
  SLA_FEATURE_MAP_SWITCH(static_cast<FeatureMap>(sp.feature_map), FM, [&] {
    const auto kernel = key_state_kernel<T, kD, FM, S>;
    st = set_dynamic_smem(kernel, smem, "key_state_kernel");
    if (!st.ok()) return;
    int per_sm = 0;
    const cudaError_t oe = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kKeyStateThreads, smem);
    if (oe != cudaSuccess) {
      st = device_error("key_state_kernel: occupancy", oe);
      return;
    }
    const int64_t resident = static_cast<int64_t>(sms) * (per_sm > 0 ? per_sm : 1);
    const unsigned grid = static_cast<unsigned>(min_i64(sp.items, resident));
    kernel<<<grid, kKeyStateThreads, smem, stream>>>(sp);
    st = check_launch("key_state_kernel");
  });
  return st;
}

template <class T, int kD>
Status launch_key_state(const StateParams& sp, cudaStream_t stream) {
  int dev = 0, sms = 0, smem_optin = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e != cudaSuccess) return device_error("key_state_kernel: device attributes", e);
  if constexpr (kD == 64) {
    return launch_key_state_config<T, kD, KeyStateConfig<64, 4, 4, 2>>(sp, sms, stream);
  } else {
    using Deep = KeyStateConfig<kD, 3, 3, 2>;
    using Compact = KeyStateConfig<kD, 2, 2, 1>;
    // SLA_CUDA_KEY_STATE=compact takes the small-shared-memory path on any device (to test it on Hopper).
    static const bool force_compact = [] {
      const char* v = std::getenv("SLA_CUDA_KEY_STATE");
      return v != nullptr && std::strcmp(v, "compact") == 0;
    }();
    if (smem_optin >= Deep::kBytes && !force_compact) return launch_key_state_config<T, kD, Deep>(sp, sms, stream);
    return launch_key_state_config<T, kD, Compact>(sp, sms, stream);
  }
}

template <int kD>
Status launch_head_and_complement(const Problem& p, const HeadParams& hp, const ComplementParams* cp,
                                  cudaStream_t stream) {
  head_state_kernel<kD><<<dim3(static_cast<unsigned>(kD / kHeadRows), static_cast<unsigned>(p.heads),
                               static_cast<unsigned>(p.batch)),
                          kStateThreads, 0, stream>>>(hp);
  SLA_CUDA_RETURN_IF_LAUNCH_FAILED("head_state_kernel");
  if (cp != nullptr) {
    complement_state_kernel<kD><<<dim3(static_cast<unsigned>(cp->nq), static_cast<unsigned>(p.heads),
                                       static_cast<unsigned>(p.batch)),
                                  kStateThreads, 0, stream>>>(*cp);
    SLA_CUDA_RETURN_IF_LAUNCH_FAILED("complement_state_kernel");
  }
  return Status::Ok();
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
  const int64_t items = p.batch * p.heads * plan.groups;
  if (items > INT_MAX / 2) {  // the cursors step item indices by the grid size
    return Status::Unsupported("linear state: B * H * key groups = " + std::to_string(items) +
                               " exceeds the CUDA kernel's int32 item index");
  }

  StateParams sp;
  sp.k = rows_params(args.k);
  sp.v = rows_params(args.v);
  sp.part_h = buf.part_h;
  sp.part_z = buf.part_z;
  sp.heads = p.heads;
  sp.lk = p.lk;
  sp.rows_per_group = plan.rows_per_group;
  sp.groups = static_cast<int>(plan.groups);
  sp.items = static_cast<int>(items);
  sp.feature_map = static_cast<int>(cfg.feature_map);
  Status st = Status::Unsupported("linear state: head dim " + std::to_string(p.d) + " / dtype " +
                                  dtype_name(p.dtype) + " not built");
  if (items > 0) {
    if (p.dtype == DType::bf16 && p.d == 128) st = launch_key_state<__nv_bfloat16, 128>(sp, stream);
    if (p.dtype == DType::bf16 && p.d == 64) st = launch_key_state<__nv_bfloat16, 64>(sp, stream);
    if (p.dtype == DType::f16 && p.d == 128) st = launch_key_state<__half, 128>(sp, stream);
    if (p.dtype == DType::f16 && p.d == 64) st = launch_key_state<__half, 64>(sp, stream);
    SLA_RETURN_IF_ERROR(st);
  }

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

  ComplementParams cp;
  if (complement) {
    const int64_t removable = p.map.critical + p.map.negligible;
    if (removable > 2048) {
      return Status::Unsupported("forward (complement variant): T + Tn = " + std::to_string(removable) +
                                 " key blocks per row exceed the CUDA kernel's limit of 2048");
    }
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
  }
  if (p.d == 128) return launch_head_and_complement<128>(p, hp, complement ? &cp : nullptr, stream);
  if (p.d == 64) return launch_head_and_complement<64>(p, hp, complement ? &cp : nullptr, stream);
  return Status::Unsupported("linear state: head dim " + std::to_string(p.d) + " not built");
}

}  // namespace sla::cuda
