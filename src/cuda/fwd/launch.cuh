// Definition of launch_forward_main, included only by the instantiation files fwd/instantiations/forward_*.cu.
#pragma once

#include <string>

#include "cuda/common/cuda_status.h"
#include "cuda/fwd/kernel.cuh"
#include "cuda/fwd/launch.h"
#include "cuda/fwd/tile_scheduler.cuh"
#include "cuda/mainloop_select.h"
#include "cuda/tma.h"

namespace sla::cuda::fwd {

template <class Traits>
Status launch_traits(const ForwardParams& p, cudaStream_t stream) {
  auto kernel = forward_kernel<Traits>;
  if (Traits::kSmemBytes > 48 * 1024) {
    if (Status st = set_dynamic_smem(kernel, Traits::kSmemBytes, "forward_kernel"); !st.ok()) return st;
  }
  kernel<<<QueryBlockScheduler::grid(p), Traits::kThreads, Traits::kSmemBytes, stream>>>(p);
  return check_launch("forward_kernel");
}

template <class T, int kD, int kBQ, int kBK>
Status launch_tile(const ForwardParams& p, cudaStream_t stream) {
  MainloopKind kind = MainloopKind::mma;
  if (Status st = select_mainloop(&kind); !st.ok()) return st;
  if (kind == MainloopKind::wgmma) {
    // The wgmma mainloop gathers K and V through tensor maps. Strides the driver cannot describe (possible only for
    // unusual views) take the mma.sync mainloop, which reads any 16-byte aligned rows.
    ForwardParams pt = p;
    if (make_panel_tensor_map(&pt.tma_k, p.k, p.batch, p.heads, p.lk, kD, kBK, "k").ok() &&
        make_panel_tensor_map(&pt.tma_v, p.v, p.batch, p.heads, p.lk, kD, kBK, "v").ok()) {
      return launch_traits<ForwardTraits<T, kD, kBQ, kBK, true>>(pt, stream);
    }
  }
  return launch_traits<ForwardTraits<T, kD, kBQ, kBK, false>>(p, stream);
}

template <class T, int kD>
Status launch_forward_main(const ForwardParams& p, int block_q, int block_k, cudaStream_t stream) {
  if (block_q == 64 && block_k == 64) return launch_tile<T, kD, 64, 64>(p, stream);
  if (block_q == 64 && block_k == 128) return launch_tile<T, kD, 64, 128>(p, stream);
  if (block_q == 128 && block_k == 64) return launch_tile<T, kD, 128, 64>(p, stream);
  if (block_q == 128 && block_k == 128) return launch_tile<T, kD, 128, 128>(p, stream);
  return Status::Unsupported("forward: block sizes (" + std::to_string(block_q) + ", " + std::to_string(block_k) +
                             ") are not built; expected 64 or 128 each");
}

}  // namespace sla::cuda::fwd
