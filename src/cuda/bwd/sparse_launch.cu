// The backward's sparse passes: which kernel runs (mainloop_select.h), with what tensor maps, for which instantiation
// (dtype and head dim switches; the kernels are instantiated one per file under bwd/instantiations/).
#include <cuda_runtime.h>

#include "cuda/build_switch.h"
#include "cuda/bwd/sparse_bwd.h"
#include "cuda/mainloop_select.h"
#include "cuda/tma.h"

namespace sla::cuda::bwd {

Status launch_dq(const BwdParams& p, DType dtype, FeatureMap fm, cudaStream_t stream) {
  MainloopKind kind = MainloopKind::mma;
  if (Status st = select_mainloop(&kind); !st.ok()) return st;
  // As the forward: strides the driver cannot describe in a tensor map take the mma.sync kernel.
  KvTensorMaps maps;
  const bool wgmma = kind == MainloopKind::wgmma &&
                     make_panel_tensor_map(&maps.k, p.k, p.batch, p.heads, p.lk, p.d, 64, "k").ok() &&
                     make_panel_tensor_map(&maps.v, p.v, p.batch, p.heads, p.lk, p.dv, 64, "v").ok();
  return SLA_CUDA_DTYPE_SWITCH(dtype, T, "backward", [&] {
    return SLA_CUDA_HEADDIM_SWITCH(p.d, D, "backward", [&] {
      return wgmma ? launch_dq_wgmma<T, D>(p, maps, fm, stream) : launch_dq_mma<T, D>(p, fm, stream);
    });
  });
}

Status launch_dkdv(const BwdParams& p, DType dtype, FeatureMap fm, cudaStream_t stream) {
  MainloopKind kind = MainloopKind::mma;
  if (Status st = select_mainloop(&kind); !st.ok()) return st;
  QdoTensorMaps maps;
  const bool wgmma = kind == MainloopKind::wgmma &&
                     make_panel_tensor_map(&maps.q, p.q, p.batch, p.heads, p.lq, p.d, 64, "q").ok() &&
                     make_panel_tensor_map(&maps.d_o, p.d_o, p.batch, p.heads, p.lq, p.dv, 64, "d_o").ok();
  return SLA_CUDA_DTYPE_SWITCH(dtype, T, "backward", [&] {
    return SLA_CUDA_HEADDIM_SWITCH(p.d, D, "backward", [&] {
      return wgmma ? launch_dkdv_wgmma<T, D>(p, maps, fm, stream) : launch_dkdv_mma<T, D>(p, fm, stream);
    });
  });
}

}  // namespace sla::cuda::bwd
