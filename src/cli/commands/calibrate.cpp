// `sla calibrate`: per-head block-map rules for one layer from captured Q/K/V (docs/BLOCK_MAP.md, "Calibration"),
// added to the JSON file python's sla.apply_rules loads, with a report and a block-map picture of the choice.
#include <cmath>
#include <cstdio>
#include <iostream>

#include "cli_error.h"
#include "commands/commands.h"
#include "commands/output_checks.h"
#include "formats/atomic_file.h"
#include "formats/folder_lock.h"
#include "formats/json_text.h"
#include "formats/npy_reader.h"
#include "formats/png_writer.h"
#include "report/blockmap_image.h"
#include "report/progress.h"
#include "workload/calibration_file.h"
#include "workload/rule_calibration.h"

namespace sla_cli {

namespace {

CalibrationSettings settings_of(const CalibrateOptions& o) {
  CalibrationSettings s;
  s.target = o.target;
  s.quality = o.quality > 0 ? o.quality : (o.target == "mass" ? 0.9 : 0.1);
  s.rule = o.rule;
  s.budget = o.budget;
  s.rows = o.rows;  // as requested (python's rows_per_head); a shorter layer samples all of its rows
  s.threads = o.threads;
  return s;
}

// Everything that can be refused without computing: the output paths, a --layer name that JSON cannot hold, and an
// existing --out that is not a calibration file or holds layers of other settings.
void check_before_work(const CalibrateOptions& o, const CalibrationSettings& s) {
  check_output_path("--out", o.out_path);
  check_output_path("--png", o.png_path);
  check_distinct_files("--out", o.out_path, "--qkv", o.qkv_path);
  check_distinct_files("--png", o.png_path, "--qkv", o.qkv_path);
  check_distinct_files("--out", o.out_path, "--png", o.png_path);
  if (!is_utf8(o.layer)) throw UsageError("--layer: is not UTF-8 text; expected a name in UTF-8 (the file is JSON)");
  const std::string what = "--out " + o.out_path;
  check_same_settings(read_calibration_file(o.out_path, what), s, o.cfg.block_q, o.cfg.block_k, what);
}

}  // namespace

int run_calibrate(const CalibrateOptions& o) {
  const CalibrationSettings s = settings_of(o);
  check_before_work(o, s);
  Progress progress(4, o.progress || stderr_is_terminal());
  progress.step("reading " + o.qkv_path);
  const QkvTensors t = load_qkv(o.qkv_path);
  AttentionProblem ap;
  ap.batch = t.batch;
  ap.heads = t.heads;
  ap.lq = t.lq;
  ap.lk = t.lk;
  ap.dim = t.dim;
  ap.dv = t.dv;
  ap.scale = o.cfg.scale > 0 ? o.cfg.scale : 1.0 / std::sqrt(static_cast<double>(t.dim));
  ap.q = t.q.data();
  ap.k = t.k.data();
  ap.v = t.v.data();

  progress.step("calibrating " + std::to_string(t.batch * t.heads) + " heads (" + o.rule + ", target " + o.target +
                " " + std::to_string(s.quality) + "), " + std::to_string(std::min(s.rows, t.lq)) +
                " sampled rows per head");
  const LayerCalibration cal = calibrate_layer(ap, o.cfg, s, [&](int64_t done, int64_t total, double fraction) {
    progress.count(done, total, fraction);
  });

  progress.step("writing " + o.png_path);
  const BlockClasses classes = predict_classes(ap, cal.config, o.threads);
  std::vector<std::string> labels;
  for (int64_t b = 0; b < t.batch; ++b) {
    for (int64_t h = 0; h < t.heads; ++h) {
      char buf[48];
      std::snprintf(buf, sizeof buf, "h%lld %.3f", static_cast<long long>(h), cal.heads[h].density);
      labels.push_back(buf);
    }
  }
  write_png(render_block_map(classes, t.batch * t.heads, labels), o.png_path, "--png " + o.png_path);

  progress.step("writing " + o.out_path);
  {
    // Read again under the lock: a run that added another layer meanwhile keeps it.
    const FolderLock lock(o.out_path);
    const std::string what = "--out " + o.out_path;
    const Json file = read_calibration_file(o.out_path, what);
    check_same_settings(file, s, o.cfg.block_q, o.cfg.block_k, what);
    write_file_atomically(o.out_path, write_json(with_layer(file, cal, ap, s, o.layer)), what);
  }
  progress.finish_step();

  std::cout << o.qkv_path << ": B=" << t.batch << " H=" << t.heads << " Lq=" << t.lq << " Lk=" << t.lk << " D=" << t.dim
            << "; blocks " << o.cfg.block_q << "/" << o.cfg.block_k << ", Nk = " << cal.k_blocks
            << "\nrule family: " << cal.family << (cal.budget_bound ? " (the budget binds)" : "") << "\n\n";
  std::printf("%-6s %-12s %-9s %-9s %-9s %s\n", "head", cal.family == "topk" ? "topk" : "top_p", "density", "mass",
              "O_s err", "target met");
  for (std::size_t h = 0; h < cal.heads.size(); ++h) {
    const HeadCalibration& hc = cal.heads[h];
    std::printf("h%-5zu %-12.6g %-9.4f %-9.4f %-9.4f %s\n", h, hc.param, hc.density, hc.mass, hc.error,
                hc.met ? "yes" : "no");
  }
  std::printf("\nmean density %.4f; wrote layer '%s' to %s (load with sla.apply_rules / sla.load_rules) and %s\n",
              cal.mean_density, o.layer.c_str(), o.out_path.c_str(), o.png_path.c_str());
  return kExitOk;
}

}  // namespace sla_cli
