// The 0/1 marginal mask of the complement variant (docs/SPEC.md section 3): the A operand of the selection GEMMs
// (select_gemm.h), built from a checked block map (map_check.h: counts clamped, entries distinct and in range).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/params.h"
#include "sla/types.h"

namespace sla::cuda {

struct MarginalMaskArgs {
  const int32_t* lut = nullptr;         // (BH, Nq, T)
  const int32_t* count = nullptr;       // (BH, Nq)
  const int32_t* negl_lut = nullptr;    // (BH, Nq, Tn) or null
  const int32_t* negl_count = nullptr;  // (BH, Nq) or null
  int t = 0, tn = 0;
  int64_t bh = 0;
  int nq = 0, nk = 0;
  // Row Nq of every head all ones (the sum over all key blocks, for the saved lin_h / lin_z).
  bool total_row = false;
};

// Row stride (elements) of a mask whose rows hold 2 n entries: rounded up to 16 bytes, the alignment cuBLASLt's
// fast kernels want of every row; the padding is never read (the GEMMs' k is 2 n).
SLA_HOST_DEVICE inline int64_t mask_row_stride(int64_t n) { return (2 * n + 7) / 8 * 8; }

// Rows of the mask per head: Nq, or Nq + 1 with the total row.
SLA_HOST_DEVICE inline int64_t marginal_mask_rows(const MarginalMaskArgs& a) { return a.nq + (a.total_row ? 1 : 0); }

// mask (BH, rows, mask_row_stride(Nk)) bf16: entry (i, j) and (i, Nk + j) are 1 where key block j is marginal for query
// block i (in neither the critical nor the negligible row), else 0. The two halves multiply the hi and the lo rows of
// the split states.
Status launch_marginal_mask(const MarginalMaskArgs& a, uint16_t* mask, cudaStream_t stream);

// mask_t (BH, Nk, mask_row_stride(Nq)) bf16: the transpose of the first Nq x Nk block of `mask`, in both halves (the A
// operand of the key side's selection, sum over query blocks).
Status launch_transpose_mask(const MarginalMaskArgs& a, const uint16_t* mask, uint16_t* mask_t, cudaStream_t stream);

}  // namespace sla::cuda
