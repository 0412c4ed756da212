// `sla info`: what this build contains and whether a GPU is usable.
#include <iostream>

#include "cli_error.h"
#include "commands/commands.h"
#include "device/cuda_memory.h"
#include "sla/sla.h"

namespace sla_cli {

int run_info() {
  std::cout << sla::build_info() << "\n";
  std::string why;
  if (!cuda_rt::compiled()) {
    std::cout << "GPU: not usable (this build has no CUDA backend)\n";
  } else if (!sla::cuda_available() || !cuda_rt::device_usable(&why)) {
    std::cout << "GPU: not usable (" << (why.empty() ? "the library reports no CUDA device" : why) << ")\n";
  } else {
    std::cout << "GPU: usable: " << cuda_rt::device_description() << "\n";
  }
  return kExitOk;
}

}  // namespace sla_cli
