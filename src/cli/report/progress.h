// Progress lines on stderr for the steps of a command ("[2/5] dense attention on CPU (4 heads)... 2.1 s"), so a
// user sees what a slow step is doing; stdout keeps only the report.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>

namespace sla_cli {

class Progress {
 public:
  explicit Progress(int total_steps) : total_(total_steps) {}
  ~Progress() { finish_step(); }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Ends the previous step (printing its duration when it took over a second) and announces the next.
  void step(const std::string& what) {
    finish_step();
    ++current_;
    std::fprintf(stderr, "[%d/%d] %s...", current_, total_, what.c_str());
    std::fflush(stderr);
    start_ = std::chrono::steady_clock::now();
    open_ = true;
  }

  void finish_step() {
    if (!open_) return;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    if (s >= 1.0) {
      std::fprintf(stderr, " %.1f s\n", s);
    } else {
      std::fprintf(stderr, "\n");
    }
    open_ = false;
  }

 private:
  int total_;
  int current_ = 0;
  bool open_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace sla_cli
