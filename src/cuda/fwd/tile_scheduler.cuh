// Which tile a CTA of the forward main kernel computes: one CTA per (query block, head, batch), query blocks fastest,
// so that the CTAs resident together read the K/V blocks of one head from L2. The grid and the kernel both ask this
// type, so a different order (persistent CTAs, another swizzle) changes one file.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/params.h"

namespace sla::cuda::fwd {

struct QueryBlockScheduler {
  struct Tile {
    int q_block;
    int64_t head, batch;
  };

  static dim3 grid(const ForwardParams& p) {
    return dim3(static_cast<unsigned>(p.nq), static_cast<unsigned>(p.heads), static_cast<unsigned>(p.batch));
  }

  static __device__ __forceinline__ Tile tile() {
    return {static_cast<int>(blockIdx.x), static_cast<int64_t>(blockIdx.y), static_cast<int64_t>(blockIdx.z)};
  }
};

}  // namespace sla::cuda::fwd
