// cuda_timer.h for builds without CUDA: constructing a timer is an error (callers check cuda_rt::compiled()).
#include "cli_error.h"
#include "device/cuda_timer.h"

namespace sla_cli {

CudaEventTimer::CudaEventTimer(void* stream) : stream_(stream) {
  throw RunError("this build of sla has no CUDA support: CUDA event timing is unavailable");
}
CudaEventTimer::~CudaEventTimer() = default;
void CudaEventTimer::start() {}
void CudaEventTimer::stop() {}
double CudaEventTimer::elapsed_ms() { return 0; }

}  // namespace sla_cli
