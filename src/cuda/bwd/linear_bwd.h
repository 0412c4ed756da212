// Launchers of the backward pass's linear-branch and projection stages (linear_bwd.cu). Each enqueues on `stream`
// and checks the launch without synchronising.
#pragma once

#include <cuda_runtime.h>

#include "cuda/bwd/bwd_params.h"
#include "sla/sla.h"

namespace sla::cuda::bwd {

// G = W H^T per (b, h) or, complement, per query block (g_split), when W is present.
Status launch_gmat(const BwdParams& p, cudaStream_t stream);

// Per query row: Delta_r, D_r, 1/n_r; per row chunk (or query block): partial E, dz, db.
Status launch_row_prep(const BwdParams& p, DType dtype, FeatureMap fm, cudaStream_t stream);

// dH, dz per key group (dh_split, dz_key) from the partials (complement: through the transposed mask's selection
// GEMM); d_proj_weight and d_proj_bias when requested.
Status launch_linear_reductions(const BwdParams& p, DType dtype, cudaStream_t stream);

// out[g, e] = sum over c in [0, parts) of in[g * parts + c, e] in increasing c (a fixed-order reduction), g < groups,
// e < n.
Status launch_sum_partials(const float* in, float* out, int64_t groups, int parts, int64_t n, cudaStream_t stream);

}  // namespace sla::cuda::bwd
