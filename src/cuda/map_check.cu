// The device check of a caller's block map and the NaN fill of a flagged head's outputs (map_check.h).
#include "cuda/map_check.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/validate.h"  // SLA_RETURN_IF_ERROR
#include "cuda/block_map.h"

namespace sla::cuda {
namespace {

constexpr int kCheckThreads = 256;
constexpr int kPoisonThreads = 256;
constexpr int kMaxCtas = 4096;  // grid-stride beyond this: the check is a small fraction of a forward pass
constexpr std::size_t kBitmapSmemLimit = 48 * 1024;  // no opt-in attribute needed below this

struct CheckParams {
  const int32_t* lut;         // (rows, t)
  const int32_t* count;       // (rows)
  const int32_t* negl_lut;    // (rows, tn) or null
  const int32_t* negl_count;  // (rows) or null
  int32_t* flags;             // (rows / nq + 1)
  int64_t rows;               // B * H * Nq
  int64_t any_slot;           // B * H: index of the any_bad flag
  int nq, nk, t, tn;
  int words;  // bitmap words per warp; 0: pairwise comparison (Nk too large for shared memory)
};

__device__ __forceinline__ int row_entry(const CheckParams& p, int64_t row, int n, int e) {
  return e < n ? __ldg(p.lut + row * p.t + e) : __ldg(p.negl_lut + row * p.tn + (e - n));
}

// One warp per LUT row: the critical and negligible entries of the row together must be in [0, Nk) and distinct
// (distinct within each set, and the sets disjoint). A shared-memory bitmap of Nk bits per warp detects repeats
// with one atomicOr per entry; without room for it, entries are compared pairwise (O(n^2) per row, only for
// Nk above ~390k key blocks).
__global__ void __launch_bounds__(kCheckThreads) check_rows_kernel(CheckParams p) {
  extern __shared__ uint32_t bitmap[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  uint32_t* bm = bitmap + static_cast<int64_t>(warp) * p.words;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * warps + warp; row < p.rows;
       row += static_cast<int64_t>(gridDim.x) * warps) {
    const int n = __ldg(p.count + row);
    const int nn = p.negl_lut != nullptr ? __ldg(p.negl_count + row) : 0;
    bool bad = n < 0 || n > p.t || nn < 0 || nn > p.tn;  // warp-uniform
    if (!bad) {
      const int total = n + nn;
      if (p.words > 0) {
        for (int w = lane; w < p.words; w += 32) bm[w] = 0u;
        __syncwarp();
        for (int e = lane; e < total; e += 32) {
          const int j = row_entry(p, row, n, e);
          if (j < 0 || j >= p.nk) {
            bad = true;
          } else {
            const uint32_t bit = 1u << (j & 31);
            if (atomicOr(bm + (j >> 5), bit) & bit) bad = true;
          }
        }
        __syncwarp();  // every lane's atomics are done before the next row clears the bitmap
      } else {
        for (int e = lane; e < total; e += 32) {
          const int j = row_entry(p, row, n, e);
          if (j < 0 || j >= p.nk) bad = true;
          for (int f = 0; f < e && !bad; ++f) bad = row_entry(p, row, n, f) == j;
        }
      }
    }
    if (__any_sync(0xFFFFFFFFu, bad) && lane == 0) {
      p.flags[row / p.nq] = 1;  // every writer stores the same value
      p.flags[p.any_slot] = 1;
    }
  }
}

// The counts the main kernels read: the caller's, or 0 for every row of a flagged head.
__global__ void __launch_bounds__(kCheckThreads)
    checked_counts_kernel(const int32_t* count, const int32_t* negl_count, const int32_t* flags, int32_t* out,
                          int32_t* negl_out, int64_t rows, int nq) {
  for (int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; x < rows;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const bool bad = __ldg(flags + x / nq) != 0;
    out[x] = bad ? 0 : __ldg(count + x);
    if (negl_out != nullptr) negl_out[x] = bad ? 0 : __ldg(negl_count + x);
  }
}

struct PoisonParams {
  unsigned char* ptr;
  int64_t stride_b, stride_h, stride_r;  // elements
  int64_t rows, cols;
  const int32_t* flags;
  int64_t flag_stride;  // 1: one flag per (b, h); 0: one flag for the whole tensor
  uint32_t nan_bits;
  int elem_bytes;  // 2 or 4
};

// Grid (H, B); a CTA whose flag is clear returns at once, so a good map costs one tiny launch per output.
__global__ void __launch_bounds__(kPoisonThreads) poison_kernel(PoisonParams p) {
  const int64_t h = blockIdx.x, b = blockIdx.y;
  const int64_t bh = b * gridDim.x + h;
  if (__ldg(p.flags + bh * p.flag_stride) == 0) return;
  const int64_t n = p.rows * p.cols;
  for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
    const int64_t r = e / p.cols, c = e - r * p.cols;
    const int64_t off = b * p.stride_b + h * p.stride_h + r * p.stride_r + c;
    if (p.elem_bytes == 4) {
      reinterpret_cast<uint32_t*>(p.ptr)[off] = p.nan_bits;
    } else {
      reinterpret_cast<uint16_t*>(p.ptr)[off] = static_cast<uint16_t>(p.nan_bits);
    }
  }
}

unsigned grid_for(int64_t items, int per_cta) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(kMaxCtas, (items + per_cta - 1) / per_cta)));
}

