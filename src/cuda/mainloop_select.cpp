#include "cuda/mainloop_select.h"

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace sla::cuda {
namespace {

enum class Forced { none, mma, wgmma, invalid };

Forced forced_from_env() {
  const char* v = std::getenv("SLA_CUDA_MAINLOOP");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return Forced::none;
  if (std::strcmp(v, "mma") == 0) return Forced::mma;
  if (std::strcmp(v, "wgmma") == 0) return Forced::wgmma;
  return Forced::invalid;
}

}  // namespace

Status select_mainloop(MainloopKind* out) {
  static const Forced forced = forced_from_env();
  if (forced == Forced::invalid) {
    return Status::Invalid(std::string("SLA_CUDA_MAINLOOP: '") +
                                   std::getenv("SLA_CUDA_MAINLOOP") + "'; expected auto, mma or wgmma");
  }
  if (forced == Forced::mma) {
    *out = MainloopKind::mma;
    return Status::Ok();
  }
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
    return {StatusCode::device_error, "forward: cannot query the current CUDA device's compute capability"};
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
