// See memory_limits.h.
#include "device/memory_limits.h"

#include <unistd.h>

#include <cstdio>

namespace sla_cli {

uint64_t host_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return 0;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size);
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 6) {
    bytes /= 1024.0;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, bytes < 10 ? "%.1f %s" : "%.0f %s", bytes, units[u]);
  return buf;
}

std::string host_memory_shortfall(double bytes, const std::string& what) {
  const uint64_t have = host_memory_bytes();
  if (have == 0 || bytes <= static_cast<double>(have)) return std::string();
  return what + " needs about " + format_bytes(bytes) + " of host memory; this machine has " +
         format_bytes(static_cast<double>(have));
}

}  // namespace sla_cli
