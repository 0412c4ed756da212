// Launchers of the sparse-branch kernels (SPEC.md section 5): the dQ pass over each query block's LUT and the
// dK/dV pass over each key block's inverse LUT. Both finish with the linear branch's share of the gradients, in
// registers, and write dq, dk, dv once, in the input dtype. They need the outputs of linear_bwd.h's stages.
#pragma once

#include <cuda_runtime.h>

#include "cuda/bwd/bwd_params.h"
#include "sla/sla.h"

namespace sla::cuda::bwd {

// Tensor-core kernels (mma.sync m16n8k16), bq and bk in {64, 128}: sparse_dq.cu and sparse_dkdv.cu.
Status launch_dq_mma(const BwdParams& p, DType dtype, FeatureMap fm, cudaStream_t stream);
Status launch_dkdv_mma(const BwdParams& p, DType dtype, FeatureMap fm, cudaStream_t stream);

}  // namespace sla::cuda::bwd
