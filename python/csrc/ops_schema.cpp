// Schemas of the `sla` torch ops (torch.ops.sla.*). python/sla/_fake.py gives every op its shape function and
// python/sla/_autograd.py connects `forward` to `backward`; ops.h describes the block-map tables.
// block_map's trailing arguments (with defaults) are the adaptive rules of docs/BLOCK_MAP.md: top_p > 0 or a
// non-empty head_top_p selects the top_p rule.
#include <torch/library.h>

#define SLA_MAP_TABLES                                                                                  \
  "Tensor lut, Tensor count, Tensor negl_lut, Tensor negl_count, Tensor inv_offset, Tensor inv_index, " \
  "Tensor negl_inv_offset, Tensor negl_inv_index"

// The options of forward and backward. No topk or negligible: the table widths T and Tn are the last dimensions of
// lut and negl_lut (block_map's topk and negligible decide them when it makes the map).
#define SLA_CONFIG "int block_q, int block_k, str variant, str feature_map, float scale, float eps"

TORCH_LIBRARY(sla, m) {
  m.def(
      "block_map(Tensor q, Tensor k, int block_q, int block_k, float topk, float negligible, str variant, "
      "bool with_inverse, float[] head_topk=[], float top_p=0., float[] head_top_p=[], int min_blocks=1, "
      "int max_blocks=0, float negligible_threshold=0., float max_negligible=0., float scale=0.) -> (Tensor lut, "
      "Tensor count, Tensor negl_lut, Tensor negl_count, Tensor inv_offset, "
      "Tensor inv_index, Tensor negl_inv_offset, Tensor negl_inv_index)");
  m.def(
      "invert_block_map(Tensor lut, Tensor count, Tensor negl_lut, Tensor negl_count, int k_blocks) -> "
      "(Tensor inv_offset, Tensor inv_index, Tensor negl_inv_offset, Tensor negl_inv_index)");
  // Host check of a map's contents (include/sla/sla.h, check_block_map); CPU tables only, raises on the first
  // problem. sla.check_block_map copies device tables to the host first.
  m.def("check_block_map(" SLA_MAP_TABLES ", int k_blocks) -> ()");
  m.def("forward(Tensor q, Tensor k, Tensor v, Tensor? proj_weight, Tensor? proj_bias, " SLA_MAP_TABLES ", " SLA_CONFIG
        ", bool save_for_backward) -> "
        "(Tensor o, Tensor lse, Tensor o_lin, Tensor lin_h, Tensor lin_z, Tensor o_sparse)");
  m.def("backward(Tensor grad_o, Tensor q, Tensor k, Tensor v, Tensor? proj_weight, Tensor? proj_bias, " SLA_MAP_TABLES
        ", Tensor o, Tensor lse, Tensor o_lin, Tensor lin_h, Tensor lin_z, Tensor o_sparse, " SLA_CONFIG
        ") -> (Tensor dq, Tensor dk, Tensor dv, Tensor d_proj_weight, Tensor d_proj_bias)");
}
