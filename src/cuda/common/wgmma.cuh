// Hopper (sm_90a) warpgroup matrix multiply: wgmma.mma_async with B read straight from shared memory through a
// matrix descriptor, and the 128-byte-swizzled "panel" tile layout those descriptors describe.
//
// Panel layout of a [rows][cols] b16 tile (cols a multiple of 64): the columns are cut into panels of 64 (128 bytes
// per row); panel p is a contiguous block of rows x 128 bytes; in it, 16-byte chunk c of row r sits at chunk
// c ^ (r % 8). With every panel 1024-byte aligned this is exactly the hardware's 128-byte swizzle (address bits 4-6
// XOR bits 7-9), so one descriptor covers:
//   - a K-major operand (K = the columns: K for S = Q K^T): 8-row groups 1024 bytes apart (SBO), a k16 step is +32
//     bytes inside the panel, the next panel after four steps;
//   - an N-major operand (N = the columns: V for O = P V, kTransB): panels LBO = rows x 128 bytes apart, 8-row groups
//     (the K direction) SBO = 1024 bytes apart, a k16 step is +16 rows = +2048 bytes.
// The wrappers compile to a trap outside sm_90a; the launcher only picks Hopper kernels whose binary is sm_90.
#pragma once

#include <cstdint>

#include "cuda/common/ptx.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SLA_WGMMA_ENABLED 1
#else
#define SLA_WGMMA_ENABLED 0
#endif

namespace sla::cuda {

constexpr int kPanelCols = 64;        // b16 elements per panel row (128 bytes)
constexpr int kPanelRowBytes = 128;

// Byte offset of 16-byte chunk `chunk` (of the whole row) of row `row` in a panel tile of `rows` rows.
__device__ __forceinline__ uint32_t panel_offset(int rows, int row, int chunk) {
  return static_cast<uint32_t>((chunk >> 3) * rows * kPanelRowBytes + row * kPanelRowBytes +
                               (((chunk & 7) ^ (row & 7)) << 4));
}

// cp.async of a kRows x kCols tile (rows r >= valid_rows zero-filled, never read) into the panel layout.
template <int kRows, int kCols, int kThreads>
__device__ __forceinline__ void load_panel_tile_async(uint32_t smem, const uint16_t* gmem, int64_t row_stride,
                                                      int valid_rows, int tid) {
  constexpr int kChunks = kCols / 8;
  constexpr int kTotal = kRows * kChunks;
  static_assert(kCols % kPanelCols == 0, "panel tiles need a multiple of 64 columns");
  static_assert(kTotal % kThreads == 0, "tile chunks must divide evenly among the threads");
#pragma unroll
  for (int it = 0; it < kTotal / kThreads; ++it) {
    const int idx = it * kThreads + tid;
    const int row = idx / kChunks, chunk = idx % kChunks;
    const bool valid = row < valid_rows;
    const uint16_t* src = gmem + (valid ? row * row_stride : 0) + chunk * 8;  // clamped for zero-filled rows
    cp_async_16(smem + panel_offset(kRows, row, chunk), src, valid);
  }
}

// Shared-memory matrix descriptor (PTX ISA "Matrix Descriptor Format"), 128-byte swizzle: start address, leading
// and stride byte offsets, all in 16-byte units; base offset 0 (every panel is 1024-byte aligned).
__device__ __forceinline__ uint64_t smem_desc_sw128(uint32_t addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFF) << 16) |
         (static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFF) << 32) | (1ull << 62);
}
// The descriptor of the same layout `bytes` further on (bytes a multiple of 16, inside the 256 KB window).
__device__ __forceinline__ uint64_t desc_advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

// Orders this thread's earlier register writes before the warpgroup's next wgmma reads them (accumulators, A).
__device__ __forceinline__ void wgmma_fence() {
#if SLA_WGMMA_ENABLED
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if SLA_WGMMA_ENABLED
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}
// Waits until at most N committed wgmma groups of this warpgroup are pending.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if SLA_WGMMA_ENABLED
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#else
  __trap();
#endif
}
// Makes this thread's generic-proxy shared-memory writes (st.shared, cp.async) visible to the async proxy that
// wgmma reads its descriptor operands through; pair with a barrier.
__device__ __forceinline__ void fence_proxy_async_smem() {
#if SLA_WGMMA_ENABLED
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Keeps the compiler from moving reads or writes of an accumulator register across a wgmma issue / wait.
__device__ __forceinline__ void reg_fence(float& r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void reg_fence(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }
// The same for every register of a warp's accumulator tiles (kN n-tiles of 4 floats).
template <int kN>
__device__ __forceinline__ void fence_regs(float (&acc)[kN][4]) {
#pragma unroll
  for (int i = 0; i < kN; ++i) {
    reg_fence(acc[i][0]);
    reg_fence(acc[i][1]);
    reg_fence(acc[i][2]);
    reg_fence(acc[i][3]);
  }
}

#if SLA_WGMMA_ENABLED
#include "cuda/common/wgmma_rs.inc"
#else
template <bool kTransB, int kN, class Tag>
__device__ __forceinline__ void wgmma_rs(float (&)[kN][4], const uint32_t (&)[4], uint64_t, bool, Tag) {
  __trap();
}
template <int kN, class Tag>
__device__ __forceinline__ void wgmma_ss(float (&)[kN][4], uint64_t, uint64_t, bool, Tag) {
  __trap();
}
#endif

}  // namespace sla::cuda
