// Which mainloop the forward and dQ launchers run on the current device (host side).
#pragma once

#include "sla/types.h"

namespace sla::cuda {

enum class MainloopKind { mma, wgmma };

// wgmma + TMA (fwd/mainloop_sm90.cuh, bwd/sparse_dq_sm90.cuh) on a compute capability 9.0 device when the build
// includes sm_90a, mma.sync + cp.async otherwise. The environment variable SLA_CUDA_MAINLOOP=mma|wgmma|auto (read
// once) forces a choice, for A/B timing and for testing the sm_80 path on Hopper; forcing wgmma where it cannot run
// is an error, never a silent fallback.
Status select_mainloop(MainloopKind* out);

}  // namespace sla::cuda
