// The public C++ API of SLA (Sparse-Linear Attention, arXiv 2509.24006). docs/SPEC.md is the contract.
//
// Shape of a call, CUTLASS-adapter style: the caller owns every buffer. Ask for the workspace size, hand in the
// workspace and a stream, get a Status back. The library never allocates device memory, never synchronises the
// device, never prints and never exits. The backend (CPU or CUDA) follows from the tensors' `device`.
//
// Layout: Q, K, V, O and their gradients are always described with the logical shape (B, H, L, D); any element
// strides are accepted as long as the last dimension is contiguous, so (B,H,L,D) and (B,L,H,D) memory both work
// without copies (for (B,L,H,D) memory pass shape {B,H,L,D} with strides {L*H*D, D, H*D, 1}).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "sla/config.h"
#include "sla/types.h"

namespace sla {

// Sizes of the block map of a problem: the tables predict_block_map writes for a Config. (forward and backward take
// T and Tn from the tables they are given, which may have any widths in range; see BlockMap.)
struct BlockMapShape {
  int64_t batch = 0, heads = 0;
  int64_t q_blocks = 0;    // Nq = ceil(Lq / bq)
  int64_t k_blocks = 0;    // Nk = ceil(Lk / bk)
  // Table widths (docs/BLOCK_MAP.md). Fixed rule: T = clamp(floor(topk * Nk), 1, Nk); per-head topk: the largest
  // T_h; top_p rule: max_blocks (Nk when 0) clamped to [1, Nk]. A row's own count may be smaller.
  int64_t critical = 0;  // T: LUT entries per query block
  // Tn = min(floor(k_l * Nk), Nk - T), or with the threshold rule min(floor(max_negligible * Nk), Nk - T); 0 for
  // the global variant.
  int64_t negligible = 0;
};

Status block_map_shape(int64_t batch, int64_t heads, int64_t lq, int64_t lk, const Config& cfg, BlockMapShape* out);

// The block map (docs/SPEC.md section 1). All tables are int32, contiguous, on the device of Q.
// Row (b,h,i) of `lut` holds count[b,h,i] <= T distinct key-block indices (ascending from predict_block_map); entries
// past the count are unused (check_block_map below says how a caller-supplied map is checked). The inverse tables are
// compressed rows per (b,h): the query blocks i that hold key block j in their critical set are inv_index[b,h,
// inv_offset[b,h,j] : inv_offset[b,h,j+1]], in ascending i. Only the CPU backward needs them (it reads them); the
// CUDA backward builds its own from the checked LUT in its workspace and ignores the caller's, and the forward reads
// none.
// The table widths are read from the tables: T is lut's last dimension, Tn is negl_lut's (0 when negl_lut is
// absent). predict_block_map needs the widths block_map_shape gives for its Config; forward, backward,
// invert_block_map and check_block_map accept any widths with 1 <= T <= Nk and 0 <= Tn <= Nk - T (forward and
// backward: negligible tables only with the complement variant), whatever cfg.topk and cfg.negligible say.
struct BlockMap {
  TensorView lut;         // (B, H, Nq, T)
  TensorView count;       // (B, H, Nq)
  TensorView negl_lut;    // (B, H, Nq, Tn); absent when Tn == 0
  TensorView negl_count;  // (B, H, Nq);     absent when Tn == 0
  TensorView inv_offset;  // (B, H, Nk + 1)  CPU backward only (required there; optional and unread on CUDA)
  TensorView inv_index;   // (B, H, Nq * T)  CPU backward only (required there; optional and unread on CUDA)
  // Optional, read by no backward (the complement variant's backward selects the marginal blocks with a mask
  // built from lut and negl_lut): when present, they must invert negl_lut, and the map functions fill them.
  TensorView negl_inv_offset;  // (B, H, Nk + 1)   absent when Tn == 0
  TensorView negl_inv_index;   // (B, H, Nq * Tn)  absent when Tn == 0
};

// Execution context. `stream` is a cudaStream_t for the CUDA backend (nullptr = legacy default stream) and is
// ignored on the CPU. `num_threads` is for the CPU backend only (0 = all hardware threads).
struct Exec {
  void* stream = nullptr;
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  int num_threads = 0;
};

// Predicts the block map from Q and K: smooth-K, mean pooling, scores, the critical set of every row by cfg.rule
// (fixed or per-head topk, or top_p; ties to the lower index), the negligible set (complement variant with k_l > 0
// or a negligible threshold), and the inverse tables when their views are present. Table entries past a row's
// count are set to -1.
Status predict_block_map_workspace_size(const TensorView& q, const TensorView& k, const Config& cfg,
                                        std::size_t* bytes);
Status predict_block_map(const TensorView& q, const TensorView& k, const Config& cfg, const BlockMap& map,
                         const Exec& exec);

// Fills map.inv_* (and map.negl_inv_* when present) from map.lut/count (and negl_*): for a caller-supplied LUT.
// Needs no workspace.
Status invert_block_map(const BlockMap& map, const Exec& exec);

// The contents of a block map. Every entry point checks shapes; the values are checked as follows:
//   - map.count[b,h,i] in [0, T] and map.negl_count[b,h,i] in [0, Tn];
//   - the first count entries of each row of map.lut (map.negl_lut) in [0, Nk) and distinct; any order is accepted
//     (docs/SPEC.md 7.7: permuting a row changes O only by rounding); entries past the count are never read;
//   - no key block both critical and negligible in one row;
//   - inverse tables, when given, exactly invert_block_map's output for that LUT.
// CPU tables: forward, backward and invert_block_map check them on the host and return invalid_argument naming the
// table, the row (b, h, i) and the value. CUDA tables: forward and backward check them in a kernel on the given
// stream (no host synchronisation, so graph capture keeps working); a (b, h) whose tables break a rule gets NaN in
// every output it owns (O, and the saved LSE / O_l; dQ, dK, dV), and dW and db become NaN, because they sum over
// every head; the caller's inverse tables are not read there, so their contents are not checked. Nothing reads or
// writes out of bounds whatever the tables hold. invert_block_map skips entries outside [0, Nk) and clamps counts, so
// its output from a bad LUT is checked (and rejected) again downstream. check_block_map runs the host check explicitly,
// for tables in host memory (copy device tables first): Nk is `k_blocks`; it returns ok or invalid_argument with the
// first problem found.
Status check_block_map(const BlockMap& map, int64_t k_blocks);

// Forward pass (docs/SPEC.md sections 2-4): O = O_s + O_l W^T + b.
// The accumulation type `acc` is f64 for f64 inputs and f32 otherwise. Of the Config, forward and backward read
// block_q, block_k, variant, feature_map, scale and eps (and check only those); the block-map fields (topk,
// negligible and the adaptive rules) are for predict_block_map: the widths T and Tn come from args.map's tables.
struct ForwardArgs {
  TensorView q;            // (B, H, Lq, D)
  TensorView k;            // (B, H, Lk, D)
  TensorView v;            // (B, H, Lk, Dv)
  TensorView proj_weight;  // optional (Dv, Dv), acc dtype, contiguous; absent means W = 0
  TensorView proj_bias;    // optional (Dv), acc dtype; absent means b = 0
  BlockMap map;            // lut/count (and negl_* for the complement variant) are read; T and Tn are their widths
  TensorView o;            // out (B, H, Lq, Dv), dtype of q
  // Saved for the backward pass: lse, lin_h and lin_z present together (training) or absent (inference).
  TensorView lse;          // out (B, H, Lq) acc, contiguous: natural-log LSE of the sparse branch's scaled scores
  // Optional out with the rest of the saved state: O_l before the projection, (B, H, Lq, Dv) acc, contiguous. The
  // CPU backward reads it; the CUDA backward does not (it forms D_r and dW from dO G and H), so leave it absent on
  // CUDA: it costs the forward a second D x D product per row and Lq x Dv fp32 per head.
  TensorView o_lin;
  TensorView lin_h;        // out (B, H, D, Dv) acc, contiguous: H = sum over all keys of phi(k)^T v
  TensorView lin_z;        // out (B, H, D) acc, contiguous: z = sum over all keys of phi(k)
  // Optional out, saved for the backward pass: O_s, the sparse branch's output alone, (B, H, Lq, Dv) acc,
  // contiguous. The backward's Delta_r = dO . O_s is then exact to fp32, instead of carrying the 16-bit rounding
  // of the whole output O = O_s + O_l W^T + b (or, as in FlashAttention, of O_s; docs/SPEC.md section 5).
  TensorView o_sparse;
};

Status forward_workspace_size(const ForwardArgs& args, const Config& cfg, std::size_t* bytes);
Status forward(const ForwardArgs& args, const Config& cfg, const Exec& exec);

// Backward pass (docs/SPEC.md section 5). Inputs as in forward plus the forward's outputs; the block map's T and Tn
// come from its tables, as in forward. The inverse tables (map.inv_offset, map.inv_index): the CPU backward reads
// them, so CPU tensors need them (invert_block_map fills them; an absent pair is invalid_argument); the CUDA backward
// builds its own from the checked LUT and ignores the caller's, so for CUDA tensors they may be absent (their shapes
// are still checked when given).
struct BackwardArgs {
  TensorView q, k, v;          // as in ForwardArgs
  TensorView proj_weight;      // optional, as in ForwardArgs
  TensorView proj_bias;        // optional, as in ForwardArgs
  BlockMap map;
  TensorView o;                // forward output (B, H, Lq, Dv)
  TensorView d_o;              // gradient of O, (B, H, Lq, Dv), dtype of q
  TensorView lse, lin_h, lin_z;  // saved by forward
  TensorView o_lin;              // saved by forward; required by the CPU backward, ignored by the CUDA backward
  // Optional, the forward's o_sparse (pass it: Delta_r = dO . O_s is formed from it). Without it, Delta_r is
  // dO . O (no W, no b: FlashAttention's Delta, which carries the input-dtype rounding of O) or
  // dO . (O - O_l W^T - b), which carries the rounding of the whole output: a linear part or bias much larger
  // than O_s costs dQ and dK their digits.
  TensorView o_sparse;
  TensorView dq, dk, dv;       // out, shapes and dtype of q, k, v
  TensorView d_proj_weight;    // out (Dv, Dv) acc; optional (absent: not computed)
  TensorView d_proj_bias;      // out (Dv) acc;     optional
};

Status backward_workspace_size(const BackwardArgs& args, const Config& cfg, std::size_t* bytes);
Status backward(const BackwardArgs& args, const Config& cfg, const Exec& exec);

// True when this build has the CUDA backend and a CUDA device is present.
bool cuda_available();
// One line: version, backends compiled in, CUDA archs, head dims and dtypes built.
std::string build_info();

}  // namespace sla
