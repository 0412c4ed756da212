// Size checks before large host allocations: a command whose inputs cannot fit says so, with the limit, instead of
// failing inside an allocation ("std::bad_alloc", "cannot create std::vector larger than max_size()").
#pragma once

#include <cstdint>
#include <string>

namespace sla_cli {

// The physical memory of this machine in bytes (0 when it cannot be read).
uint64_t host_memory_bytes();

// "1.5 GiB", "20 TiB".
std::string format_bytes(double bytes);

// Empty when `bytes` (an estimate; a double, so that products of large dims cannot overflow) fit in the host
// memory; else a message "<what> needs about X of host memory; this machine has Y".
std::string host_memory_shortfall(double bytes, const std::string& what);

}  // namespace sla_cli
