#include "core/cuda_arch.h"

#include <cctype>

namespace sla {

bool cuda_archs_run_on(const std::string& archs, int major, int minor) {
  std::size_t pos = 0;
  while (pos <= archs.size()) {
    std::size_t end = archs.find_first_of(",;", pos);
    if (end == std::string::npos) end = archs.size();
    std::string a = archs.substr(pos, end - pos);
    pos = end + 1;
    const bool specific = !a.empty() && a.back() == 'a';
    if (specific) a.pop_back();
    bool digits = a.size() >= 2;
    for (char c : a) digits = digits && std::isdigit(static_cast<unsigned char>(c));
    if (!digits) continue;
    const int code = std::stoi(a);
    const int a_major = code / 10, a_minor = code % 10;
    if (a_major != major) continue;
    if (specific ? minor == a_minor : minor >= a_minor) return true;
  }
  return false;
}

}  // namespace sla
