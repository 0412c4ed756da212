// The numbers `sla demo` reports and how they are printed.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace sla_cli {

struct HeadStats {
  std::string label;    // "h0 local", "b1 h3", ...
  double sparsity = 0;  // 1 - (critical blocks per row) / Nk, averaged over rows
  double frac_critical = 0, frac_marginal = 0, frac_negligible = 0;  // of all (query block, key block) pairs
  double critical_mass = 0;    // share of the dense softmax mass inside the critical blocks, averaged over rows
  double best_mass = 0;        // share inside each row's own T heaviest blocks (the best any block map could do)
  double negligible_mass = 0;  // share inside the negligible blocks (complement variant with --negligible)
  double err_sparse = 0;       // relative L2 error of SLA's O (= O_s: fresh layer, W = b = 0) against dense
  double err_fitted = -1;      // the same with a least-squares W, b (negative when not computed)
};

struct TimingLine {
  std::string name;
  double ms = -1;    // negative: skipped
  std::string note;  // why skipped, or extra context
};

struct DemoReport {
  std::string workload;                      // what the tensors are
  std::string backend;                       // the backend used, with the dtype
  std::string backend_reason;                // why this backend
  std::string config;                        // variant, phi, blocks, topk -> T of Nk
  int64_t rows_checked = 0, rows_total = 0;  // query rows per head compared against dense attention
  std::vector<HeadStats> heads;
  double dense_check = -1;  // rel. L2 of the library's dense attention (topk = 1) vs the independent reference
  std::vector<TimingLine> timings;
  std::vector<std::string> notes;
  std::string png_path;
};

void print_demo_report(const DemoReport& report, std::ostream& os);

}  // namespace sla_cli
