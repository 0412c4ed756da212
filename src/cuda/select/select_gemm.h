// The selection GEMM of the complement variant's linear branch (docs/KERNELS_NEXT.md 1.2 (b2)): per (b, h),
// C = A x B with A a 0/1 bf16 matrix (the marginal mask, exact in 16 bits) and B the per-block states carried as
// split bf16 rows (hi rows, then lo rows), accumulated in fp32. cuBLASLt runs it: a dense GEMM of this shape is what
// the library is tuned for, on every architecture the project builds (wgmma on sm_90, mma.sync on sm_80).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "sla/types.h"

namespace sla::cuda {

// Row-major operands, one matrix per batch entry at the given element strides.
struct SelectGemm {
  int64_t m = 0, n = 0, k = 0;                       // C is m x n, A is m x k, B is k x n
  int64_t lda = 0, ldb = 0, ldc = 0;                 // row strides in elements
  int64_t stride_a = 0, stride_b = 0, stride_c = 0;  // batch strides in elements
  int64_t batch = 0;
};

// cuBLASLt's scratch for one selection GEMM (part of the callers' workspace queries): enough for the
// non-split-K kernels this GEMM is limited to.
constexpr std::size_t kSelectGemmWorkspace = std::size_t{4} << 20;

// C (fp32) = A (bf16) x B (bf16) on `stream`, fp32 accumulation. Deterministic: reductions across k are restricted
// to a single kernel (no split-K), and the algorithm chosen depends on the shape only. `workspace` holds
// kSelectGemmWorkspace bytes.
Status launch_select_gemm(const SelectGemm& g, const uint16_t* a, const uint16_t* b, float* c, void* workspace,
                          cudaStream_t stream);

}  // namespace sla::cuda