TensorView table_view(int32_t* data, std::initializer_list<int64_t> shape, const TensorView& like) {
  return make_view(data, DType::i32, shape, like.device, like.device_index);
}

Status poison(const TensorView& t, const int32_t* flags, int64_t flag_stride, unsigned heads, unsigned batch,
              cudaStream_t stream) {
  if (!t.present()) return Status::Ok();
  PoisonParams pp;
  pp.ptr = static_cast<unsigned char*>(t.data);
  pp.flags = flags;
  pp.flag_stride = flag_stride;
  switch (t.dtype) {
    case DType::f32:
      pp.nan_bits = 0x7FC00000u;
      pp.elem_bytes = 4;
      break;
    case DType::bf16:
      pp.nan_bits = 0x7FC0u;
      pp.elem_bytes = 2;
      break;
    case DType::f16:
      pp.nan_bits = 0x7E00u;
      pp.elem_bytes = 2;
      break;
    default: return Status::Unsupported(std::string("poison: unexpected dtype ") + dtype_name(t.dtype));
  }
  if (flag_stride == 0) {  // the whole (contiguous) tensor as one row
    pp.stride_b = pp.stride_h = 0;
    pp.stride_r = 1;
    pp.rows = t.numel();
    pp.cols = 1;
  } else {
    pp.stride_b = t.stride[0];
    pp.stride_h = t.stride[1];
    pp.stride_r = t.stride[2];
    pp.rows = t.shape[2];
    pp.cols = t.ndim == 4 ? t.shape[3] : 1;
  }
  poison_kernel<<<dim3(heads, batch), kPoisonThreads, 0, stream>>>(pp);
  return check_launch("poison_kernel");
}

}  // namespace

CheckedMap carve_map_check(const Problem& p, bool rebuild_inverse, WorkspaceCarver& ws) {
  const int64_t bh = p.batch * p.heads, nq = p.map.q_blocks, nk = p.map.k_blocks;
  const bool negl = p.map.negligible > 0;
  CheckedMap c;
  c.heads = p.heads;
  c.any_slot = bh;
  c.flags = ws.take<int32_t>(static_cast<std::size_t>(bh + 1));
  c.count = ws.take<int32_t>(static_cast<std::size_t>(bh * nq));
  if (negl) c.negl_count = ws.take<int32_t>(static_cast<std::size_t>(bh * nq));
  if (rebuild_inverse) {
    c.inv_offset = ws.take<int32_t>(static_cast<std::size_t>(bh * (nk + 1)));
    c.inv_index = ws.take<int32_t>(static_cast<std::size_t>(bh * nq * p.map.critical));
    if (negl) {
      c.negl_inv_offset = ws.take<int32_t>(static_cast<std::size_t>(bh * (nk + 1)));
      c.negl_inv_index = ws.take<int32_t>(static_cast<std::size_t>(bh * nq * p.map.negligible));
    }
  }
  return c;
}

