// See report.h.
#include "report/report.h"

#include <cstdio>
#include <ostream>

namespace sla_cli {

namespace {

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

std::string pct(double v) { return fmt("%.1f%%", 100.0 * v); }

std::string pad(const std::string& s, std::size_t w) {
  return s.size() >= w ? s + " " : s + std::string(w - s.size(), ' ');
}

}  // namespace

void print_demo_report(const DemoReport& r, std::ostream& os) {
  os << "SLA demo\n";
  os << "  workload : " << r.workload << "\n";
  os << "  config   : " << r.config << "\n";
  os << "  backend  : " << r.backend << " (" << r.backend_reason << ")\n";
  os << "  checked  : " << r.rows_checked << " of " << r.rows_total
     << " query rows per head against exact dense softmax attention\n\n";

  const bool any_fit = !r.heads.empty() && r.heads[0].err_fitted >= 0;
  const bool any_negl = [&] {
    for (const HeadStats& h : r.heads) {
      if (h.frac_negligible > 0) return true;
    }
    return false;
  }();
  os << pad("head", 16) << pad("sparsity", 10) << pad("critical", 10) << pad("marginal", 10) << pad("negligible", 12)
     << pad("crit.mass", 11) << pad("best T", 8);
  if (any_negl) os << pad("negl.mass", 11);
  os << pad("err O_s", 9);
  if (any_fit) os << "err fitted W";
  os << "\n";
  HeadStats mean;
  mean.err_fitted = 0;
  for (const HeadStats& h : r.heads) {
    os << pad(h.label, 16) << pad(pct(h.sparsity), 10) << pad(pct(h.frac_critical), 10) << pad(pct(h.frac_marginal), 10)
       << pad(pct(h.frac_negligible), 12) << pad(pct(h.critical_mass), 11) << pad(pct(h.best_mass), 8);
    if (any_negl) os << pad(pct(h.negligible_mass), 11);
    os << pad(fmt("%.4f", h.err_sparse), 9);
    if (any_fit) os << fmt("%.4f", h.err_fitted);
    os << "\n";
    mean.sparsity += h.sparsity / r.heads.size();
    mean.frac_critical += h.frac_critical / r.heads.size();
    mean.frac_marginal += h.frac_marginal / r.heads.size();
    mean.frac_negligible += h.frac_negligible / r.heads.size();
    mean.critical_mass += h.critical_mass / r.heads.size();
    mean.negligible_mass += h.negligible_mass / r.heads.size();
    mean.best_mass += h.best_mass / r.heads.size();
    mean.err_sparse += h.err_sparse / r.heads.size();
    mean.err_fitted += h.err_fitted / r.heads.size();
  }
  if (r.heads.size() > 1) {
    os << pad("mean", 16) << pad(pct(mean.sparsity), 10) << pad(pct(mean.frac_critical), 10)
       << pad(pct(mean.frac_marginal), 10) << pad(pct(mean.frac_negligible), 12) << pad(pct(mean.critical_mass), 11)
       << pad(pct(mean.best_mass), 8);
    if (any_negl) os << pad(pct(mean.negligible_mass), 11);
    os << pad(fmt("%.4f", mean.err_sparse), 9);
    if (any_fit) os << fmt("%.4f", mean.err_fitted);
    os << "\n";
  }
  os << "\n  sparsity   = 1 - critical key blocks / all key blocks, per query block\n"
     << "  crit.mass  = share of the exact softmax attention mass inside the critical blocks\n"
     << "  best T     = the same for each row's own T heaviest blocks: the most any block map with T blocks covers\n"
     << (any_negl ? "  negl.mass  = share inside the negligible blocks (skipped by both branches)\n" : "")
     << "  err O_s    = ||O_SLA - O_dense|| / ||O_dense||; a fresh layer has W = b = 0, so O = O_s (sparse branch)\n";
  if (any_fit) {
    os << "  err fitted = the same for O_s + O_l W^T + b, one W, b for all heads (as in the layer) fitted by least\n"
       << "               squares on these rows (in-sample: the headroom the linear branch offers once fine-tuned)\n";
  }
  if (r.dense_check >= 0) {
    os << "  check      : library dense attention (topk = 1) vs independent reference: rel. L2 "
       << fmt("%.2e", r.dense_check) << "\n";
  }

  os << "\nTimings\n";
  for (const TimingLine& t : r.timings) {
    os << "  " << pad(t.name, 34);
    if (t.ms >= 0) {
      os << fmt("%10.2f ms", t.ms);
    } else {
      os << "   skipped";
    }
    if (!t.note.empty()) os << "  " << t.note;
    os << "\n";
  }
  for (const std::string& n : r.notes) os << "\n" << n;
  if (!r.notes.empty()) os << "\n";
  if (!r.png_path.empty()) os << "\nBlock map picture: " << r.png_path << "\n";
}

}  // namespace sla_cli
