// Host-side entry of the forward main kernel: one explicit instantiation per (dtype, head dim) in its own .cu file
// (fwd/instantiations/, written by scripts/gen_kernels.py).
#pragma once

#include <cuda_runtime.h>

#include "cuda/common/params.h"
#include "sla/types.h"

namespace sla::cuda::fwd {

// Launches the main kernel for block sizes (block_q, block_k) in {64, 128}^2 on `stream`.
template <class T, int kD>
Status launch_forward_main(const ForwardParams& p, int block_q, int block_k, cudaStream_t stream);

}  // namespace sla::cuda::fwd
