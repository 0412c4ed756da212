// Launchers of the sparse-branch kernels (docs/SPEC.md section 5): the dQ pass over each query block's LUT and the
// dK/dV pass over each key block's inverse LUT. Both finish with the linear branch's share of the gradients, in
// registers, and write dq, dk, dv once, in the input dtype. They need the outputs of linear_bwd.h's stages.
#pragma once

#include <cuda_runtime.h>

#include "cuda/bwd/bwd_params.h"
#include "sla/sla.h"

namespace sla::cuda::bwd {

// dQ and dK/dV on the mainloop cuda/mainloop_select.h picks for the current device (sparse_launch.cu): wgmma + TMA
// on sm_90a, mma.sync otherwise or where a tensor map cannot describe the inputs' strides.
Status launch_dq(const BwdParams& p, DType dtype, FeatureMap fm, cudaStream_t stream);
Status launch_dkdv(const BwdParams& p, DType dtype, FeatureMap fm, cudaStream_t stream);

// Tensor maps of K and V for the Hopper dQ kernel's gathers (boxes of 64 keys x 64 columns, cuda/tma.h).
struct KvTensorMaps {
  TmaDescriptor k, v;
};
// Tensor maps of Q and dO for the Hopper dK/dV kernel (boxes of 64 query rows x 64 columns).
struct QdoTensorMaps {
  TmaDescriptor q, d_o;
};

// One launcher per kernel, element type T and head dim D, each explicitly instantiated in its own file under
// bwd/instantiations/ (written by scripts/gen_kernels.py): bq (dQ) or bk (dK/dV) in {64, 128}, any feature map.
//   sparse_dq.cuh         dQ on mma.sync m16n8k16 (sm_80+)
//   sparse_dq_sm90.cuh    dQ on wgmma + TMA (sm_90a)
//   sparse_dkdv.cuh       dK, dV on mma.sync (sm_80+)
//   sparse_dkdv_sm90.cuh  dK, dV on wgmma + TMA (sm_90a)
template <class T, int D>
Status launch_dq_mma(const BwdParams& p, FeatureMap fm, cudaStream_t stream);
template <class T, int D>
Status launch_dq_wgmma(const BwdParams& p, const KvTensorMaps& maps, FeatureMap fm, cudaStream_t stream);
template <class T, int D>
Status launch_dkdv_mma(const BwdParams& p, FeatureMap fm, cudaStream_t stream);
template <class T, int D>
Status launch_dkdv_wgmma(const BwdParams& p, const QdoTensorMaps& maps, FeatureMap fm, cudaStream_t stream);

}  // namespace sla::cuda::bwd
