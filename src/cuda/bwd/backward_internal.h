// Internal entry point of the CUDA backward pass with the choice of sparse kernels exposed, for the bring-up test
// (which checks both against the fp64 oracle). bwd::launch_backward uses the tensor-core kernels.
#pragma once

#include "cuda/bwd/backward.h"

namespace sla::cuda::bwd {

enum class SparseKernels { tensor_core, reference };

Status launch_backward_with(const Problem& p, const BackwardArgs& args, const Config& cfg, const Exec& exec,
                            SparseKernels kernels);

}  // namespace sla::cuda::bwd
