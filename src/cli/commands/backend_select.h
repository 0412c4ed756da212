// Which device runs a command: the GPU when the build has CUDA, the library reports it available and the user did
// not ask for the CPU; the reason is kept for the report.
#pragma once

#include <string>

#include "commands/command_options.h"
#include "sla/types.h"

namespace sla_cli {

struct BackendDecision {
  sla::Device device = sla::Device::cpu;
  std::string reason;
};

// Throws RunError when --backend cuda was asked for and no GPU is usable.
BackendDecision choose_backend(BackendChoice choice);

// "CPU" or "CUDA <device name>".
std::string describe_device(sla::Device device);

}  // namespace sla_cli
