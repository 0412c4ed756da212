// The torch ops of the `sla` library, written once for every device. The device files (ops_cpu.cpp, ops_cuda.cpp)
// register thin wrappers that pick the stream (and, on CUDA, the current device) and call these.
//
// Block-map tables travel as eight int32 tensors, always in this order:
//   lut (B,H,Nq,T), count (B,H,Nq), negl_lut (B,H,Nq,Tn), negl_count (B,H,Nq),
//   inv_offset (B,H,Nk+1), inv_index (B,H,Nq*T), negl_inv_offset (B,H,Nk+1), negl_inv_index (B,H,Nq*Tn).
// A table the problem does not have (the negligible ones when Tn == 0, the inverse ones when only inference was
// asked for) is an empty tensor of shape (B,H,0) or (B,H,Nq,0); the library sees it as absent (lut itself is always
// passed on, so that an empty one gets the library's message about T).
// forward and backward take the widths from the tables: T = lut.size(3), Tn = negl_lut.size(3) (0: absent); the ops
// have no topk or negligible argument (block_map's decide the widths of the tables it makes).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace sla_torch {

using BlockMapTensors =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using InverseTensors = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// o, lse, o_lin, lin_h, lin_z, o_sparse
using ForwardTensors = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using BackwardTensors = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// `stream` is the cudaStream_t to launch on (nullptr for CPU tensors).
// The adaptive-rule arguments follow ops_schema.cpp (docs/BLOCK_MAP.md).
BlockMapTensors block_map(const at::Tensor& q, const at::Tensor& k, int64_t block_q, int64_t block_k, double topk,
                          double negligible, c10::string_view variant, bool with_inverse,
                          c10::ArrayRef<double> head_topk, double top_p, c10::ArrayRef<double> head_top_p,
                          int64_t min_blocks, int64_t max_blocks, double negligible_threshold, double max_negligible,
                          double scale, void* stream);

InverseTensors invert_block_map(const at::Tensor& lut, const at::Tensor& count, const at::Tensor& negl_lut,
                                const at::Tensor& negl_count, int64_t k_blocks, void* stream);

void check_block_map(const at::Tensor& lut, const at::Tensor& count, const at::Tensor& negl_lut,
                     const at::Tensor& negl_count, const at::Tensor& inv_offset, const at::Tensor& inv_index,
                     const at::Tensor& negl_inv_offset, const at::Tensor& negl_inv_index, int64_t k_blocks);

ForwardTensors forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const c10::optional<at::Tensor>& proj_weight, const c10::optional<at::Tensor>& proj_bias,
                       const at::Tensor& lut, const at::Tensor& count, const at::Tensor& negl_lut,
                       const at::Tensor& negl_count, const at::Tensor& inv_offset, const at::Tensor& inv_index,
                       const at::Tensor& negl_inv_offset, const at::Tensor& negl_inv_index, int64_t block_q,
                       int64_t block_k, c10::string_view variant, c10::string_view feature_map, double scale,
                       double eps, bool save_for_backward, void* stream);

BackwardTensors backward(const at::Tensor& grad_o, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const c10::optional<at::Tensor>& proj_weight, const c10::optional<at::Tensor>& proj_bias,
                         const at::Tensor& lut, const at::Tensor& count, const at::Tensor& negl_lut,
                         const at::Tensor& negl_count, const at::Tensor& inv_offset, const at::Tensor& inv_index,
                         const at::Tensor& negl_inv_offset, const at::Tensor& negl_inv_index, const at::Tensor& o,
                         const at::Tensor& lse, const at::Tensor& o_lin, const at::Tensor& lin_h,
                         const at::Tensor& lin_z, const at::Tensor& o_sparse, int64_t block_q, int64_t block_k,
                         c10::string_view variant, c10::string_view feature_map, double scale, double eps,
                         void* stream);

}  // namespace sla_torch
