// Which GPUs a CUDA build can run on. Host-only (no CUDA headers) so that the rule is unit-tested on machines
// without a GPU or a CUDA toolkit.
#pragma once

#include <string>

namespace sla {

// True when one entry of `archs` (a comma- or semicolon-separated SLA_CUDA_ARCHS list such as "80,90a") has machine
// code that a GPU of compute capability major.minor runs. The build embeds no PTX, so nothing is JIT-compiled:
// sm_XY code runs on X.y for y >= Y, and an arch-specific target (90a) only on exactly X.Y.
bool cuda_archs_run_on(const std::string& archs, int major, int minor);

}  // namespace sla
