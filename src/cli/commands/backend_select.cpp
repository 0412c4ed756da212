// See backend_select.h.
#include "commands/backend_select.h"

#include "cli_error.h"
#include "device/cuda_memory.h"
#include "sla/sla.h"

namespace sla_cli {

BackendDecision choose_backend(BackendChoice choice) {
  BackendDecision d;
  if (choice == BackendChoice::cpu) {
    d.reason = "--backend cpu";
    return d;
  }
  std::string why_not;
  if (!cuda_rt::compiled() || !sla::cuda_available()) {
    why_not = "this build has no CUDA backend";
    if (cuda_rt::compiled()) why_not = "the library reports no usable CUDA device";
  } else if (!cuda_rt::device_usable(&why_not)) {
    // why_not filled in
  } else {
    d.device = sla::Device::cuda;
    d.reason = choice == BackendChoice::cuda ? "--backend cuda" : "auto: a CUDA GPU is usable";
    return d;
  }
  if (choice == BackendChoice::cuda) throw RunError("--backend cuda: no GPU can be used: " + why_not);
  d.reason = "auto: " + why_not;
  return d;
}

std::string describe_device(sla::Device device) {
  if (device == sla::Device::cpu) return "CPU";
  return "CUDA " + cuda_rt::device_description();
}

}  // namespace sla_cli
