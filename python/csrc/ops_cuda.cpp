// CUDA kernels of the `sla` torch ops: the library's CUDA backend, launched on torch's current stream of the
// inputs' device. Built only when the core library has its CUDA backend (SLA_WITH_CUDA).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <initializer_list>
#include <utility>

#include "ops.h"

namespace sla_torch {
namespace {

// The dispatcher sends a call here when any argument is on CUDA: every other tensor must be on the device of the
// first (a CPU tensor among CUDA ones would otherwise reach the device guard or the kernels).
void check_same_device(std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  const char* ref_name = nullptr;
  const at::Tensor* ref = nullptr;
  for (const auto& [name, t] : tensors) {
    if (t == nullptr || !t->defined()) continue;
    if (ref == nullptr) {
      ref_name = name;
      ref = t;
    } else {
      TORCH_CHECK_VALUE(t->device() == ref->device(), name, ": expected device ", ref->device(), " like ", ref_name,
                        ", got ", t->device());
    }
  }
}

const at::Tensor* opt(const c10::optional<at::Tensor>& t) { return t.has_value() ? &*t : nullptr; }

// Makes `t`'s device current for the lifetime of the object and names the stream to launch on; workspace and
// outputs then come from the caching allocator of that device and stream.
class CudaLaunch {
 public:
  explicit CudaLaunch(const at::Tensor& t) : guard_(t.device()) {}
  void* stream() const { return c10::cuda::getCurrentCUDAStream().stream(); }

 private:
  c10::cuda::CUDAGuard guard_;
};

BlockMapTensors block_map_cuda(const at::Tensor& q, const at::Tensor& k, int64_t block_q, int64_t block_k, double topk,
                               double negligible, c10::string_view variant, bool with_inverse,
                               c10::ArrayRef<double> head_topk, double top_p, c10::ArrayRef<double> head_top_p,
                               int64_t min_blocks, int64_t max_blocks, double negligible_threshold,
                               double max_negligible, double scale) {
  check_same_device({{"q", &q}, {"k", &k}});
  CudaLaunch launch(q);
  return block_map(q, k, block_q, block_k, topk, negligible, variant, with_inverse, head_topk, top_p, head_top_p,
                   min_blocks, max_blocks, negligible_threshold, max_negligible, scale, launch.stream());
}

InverseTensors invert_block_map_cuda(const at::Tensor& lut, const at::Tensor& count, const at::Tensor& negl_lut,
                                     const at::Tensor& negl_count, int64_t k_blocks) {
  check_same_device({{"lut", &lut}, {"count", &count}, {"negl_lut", &negl_lut}, {"negl_count", &negl_count}});
  CudaLaunch launch(lut);
  return invert_block_map(lut, count, negl_lut, negl_count, k_blocks, launch.stream());
}

ForwardTensors forward_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const c10::optional<at::Tensor>& proj_weight, const c10::optional<at::Tensor>& proj_bias,
                            const at::Tensor& lut, const at::Tensor& count, const at::Tensor& negl_lut,
                            const at::Tensor& negl_count, const at::Tensor& inv_offset, const at::Tensor& inv_index,
                            const at::Tensor& negl_inv_offset, const at::Tensor& negl_inv_index, int64_t block_q,
                            int64_t block_k, c10::string_view variant, c10::string_view feature_map, double scale,
                            double eps, bool save_for_backward) {
  check_same_device({{"q", &q},
                     {"k", &k},
                     {"v", &v},
                     {"proj_weight", opt(proj_weight)},
                     {"proj_bias", opt(proj_bias)},
                     {"lut", &lut},
                     {"count", &count},
                     {"negl_lut", &negl_lut},
                     {"negl_count", &negl_count},
                     {"inv_offset", &inv_offset},
                     {"inv_index", &inv_index},
                     {"negl_inv_offset", &negl_inv_offset},
                     {"negl_inv_index", &negl_inv_index}});
  CudaLaunch launch(q);
  return forward(q, k, v, proj_weight, proj_bias, lut, count, negl_lut, negl_count, inv_offset, inv_index,
                 negl_inv_offset, negl_inv_index, block_q, block_k, variant, feature_map, scale, eps, save_for_backward,
                 launch.stream());
}

BackwardTensors backward_cuda(const at::Tensor& grad_o, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const c10::optional<at::Tensor>& proj_weight, const c10::optional<at::Tensor>& proj_bias,
                              const at::Tensor& lut, const at::Tensor& count, const at::Tensor& negl_lut,
                              const at::Tensor& negl_count, const at::Tensor& inv_offset, const at::Tensor& inv_index,
                              const at::Tensor& negl_inv_offset, const at::Tensor& negl_inv_index, const at::Tensor& o,
                              const at::Tensor& lse, const at::Tensor& o_lin, const at::Tensor& lin_h,
                              const at::Tensor& lin_z, const at::Tensor& o_sparse, int64_t block_q, int64_t block_k,
                              c10::string_view variant, c10::string_view feature_map, double scale, double eps) {
  check_same_device({{"q", &q},
                     {"grad_o", &grad_o},
                     {"k", &k},
                     {"v", &v},
                     {"proj_weight", opt(proj_weight)},
                     {"proj_bias", opt(proj_bias)},
                     {"lut", &lut},
                     {"count", &count},
                     {"negl_lut", &negl_lut},
                     {"negl_count", &negl_count},
                     {"inv_offset", &inv_offset},
                     {"inv_index", &inv_index},
                     {"negl_inv_offset", &negl_inv_offset},
                     {"negl_inv_index", &negl_inv_index},
                     {"o", &o},
                     {"lse", &lse},
                     {"o_lin", &o_lin},
                     {"lin_h", &lin_h},
                     {"lin_z", &lin_z}});
  CudaLaunch launch(q);
  return backward(grad_o, q, k, v, proj_weight, proj_bias, lut, count, negl_lut, negl_count, inv_offset, inv_index,
                  negl_inv_offset, negl_inv_index, o, lse, o_lin, lin_h, lin_z, o_sparse, block_q, block_k, variant,
                  feature_map, scale, eps, launch.stream());
}

}  // namespace

TORCH_LIBRARY_IMPL(sla, CUDA, m) {
  m.impl("block_map", &block_map_cuda);
  m.impl("invert_block_map", &invert_block_map_cuda);
  m.impl("forward", &forward_cuda);
  m.impl("backward", &backward_cuda);
}

}  // namespace sla_torch
