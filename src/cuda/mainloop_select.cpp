#include "cuda/mainloop_select.h"

#include <cuda_runtime.h>

#include <cstdlib>
#include <string>

namespace sla::cuda {
namespace {

enum class Forced { none, mma, wgmma, invalid };

struct EnvChoice {
  Forced forced = Forced::none;
  std::string value;  // as set, for the error message
};

EnvChoice choice_from_env() {
  EnvChoice c;
  const char* v = std::getenv("SLA_CUDA_MAINLOOP");
  if (v == nullptr) return c;
  c.value = v;
  if (c.value.empty() || c.value == "auto") {
    c.forced = Forced::none;
  } else if (c.value == "mma") {
    c.forced = Forced::mma;
  } else if (c.value == "wgmma") {
    c.forced = Forced::wgmma;
  } else {
    c.forced = Forced::invalid;
  }
  return c;
}

}  // namespace

Status select_mainloop(MainloopKind* out) {
  static const EnvChoice env = choice_from_env();  // read once: the choice cannot change between calls
  const Forced forced = env.forced;
  if (forced == Forced::invalid) {
    return Status::Invalid("SLA_CUDA_MAINLOOP: '" + env.value + "'; expected auto, mma or wgmma");
  }
  if (forced == Forced::mma) {
    *out = MainloopKind::mma;
    return Status::Ok();
  }
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
    return {StatusCode::device_error, "cannot query the current CUDA device's compute capability"};
  }
#if defined(SLA_CUDA_HAS_SM90A)
  const bool wgmma_ok = major == 9 && minor == 0;
#else
  const bool wgmma_ok = false;
#endif
  if (forced == Forced::wgmma && !wgmma_ok) {
    return Status::Unsupported("SLA_CUDA_MAINLOOP=wgmma needs a build with sm_90a (SLA_CUDA_ARCHS) and a "
                               "compute capability 9.0 GPU; this device is " +
                               std::to_string(major) + "." + std::to_string(minor));
  }
  *out = wgmma_ok ? MainloopKind::wgmma : MainloopKind::mma;
  return Status::Ok();
}

}  // namespace sla::cuda
