// CPU kernels of the `sla` torch ops: the library's CPU backend, on torch's intra-op thread count.
#include <torch/library.h>

#include "ops.h"

namespace sla_torch {
namespace {

BlockMapTensors block_map_cpu(const at::Tensor& q, const at::Tensor& k, int64_t block_q, int64_t block_k, double topk,
                              double negligible, c10::string_view variant, bool with_inverse,
                              c10::ArrayRef<double> head_topk, double top_p, c10::ArrayRef<double> head_top_p,
                              int64_t min_blocks, int64_t max_blocks, double negligible_threshold,
                              double max_negligible, double scale) {
  return block_map(q, k, block_q, block_k, topk, negligible, variant, with_inverse, head_topk, top_p, head_top_p,
                   min_blocks, max_blocks, negligible_threshold, max_negligible, scale, nullptr);
}

InverseTensors invert_block_map_cpu(const at::Tensor& lut, const at::Tensor& count, const at::Tensor& negl_lut,
                                    const at::Tensor& negl_count, int64_t k_blocks) {
  return invert_block_map(lut, count, negl_lut, negl_count, k_blocks, nullptr);
}

ForwardTensors forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const c10::optional<at::Tensor>& proj_weight, const c10::optional<at::Tensor>& proj_bias,
                           const at::Tensor& lut, const at::Tensor& count, const at::Tensor& negl_lut,
                           const at::Tensor& negl_count, const at::Tensor& inv_offset, const at::Tensor& inv_index,
                           const at::Tensor& negl_inv_offset, const at::Tensor& negl_inv_index, int64_t block_q,
                           int64_t block_k, c10::string_view variant, c10::string_view feature_map, double scale,
                           double eps, bool save_for_backward) {
  return forward(q, k, v, proj_weight, proj_bias, lut, count, negl_lut, negl_count, inv_offset, inv_index,
                 negl_inv_offset, negl_inv_index, block_q, block_k, variant, feature_map, scale, eps, save_for_backward,
                 nullptr);
}

BackwardTensors backward_cpu(const at::Tensor& grad_o, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const c10::optional<at::Tensor>& proj_weight, const c10::optional<at::Tensor>& proj_bias,
                             const at::Tensor& lut, const at::Tensor& count, const at::Tensor& negl_lut,
                             const at::Tensor& negl_count, const at::Tensor& inv_offset, const at::Tensor& inv_index,
                             const at::Tensor& negl_inv_offset, const at::Tensor& negl_inv_index, const at::Tensor& o,
                             const at::Tensor& lse, const at::Tensor& o_lin, const at::Tensor& lin_h,
                             const at::Tensor& lin_z, const at::Tensor& o_sparse, int64_t block_q, int64_t block_k,
                             c10::string_view variant, c10::string_view feature_map, double scale, double eps) {
  return backward(grad_o, q, k, v, proj_weight, proj_bias, lut, count, negl_lut, negl_count, inv_offset, inv_index,
                  negl_inv_offset, negl_inv_index, o, lse, o_lin, lin_h, lin_z, o_sparse, block_q, block_k, variant,
                  feature_map, scale, eps, nullptr);
}

}  // namespace

TORCH_LIBRARY_IMPL(sla, CPU, m) {
  m.impl("block_map", &block_map_cpu);
  m.impl("invert_block_map", &invert_block_map_cpu);
  m.impl("check_block_map", &check_block_map);
  m.impl("forward", &forward_cpu);
  m.impl("backward", &backward_cpu);
}

}  // namespace sla_torch
