// Entry points of the CUDA backward pass (docs/SPEC.md section 5), called by src/cuda/api_cuda.cu after validation.
// Arguments are already validated by src/core/validate.cpp and cuda::check_supported.
#pragma once

#include <cstddef>

#include "core/backend.h"

namespace sla::cuda::bwd {

// Bytes of device workspace launch_backward needs (256-byte aligned pieces carved out of one buffer).
std::size_t workspace_bytes(const Problem& p, const Config& cfg);

// Enqueues the whole backward pass on (cudaStream_t)exec.stream: dQ, dK, dV and, when present, dW and db.
// Deterministic: no floating-point atomics; reductions run in a fixed order.
Status launch_backward(const Problem& p, const BackwardArgs& args, const Config& cfg, const Exec& exec);

}  // namespace sla::cuda::bwd