Status launch_map_check(const Problem& p, const BlockMap& map, CheckedMap* c, cudaStream_t stream) {
  const int64_t bh = p.batch * p.heads, nq = p.map.q_blocks, nk = p.map.k_blocks;
  const int64_t rows = bh * nq;
  const bool negl = p.map.negligible > 0;
  const cudaError_t e = cudaMemsetAsync(c->flags, 0, static_cast<std::size_t>(bh + 1) * sizeof(int32_t), stream);
  if (e != cudaSuccess) return device_error("cudaMemsetAsync(block-map check flags)", e);

  CheckParams cp;
  cp.lut = static_cast<const int32_t*>(map.lut.data);
  cp.count = static_cast<const int32_t*>(map.count.data);
  cp.negl_lut = negl ? static_cast<const int32_t*>(map.negl_lut.data) : nullptr;
  cp.negl_count = negl ? static_cast<const int32_t*>(map.negl_count.data) : nullptr;
  cp.flags = c->flags;
  cp.rows = rows;
  cp.any_slot = bh;
  cp.nq = static_cast<int>(nq);
  cp.nk = static_cast<int>(nk);
  cp.t = static_cast<int>(p.map.critical);
  cp.tn = static_cast<int>(p.map.negligible);
  const int64_t words = (nk + 31) / 32;
  int warps = kCheckThreads / 32;
  while (warps > 1 && static_cast<std::size_t>(warps * words * 4) > kBitmapSmemLimit) warps /= 2;
  const bool bitmap = static_cast<std::size_t>(warps * words * 4) <= kBitmapSmemLimit;
  cp.words = bitmap ? static_cast<int>(words) : 0;
  const std::size_t smem = bitmap ? static_cast<std::size_t>(warps * words * 4) : 0;
  check_rows_kernel<<<grid_for(rows, warps), warps * 32, smem, stream>>>(cp);
  SLA_RETURN_IF_ERROR(check_launch("check_rows_kernel"));

  checked_counts_kernel<<<grid_for(rows, kCheckThreads), kCheckThreads, 0, stream>>>(
      cp.count, cp.negl_count, c->flags, c->count, c->negl_count, rows, cp.nq);
  SLA_RETURN_IF_ERROR(check_launch("checked_counts_kernel"));

  const TensorView& like = map.lut;
  BlockMap m = map;
  m.count = table_view(c->count, {p.batch, p.heads, nq}, like);
  if (negl) m.negl_count = table_view(c->negl_count, {p.batch, p.heads, nq}, like);
  if (c->inv_offset != nullptr) {
    m.inv_offset = table_view(c->inv_offset, {p.batch, p.heads, nk + 1}, like);
    m.inv_index = table_view(c->inv_index, {p.batch, p.heads, nq * p.map.critical}, like);
    if (negl) {
      m.negl_inv_offset = table_view(c->negl_inv_offset, {p.batch, p.heads, nk + 1}, like);
      m.negl_inv_index = table_view(c->negl_inv_index, {p.batch, p.heads, nq * p.map.negligible}, like);
    }
    SLA_RETURN_IF_ERROR(launch_invert_block_map(p, m, stream));
  }
  c->map = m;
  return Status::Ok();
}

Status launch_poison_heads(const CheckedMap& c, const TensorView& t, cudaStream_t stream) {
  const int64_t batch = t.present() ? t.shape[0] : 0;
  return poison(t, c.flags, 1, static_cast<unsigned>(c.heads), static_cast<unsigned>(batch), stream);
}

Status launch_poison_if_any(const CheckedMap& c, const TensorView& t, cudaStream_t stream) {
  if (!t.present()) return Status::Ok();
  // One CTA covers the tensor (dW, db: at most Dv x Dv elements).
  return poison(t, c.flags + c.any_slot, 0, 1, 1, stream);
}

}  // namespace sla::cuda
