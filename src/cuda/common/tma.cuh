// Hopper (sm_90a) asynchronous copies and their barriers: mbarrier wait / arrive with transaction counts and the
// bulk tensor copy (TMA) of one box of a tensor map into shared memory. Compiled to traps outside sm_90a, like
// cuda/common/wgmma.cuh.
#pragma once

#include <cstdint>

#include "cuda/common/params.h"
#include "cuda/common/wgmma.cuh"

namespace sla::cuda {

__device__ __forceinline__ void mbarrier_init(uint32_t bar, uint32_t count) {
#if SLA_WGMMA_ENABLED
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#else
  __trap();
#endif
}
// Makes initialised barriers visible to the async proxy (the TMA unit); pair with a CTA barrier.
__device__ __forceinline__ void mbarrier_init_fence() {
#if SLA_WGMMA_ENABLED
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mbarrier_arrive(uint32_t bar) {
#if SLA_WGMMA_ENABLED
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#else
  __trap();
#endif
}
// Arrives and adds `bytes` to the transaction count the current phase waits for.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
#if SLA_WGMMA_ENABLED
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#else
  __trap();
#endif
}
// Blocks until the phase with the given parity has completed.
__device__ __forceinline__ void mbarrier_wait(uint32_t bar, uint32_t parity) {
#if SLA_WGMMA_ENABLED
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
#else
  __trap();
#endif
}

// Copies the box at coordinates (c0 innermost .. c3) of a 4-d tensor map into shared memory at `dst` (aligned to
// the swizzle span: 1024 bytes for 128-byte swizzling); completion adds the box's bytes to `bar`'s transactions.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const TmaDescriptor* map, uint32_t bar, int c0, int c1, int c2,
                                            int c3) {
#if SLA_WGMMA_ENABLED
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
#else
  __trap();
#endif
}

}  // namespace sla::cuda
