// Progress on stderr for the steps of a command ("[2/5] dense attention on CPU (4 heads)... 2.1 s"), so a user sees
// what a slow step is doing; stdout keeps only the report. Within a long step, count() adds how much of it is done
// and an estimate of the time left: rewritten in place when stderr is a terminal, or as a line every few seconds
// when --progress asks for it elsewhere (a log), and not at all otherwise (the step lines alone stay short in logs
// and test output).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace sla_cli {

// Whether stderr is a terminal (counts are then shown without --progress).
bool stderr_is_terminal();

class Progress {
 public:
  // `counts`: show count() updates; `terminal`: rewrite them in place (else one line per update).
  Progress(int total_steps, bool counts, bool terminal = stderr_is_terminal());
  ~Progress() { finish_step(); }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Ends the previous step (printing its duration when it took over a second) and announces the next.
  void step(const std::string& what);
  void finish_step();
  // `done` of `total` units of the current step are finished. Shown once the step has run for a second, then at
  // most 5 times a second on a terminal and every 5 seconds elsewhere: "37/108 (34%), about 12 s left". When the
  // units differ in cost, `fraction` (in (0, 1]) is the share of the step's work done, for the estimate.
  void count(int64_t done, int64_t total, double fraction = 0.0);

 private:
  using Clock = std::chrono::steady_clock;
  double seconds_since(Clock::time_point t) const;

  int total_;
  bool counts_, terminal_;
  int current_ = 0;
  bool open_ = false;
  std::string what_;
  bool counted_ = false;  // a count was printed in this step
  Clock::time_point start_, last_count_;
};

// "12 s", "3 min 20 s", "1 h 05 min".
std::string format_duration(double seconds);

}  // namespace sla_cli
