// Kernels of marginal_mask.h.
#include <cuda_runtime.h>

#include "cuda/common/cuda_status.h"
#include "cuda/common/lut_row.cuh"
#include "cuda/select/marginal_mask.h"

namespace sla::cuda {
namespace {

constexpr uint16_t kBf16One = 0x3F80;
constexpr int kMaskThreads = 256;

// Grid (rows, BH). Fills the row with ones, then clears the critical and negligible entries: the barrier orders
// the block's global writes.
__global__ void __launch_bounds__(kMaskThreads) marginal_mask_kernel(MarginalMaskArgs a, uint16_t* mask) {
  const int i = blockIdx.x;
  const int64_t bh = blockIdx.y;
  const int64_t rows = marginal_mask_rows(a);
  uint16_t* row = mask + (bh * rows + i) * mask_row_stride(a.nk);
  for (int j = threadIdx.x; j < a.nk; j += blockDim.x) {
    row[j] = kBf16One;
    row[a.nk + j] = kBf16One;
  }
  if (i >= a.nq) return;  // the total row
  __syncthreads();
  const int64_t part = bh * a.nq + i;
  const int nc = LutRow::clamp_count(a.count[part], a.t);
  for (int e = threadIdx.x; e < nc; e += blockDim.x) {
    const int j = a.lut[part * a.t + e];
    if (j >= 0 && j < a.nk) row[j] = row[a.nk + j] = 0;
  }
  if (a.negl_lut != nullptr) {
    const int nn = LutRow::clamp_count(a.negl_count[part], a.tn);
    for (int e = threadIdx.x; e < nn; e += blockDim.x) {
      const int j = a.negl_lut[part * a.tn + e];
      if (j >= 0 && j < a.nk) row[j] = row[a.nk + j] = 0;
    }
  }
}

constexpr int kTile = 32;

// Grid (ceil(Nk / 32), ceil(Nq / 32), BH), block (32, 8): a 32 x 32 tile through shared memory, so that both the
// reads and the writes are row-contiguous.
__global__ void transpose_mask_kernel(MarginalMaskArgs a, const uint16_t* mask, uint16_t* mask_t) {
  __shared__ uint16_t tile[kTile][kTile + 1];
  const int64_t bh = blockIdx.z;
  const int64_t rows = marginal_mask_rows(a);
  const int j0 = blockIdx.x * kTile, i0 = blockIdx.y * kTile;
  for (int r = threadIdx.y; r < kTile; r += blockDim.y) {
    const int i = i0 + r, j = j0 + threadIdx.x;
    if (i < a.nq && j < a.nk) tile[r][threadIdx.x] = mask[(bh * rows + i) * mask_row_stride(a.nk) + j];
  }
  __syncthreads();
  for (int r = threadIdx.y; r < kTile; r += blockDim.y) {
    const int j = j0 + r, i = i0 + threadIdx.x;
    if (i < a.nq && j < a.nk) {
      uint16_t* row = mask_t + (bh * a.nk + j) * mask_row_stride(a.nq);
      row[i] = row[a.nq + i] = tile[threadIdx.x][r];
    }
  }
}

}  // namespace

Status launch_marginal_mask(const MarginalMaskArgs& a, uint16_t* mask, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(marginal_mask_rows(a)), static_cast<unsigned>(a.bh));
  marginal_mask_kernel<<<grid, kMaskThreads, 0, stream>>>(a, mask);
  return check_launch("marginal_mask_kernel");
}

Status launch_transpose_mask(const MarginalMaskArgs& a, const uint16_t* mask, uint16_t* mask_t, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((a.nk + kTile - 1) / kTile), static_cast<unsigned>((a.nq + kTile - 1) / kTile),
                  static_cast<unsigned>(a.bh));
  transpose_mask_kernel<<<grid, dim3(kTile, 8), 0, stream>>>(a, mask, mask_t);
  return check_launch("transpose_mask_kernel");
}

}  // namespace sla::cuda
