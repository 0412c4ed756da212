// Times GPU work with CUDA events on a stream (host clocks would measure launch latency, not the kernels).
// Implemented in cuda_timer.cpp when the build has CUDA; cuda_timer_stub.cpp throws instead.
#pragma once

namespace sla_cli {

class CudaEventTimer {
 public:
  explicit CudaEventTimer(void* stream);  // a cudaStream_t; nullptr = the legacy default stream
  ~CudaEventTimer();
  CudaEventTimer(const CudaEventTimer&) = delete;
  CudaEventTimer& operator=(const CudaEventTimer&) = delete;

  void start();
  void stop();
  // Waits for the stop event and returns the milliseconds between start and stop.
  double elapsed_ms();

 private:
  void* stream_ = nullptr;
  void* start_ = nullptr;
  void* stop_ = nullptr;
};

}  // namespace sla_cli
