// The public entry points of include/sla/sla.h: validate (validate.h), then dispatch on the tensors' device.
// Nothing throws out of this file: every C++ exception becomes StatusCode::internal at the boundary.
#include <cstddef>
#include <exception>
#include <string>

#include "core/backend.h"
#include "core/map_contents.h"
#include "core/validate.h"
#include "sla/sla.h"

#ifndef SLA_VERSION
#define SLA_VERSION "unknown"  // set by CMake; the fallback keeps stand-alone syntax checks building
#endif

namespace sla {
namespace {

// Runs `body` and turns any exception into a Status: callers of a C API-style library must never see one.
template <class Body>
Status guarded(const char* function, Body&& body) noexcept {
  try {
    return body();
  } catch (const std::exception& e) {
    try {
      return {StatusCode::internal, std::string(function) + ": internal error: " + e.what()};
    } catch (...) {
      return {StatusCode::internal, {}};  // building the message itself failed (out of memory)
    }
  } catch (...) {
    try {
      return {StatusCode::internal, std::string(function) + ": internal error: unknown exception"};
    } catch (...) {
      return {StatusCode::internal, {}};
    }
  }
}

Status require_output(const char* name, const void* out) {
  if (out != nullptr) return Status::Ok();
  return Status::Invalid(std::string(name) + ": expected a non-null output pointer");
}

#ifndef SLA_WITH_CUDA
Status no_cuda_backend(const char* tensor) {
  return Status::Unsupported(std::string(tensor) +
                             ": tensor is on CUDA but this build of SLA has no CUDA backend (rebuild with "
                             "-DSLA_CUDA=ON)");
}
#endif

enum class Op { predict, forward, backward };

// The backend's workspace need for a validated problem; on CUDA, first whether the kernels support it at all.
// q's device decides (validation made every other tensor match it).
Status workspace_for(Op op, const Problem& p, const Config& cfg, std::size_t* bytes) {
  if (p.device == Device::cpu) {
    switch (op) {
      case Op::predict: *bytes = cpu::predict_block_map_workspace(p, cfg); break;
      case Op::forward: *bytes = cpu::forward_workspace(p, cfg); break;
      case Op::backward: *bytes = cpu::backward_workspace(p, cfg); break;
    }
    return Status::Ok();
  }
#ifdef SLA_WITH_CUDA
  SLA_RETURN_IF_ERROR(cuda::check_supported(p, cfg));
  switch (op) {
    case Op::predict: *bytes = cuda::predict_block_map_workspace(p, cfg); break;
    case Op::forward: *bytes = cuda::forward_workspace(p, cfg); break;
    case Op::backward: *bytes = cuda::backward_workspace(p, cfg); break;
  }
  return Status::Ok();
#else
  (void)cfg;
  (void)bytes;
  return no_cuda_backend("q");
#endif
}

}  // namespace

Status block_map_shape(int64_t batch, int64_t heads, int64_t lq, int64_t lk, const Config& cfg, BlockMapShape* out) {
  return guarded("sla::block_map_shape", [&]() -> Status {
    SLA_RETURN_IF_ERROR(require_output("out", out));
    SLA_RETURN_IF_ERROR(validate_config(cfg));
    const struct {
      const char* name;
      int64_t value;
    } sizes[] = {{"batch", batch}, {"heads", heads}, {"lq", lq}, {"lk", lk}};
    for (const auto& s : sizes) {
      if (s.value < 1) {
        return Status::Invalid(std::string(s.name) + ": expected >= 1, got " + std::to_string(s.value));
      }
    }
    SLA_RETURN_IF_ERROR(validate_config_heads(cfg, heads));
    *out = resolve_block_map_shape(batch, heads, lq, lk, cfg);
    return Status::Ok();
  });
}

Status predict_block_map_workspace_size(const TensorView& q, const TensorView& k, const Config& cfg,
                                        std::size_t* bytes) {
  return guarded("sla::predict_block_map_workspace_size", [&]() -> Status {
    SLA_RETURN_IF_ERROR(require_output("bytes", bytes));
    Problem p;
    SLA_RETURN_IF_ERROR(validate_predict_inputs(q, k, cfg, &p));
    return workspace_for(Op::predict, p, cfg, bytes);
  });
}

Status predict_block_map(const TensorView& q, const TensorView& k, const Config& cfg, const BlockMap& map,
                         const Exec& exec) {
  return guarded("sla::predict_block_map", [&]() -> Status {
    Problem p;
    SLA_RETURN_IF_ERROR(validate_predict(q, k, cfg, map, &p));
    std::size_t needed = 0;
    SLA_RETURN_IF_ERROR(workspace_for(Op::predict, p, cfg, &needed));
    SLA_RETURN_IF_ERROR(validate_exec(exec, needed));
#ifdef SLA_WITH_CUDA
    if (p.device == Device::cuda) return cuda::predict_block_map(p, q, k, cfg, map, exec);
#endif
    return cpu::predict_block_map(p, q, k, cfg, map, exec);
  });
}

Status invert_block_map(const BlockMap& map, const Exec& exec) {
  return guarded("sla::invert_block_map", [&]() -> Status {
    Problem p;
    SLA_RETURN_IF_ERROR(validate_invert(map, &p));
    // Inversion needs no workspace; validate_exec still checks the pointer/size pair and num_threads.
    SLA_RETURN_IF_ERROR(validate_exec(exec, 0));
    if (p.device == Device::cpu) {
      SLA_RETURN_IF_ERROR(check_map_contents(map, p.map.k_blocks, MapInverse::skip));
      return cpu::invert_block_map(p, map, exec);
    }
#ifdef SLA_WITH_CUDA
    // No check_supported here: inversion has no Config, head dim or dtype for it to restrict.
    return cuda::invert_block_map(p, map, exec);
#else
    return no_cuda_backend("map.lut");
#endif
  });
}

Status check_block_map(const BlockMap& map, int64_t k_blocks) {
  return guarded("sla::check_block_map", [&]() -> Status {
    Problem p;
    SLA_RETURN_IF_ERROR(validate_check_map(map, k_blocks, &p));
    return check_map_contents(map, k_blocks, MapInverse::check);
  });
}

Status forward_workspace_size(const ForwardArgs& args, const Config& cfg, std::size_t* bytes) {
  return guarded("sla::forward_workspace_size", [&]() -> Status {
    SLA_RETURN_IF_ERROR(require_output("bytes", bytes));
    Problem p;
    SLA_RETURN_IF_ERROR(validate_forward(args, cfg, &p));
    return workspace_for(Op::forward, p, cfg, bytes);
  });
}

Status forward(const ForwardArgs& args, const Config& cfg, const Exec& exec) {
  return guarded("sla::forward", [&]() -> Status {
    Problem p;
    SLA_RETURN_IF_ERROR(validate_forward(args, cfg, &p));
    std::size_t needed = 0;
    SLA_RETURN_IF_ERROR(workspace_for(Op::forward, p, cfg, &needed));
    SLA_RETURN_IF_ERROR(validate_exec(exec, needed));
#ifdef SLA_WITH_CUDA
    if (p.device == Device::cuda) return cuda::forward(p, args, cfg, exec);
#endif
    // A caller-supplied map is arbitrary data: checked on the host before any index reaches K or V.
    SLA_RETURN_IF_ERROR(check_map_contents(args.map, p.map.k_blocks, MapInverse::skip));
    return cpu::forward(p, args, cfg, exec);
  });
}

Status backward_workspace_size(const BackwardArgs& args, const Config& cfg, std::size_t* bytes) {
  return guarded("sla::backward_workspace_size", [&]() -> Status {
    SLA_RETURN_IF_ERROR(require_output("bytes", bytes));
    Problem p;
    SLA_RETURN_IF_ERROR(validate_backward(args, cfg, &p));
    return workspace_for(Op::backward, p, cfg, bytes);
  });
}

Status backward(const BackwardArgs& args, const Config& cfg, const Exec& exec) {
  return guarded("sla::backward", [&]() -> Status {
    Problem p;
    SLA_RETURN_IF_ERROR(validate_backward(args, cfg, &p));
    std::size_t needed = 0;
    SLA_RETURN_IF_ERROR(workspace_for(Op::backward, p, cfg, &needed));
    SLA_RETURN_IF_ERROR(validate_exec(exec, needed));
#ifdef SLA_WITH_CUDA
    if (p.device == Device::cuda) return cuda::backward(p, args, cfg, exec);
#endif
    SLA_RETURN_IF_ERROR(check_map_contents(args.map, p.map.k_blocks, MapInverse::check));
    return cpu::backward(p, args, cfg, exec);
  });
}

bool cuda_available() {
#ifdef SLA_WITH_CUDA
  try {
    return cuda::device_present();
  } catch (...) {
    return false;
  }
#else
  return false;
#endif
}

std::string build_info() {
  // Cannot return a Status; an exception (only from allocation) yields an empty string instead of escaping.
  try {
    std::string info = std::string("SLA ") + SLA_VERSION + "; backends: cpu";
#ifdef SLA_WITH_CUDA
    info += ", cuda (" + cuda::build_info() + ")";
#else
    info += " (built without CUDA)";
#endif
    return info;
  } catch (...) {
    return {};
  }
}

}  // namespace sla
