// Wall-clock timing of host calls that may launch GPU work (the demo's single-shot timings; `sla bench` uses CUDA
// events instead).
#pragma once

#include <chrono>

#include "device/cuda_memory.h"
#include "sla/types.h"

namespace sla_cli {

// Runs f and returns its wall time in milliseconds; on the GPU, waits for the device before and after so that the
// time covers the work f launched, not only the launches.
template <typename F>
double timed_ms(sla::Device device, F&& f) {
  if (device == sla::Device::cuda) cuda_rt::synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  f();
  if (device == sla::Device::cuda) cuda_rt::synchronize();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace sla_cli
