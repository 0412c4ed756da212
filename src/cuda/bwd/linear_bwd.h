// Launchers of the backward pass's linear-branch and projection stages (linear_bwd.cu). Each enqueues on `stream`
// and checks the launch without synchronising.
#pragma once

#include <cuda_runtime.h>

#include "cuda/bwd/bwd_params.h"
#include "sla/sla.h"

namespace sla::cuda::bwd {

// Complement variant: H_i, z_i per query block (grp_h, grp_z) from H_all, z_all and the blocks in C_i and N_i.
Status launch_complement_states(const BwdParams& p, DType dtype, FeatureMap fm, cudaStream_t stream);

// G = W H^T per query group (g_split), when W is present.
Status launch_gmat(const BwdParams& p, cudaStream_t stream);

// Per query row: Delta_r, D_r, 1/n_r; per row chunk (or query block): partial E, dz, db.
Status launch_row_prep(const BwdParams& p, DType dtype, FeatureMap fm, cudaStream_t stream);

// dH, dz per key group (dh_split, dz_key) from the partials; d_proj_weight and d_proj_bias when requested.
Status launch_linear_reductions(const BwdParams& p, DType dtype, cudaStream_t stream);

}  // namespace sla::cuda::bwd
