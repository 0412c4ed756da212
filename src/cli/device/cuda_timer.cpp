// CUDA-event implementation of cuda_timer.h (built only when SLA_WITH_CUDA).
#include "device/cuda_timer.h"

#include <cuda_runtime.h>

#include <string>

#include "cli_error.h"

namespace sla_cli {

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw RunError(std::string(what) + " failed: " + cudaGetErrorString(err));
}

cudaEvent_t event(void* e) { return static_cast<cudaEvent_t>(e); }

}  // namespace

CudaEventTimer::CudaEventTimer(void* stream) : stream_(stream) {
  cudaEvent_t a = nullptr, b = nullptr;
  check(cudaEventCreate(&a), "cudaEventCreate");
  const cudaError_t err = cudaEventCreate(&b);
  if (err != cudaSuccess) {
    cudaEventDestroy(a);
    check(err, "cudaEventCreate");
  }
  start_ = a;
  stop_ = b;
}

CudaEventTimer::~CudaEventTimer() {
  cudaEventDestroy(event(start_));
  cudaEventDestroy(event(stop_));
}

void CudaEventTimer::start() {
  check(cudaEventRecord(event(start_), static_cast<cudaStream_t>(stream_)), "cudaEventRecord");
}

void CudaEventTimer::stop() {
  check(cudaEventRecord(event(stop_), static_cast<cudaStream_t>(stream_)), "cudaEventRecord");
}

double CudaEventTimer::elapsed_ms() {
  check(cudaEventSynchronize(event(stop_)), "cudaEventSynchronize");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, event(start_), event(stop_)), "cudaEventElapsedTime");
  return ms;
}

}  // namespace sla_cli
