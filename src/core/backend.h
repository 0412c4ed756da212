// The internal interface every backend implements. api.cpp validates the public arguments (validate.h), resolves
// them into a Problem, and then calls the backend that matches the tensors' device. Backends may assume that
// everything validate.cpp checks holds; they check only what is specific to them (e.g. the CUDA backend rejects
// head dims it was not built for with StatusCode::unsupported).
#pragma once

#include <cstddef>

#include "sla/sla.h"

namespace sla {

// Sizes resolved from the arguments of one call.
struct Problem {
  int64_t batch = 0, heads = 0;
  int64_t lq = 0, lk = 0;  // sequence lengths of Q and of K/V (0 where the call does not know them)
  int64_t d = 0, dv = 0;   // head dims of Q/K and of V
  DType dtype = DType::f32;  // input dtype (of q, k, v, o, d_o, dq, dk, dv)
  DType acc = DType::f32;    // accumulation dtype: f64 for f64 inputs, else f32 (lse, o_lin, lin_h, lin_z, W, b)
  Device device = Device::cpu;
  double scale = 0.0;        // resolved softmax scale (cfg.scale or 1/sqrt(d))
  BlockMapShape map;
  bool has_weight = false, has_bias = false;
  bool save_for_backward = false;  // forward: lse/o_lin/lin_h/lin_z present
};

namespace cpu {
std::size_t predict_block_map_workspace(const Problem& p, const Config& cfg);
Status predict_block_map(const Problem& p, const TensorView& q, const TensorView& k, const Config& cfg,
                         const BlockMap& map, const Exec& exec);
Status invert_block_map(const Problem& p, const BlockMap& map, const Exec& exec);
std::size_t forward_workspace(const Problem& p, const Config& cfg);
Status forward(const Problem& p, const ForwardArgs& args, const Config& cfg, const Exec& exec);
std::size_t backward_workspace(const Problem& p, const Config& cfg);
Status backward(const Problem& p, const BackwardArgs& args, const Config& cfg, const Exec& exec);
}  // namespace cpu

#ifdef SLA_WITH_CUDA
namespace cuda {
bool device_present();
std::string build_info();  // archs, head dims, dtypes compiled in
// Rejects (StatusCode::unsupported) what the CUDA kernels were not built for: head dim, dtype, block sizes, arch.
Status check_supported(const Problem& p, const Config& cfg);
std::size_t predict_block_map_workspace(const Problem& p, const Config& cfg);
Status predict_block_map(const Problem& p, const TensorView& q, const TensorView& k, const Config& cfg,
                         const BlockMap& map, const Exec& exec);
Status invert_block_map(const Problem& p, const BlockMap& map, const Exec& exec);
std::size_t forward_workspace(const Problem& p, const Config& cfg);
Status forward(const Problem& p, const ForwardArgs& args, const Config& cfg, const Exec& exec);
std::size_t backward_workspace(const Problem& p, const Config& cfg);
Status backward(const Problem& p, const BackwardArgs& args, const Config& cfg, const Exec& exec);
}  // namespace cuda
#endif

}  // namespace sla
