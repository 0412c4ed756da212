// One row of a block LUT (docs/SPEC.md section 1): its first n entries, n = the row's count clamped to [0, T], name
// key blocks in [0, Nk) (or, in an inverse table, query blocks in [0, Nq)). An entry outside that range names no
// block: it is skipped, never used as an index (the map check reports such a map; a kernel must still not read out
// of bounds). The kernels that walk a LUT row entry by entry (the forward's mainloops, the Hopper dQ and dK/dV
// gathers) go through this type. Kernels that index a row's entries directly (dq_mma_kernel's stages, the marginal
// mask, the inversion) write the same test, `j >= 0 && j < nk`, in place: as a helper returning bool it compiles
// to differently ordered compares (scripts/compare_sass.py), which only a GPU run could clear.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace sla::cuda {

struct LutRow {
  const int32_t* entries;
  int n;   // entries to walk: the clamped count
  int nk;  // blocks an entry may name

  // A row's count clamped to its table's width (a negative or oversized count never walks past the row).
  static __device__ __forceinline__ int clamp_count(int count, int width) { return min(max(count, 0), width); }

  __device__ __forceinline__ int block(int e) const { return __ldg(entries + e); }
  // Index of the first entry at or after e that names a block, or n.
  __device__ __forceinline__ int next_valid(int e) const {
    while (e < n) {
      const int j = block(e);
      if (j >= 0 && j < nk) break;
      ++e;
    }
    return e;
  }
};

}  // namespace sla::cuda
