// cudaError_t -> sla::Status, and the workspace carving shared by every CUDA entry point.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "sla/types.h"

namespace sla::cuda {

inline Status device_error(const char* what, cudaError_t e) {
  return {StatusCode::device_error, std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")"};
}

// Checks the launch just enqueued (configuration errors and earlier asynchronous faults), without synchronising.
inline Status check_launch(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return device_error(kernel, e);
  return Status::Ok();
}

// Raises a kernel's dynamic shared memory limit to `bytes`. A device whose per-block opt-in maximum is smaller
// (sm_86/sm_89: 99 KB, sm_80: 163 KB) gets StatusCode::unsupported naming the kernel, not a device error; the
// limit is queried only on that failure path, so launches pay one attribute call.
template <class Kernel>
Status set_dynamic_smem(Kernel kernel, std::size_t bytes, const char* what) {
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (e == cudaSuccess) return Status::Ok();
  int dev = 0, limit = 0;
  if (cudaGetDevice(&dev) == cudaSuccess &&
      cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess &&
      bytes > static_cast<std::size_t>(limit)) {
    (void)cudaGetLastError();  // not sticky: clear it so that the next launch check does not report it
    return Status::Unsupported(std::string(what) + " needs " + std::to_string(bytes) +
                               " bytes of shared memory per block; this device allows " + std::to_string(limit));
  }
  return device_error(what, e);
}

#define SLA_CUDA_RETURN_IF_LAUNCH_FAILED(name)           \
  do {                                                   \
    ::sla::Status sla_launch_status_ = ::sla::cuda::check_launch(name); \
    if (!sla_launch_status_.ok()) return sla_launch_status_; \
  } while (0)

// Hands out 256-byte aligned pieces of the caller's workspace in order. Sizing and carving use the same sequence of
// take() calls, so workspace_size() of a dry run (base == nullptr) is exactly what the real run carves.
class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(void* base = nullptr) : base_(static_cast<unsigned char*>(base)) {}
  template <class T>
  T* take(std::size_t count) {
    offset_ = (offset_ + 255) / 256 * 256;
    T* p = base_ ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += count * sizeof(T);
    return p;
  }
  std::size_t bytes() const { return (offset_ + 255) / 256 * 256; }

 private:
  unsigned char* base_;
  std::size_t offset_ = 0;
};

}  // namespace sla::cuda
