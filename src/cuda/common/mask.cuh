// Masks of key columns in a warp's accumulator tiles of scores (the m16n8 layout of cuda/common/quad_reduce.cuh:
// element e of n-tile n sits in column 8 n + 2 (lane % 4) + (e & 1), elements 0, 1 in row lane / 4 and 2, 3 in row
// lane / 4 + 8), shared by the mma.sync and the wgmma kernels, forward and backward.
#pragma once

#include <cmath>
#include <cstdint>

namespace sla::cuda {

// Columns at or past `limit` of the tile are not keys (past Lk, or of a LUT entry that names no block). Index is the
// type the caller computes the limit in (int in the forward, int64_t in the backward): the comparisons are made in it.
template <class Index>
struct ColumnLimit {
  Index limit;
  int t;  // lane % 4: this thread's column pair in every n-tile

  __device__ __forceinline__ bool keep(int n, int e) const { return n * 8 + 2 * t + (e & 1) < limit; }
  // Sets the masked elements to `value` (-inf before a row max, so that they add exp2(-inf) = 0 to the row sum).
  template <int kN>
  __device__ __forceinline__ void fill(float (&s)[kN][4], float value) const {
#pragma unroll
    for (int nt = 0; nt < kN; ++nt) {
      const int c = nt * 8 + t * 2;
      if (c >= limit) s[nt][0] = s[nt][2] = value;
      if (c + 1 >= limit) s[nt][1] = s[nt][3] = value;
    }
  }
};

// The forward's key-tail mask: keys past Lk exist only in the last block of kBK keys (first key key0), whose scores
// get -inf before the row max. Key is the caller's type of key0; the test is made in it, as the caller would.
template <int kBK>
struct KeyTailMask {
  // One m-tile of kN n-tiles.
  template <class Key, int kN>
  static __device__ __forceinline__ void apply(float (&s)[kN][4], Key key0, int64_t lk, int lane) {
    if (key0 + kBK > lk) ColumnLimit<int>{static_cast<int>(lk - key0), lane & 3}.fill(s, -INFINITY);
  }
  // kM m-tiles per warp (the mma.sync forward at bq = 128): one test for all of them.
  template <class Key, int kM, int kN>
  static __device__ __forceinline__ void apply(float (&s)[kM][kN][4], Key key0, int64_t lk, int lane) {
    if (key0 + kBK > lk) {
      const ColumnLimit<int> cols{static_cast<int>(lk - key0), lane & 3};
#pragma unroll
      for (int mt = 0; mt < kM; ++mt) cols.fill(s[mt], -INFINITY);
    }
  }
};

}  // namespace sla::cuda
