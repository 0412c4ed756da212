// Launchers of the sparse-branch kernels (docs/SPEC.md section 5): the dQ pass over each query block's LUT and the
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

// Tensor maps of K and V for the Hopper kernels' gathers (boxes of 64 keys x 64 columns, cuda/tma.h).
struct KvTensorMaps {
  TmaDescriptor k, v;
};
// dQ on wgmma + TMA (sm_90a), bq in {64, 128}: sparse_dq_sm90.cu.
Status launch_dq_wgmma(const BwdParams& p, const KvTensorMaps& maps, DType dtype, FeatureMap fm, cudaStream_t stream);
// dQ on the mainloop cuda/mainloop_select.h picks for the current device.
Status launch_dq(const BwdParams& p, DType dtype, FeatureMap fm, cudaStream_t stream);

// Tensor maps of Q and dO for the Hopper dK/dV kernel (boxes of 64 query rows x 64 columns).
struct QdoTensorMaps {
  TmaDescriptor q, d_o;
};
// dK, dV on wgmma + TMA (sm_90a), bk in {64, 128}: sparse_dkdv_sm90.cu.
Status launch_dkdv_wgmma(const BwdParams& p, const QdoTensorMaps& maps, DType dtype, FeatureMap fm,
                         cudaStream_t stream);
// dK, dV on the mainloop cuda/mainloop_select.h picks for the current device.
Status launch_dkdv(const BwdParams& p, DType dtype, FeatureMap fm, cudaStream_t stream);

}  // namespace sla::cuda::bwd
