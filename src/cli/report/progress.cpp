// See progress.h.
#include "report/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace sla_cli {

namespace {

constexpr double kFirstCountAfter = 1.0;   // seconds: a short step shows no count
constexpr double kTerminalInterval = 0.2;  // seconds between rewrites of the line on a terminal
constexpr double kLogInterval = 5.0;       // seconds between count lines elsewhere
constexpr const char* kClearToEnd = "\033[K";

}  // namespace

bool stderr_is_terminal() { return ::isatty(::fileno(stderr)) == 1; }

std::string format_duration(double s) {
  char buf[48];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%.0f s", std::ceil(s));
  } else if (s < 3600) {
    const int total = static_cast<int>(std::ceil(s));
    std::snprintf(buf, sizeof buf, "%d min %02d s", total / 60, total % 60);
  } else {
    const int minutes = static_cast<int>(std::ceil(s / 60));
    std::snprintf(buf, sizeof buf, "%d h %02d min", minutes / 60, minutes % 60);
  }
  return buf;
}

Progress::Progress(int total_steps, bool counts, bool terminal)
    : total_(total_steps), counts_(counts), terminal_(terminal) {}

double Progress::seconds_since(Clock::time_point t) const {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

void Progress::step(const std::string& what) {
  finish_step();
  ++current_;
  what_ = what;
  std::fprintf(stderr, "[%d/%d] %s...", current_, total_, what.c_str());
  std::fflush(stderr);
  start_ = Clock::now();
  open_ = true;
  counted_ = false;
}

void Progress::finish_step() {
  if (!open_) return;
  const double s = seconds_since(start_);
  if (counted_ && terminal_) {
    std::fprintf(stderr, "\r[%d/%d] %s... %.1f s%s\n", current_, total_, what_.c_str(), s, kClearToEnd);
  } else if (counted_) {
    std::fprintf(stderr, "  done in %.1f s\n", s);
  } else if (s >= 1.0) {
    std::fprintf(stderr, " %.1f s\n", s);
  } else {
    std::fprintf(stderr, "\n");
  }
  std::fflush(stderr);
  open_ = false;
}

void Progress::count(int64_t done, int64_t total, double fraction) {
  if (!counts_ || !open_ || total <= 0 || done <= 0) return;
  const double elapsed = seconds_since(start_);
  if (elapsed < kFirstCountAfter) return;
  if (counted_ && seconds_since(last_count_) < (terminal_ ? kTerminalInterval : kLogInterval)) return;
  last_count_ = Clock::now();
  if (!(fraction > 0.0 && fraction <= 1.0)) fraction = static_cast<double>(done) / static_cast<double>(total);
  const double left = elapsed / fraction * (1.0 - fraction);
  const std::string eta = done < total ? ", about " + format_duration(left) + " left" : "";
  const int percent = static_cast<int>(100.0 * fraction);
  if (terminal_) {
    std::fprintf(stderr, "\r[%d/%d] %s... %lld/%lld (%d%%)%s%s", current_, total_, what_.c_str(),
                 static_cast<long long>(done), static_cast<long long>(total), percent, eta.c_str(), kClearToEnd);
  } else {
    std::fprintf(stderr, "%s  %lld/%lld (%d%%)%s\n", counted_ ? "" : "\n", static_cast<long long>(done),
                 static_cast<long long>(total), percent, eta.c_str());
  }
  std::fflush(stderr);
  counted_ = true;
}

}  // namespace sla_cli
