// `sla calibrate`: per-head block-map rules for one layer from captured Q/K/V (docs/BLOCK_MAP.md, "Calibration"),
// written as the JSON file python's sla.apply_rules loads, with a report and a block-map picture of the choice.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "cli_error.h"
#include "commands/commands.h"
#include "formats/npy_reader.h"
#include "formats/png_writer.h"
#include "report/blockmap_image.h"
#include "report/progress.h"
#include "workload/rule_calibration.h"

namespace sla_cli {

int run_calibrate(const CalibrateOptions& o) {
  check_png_path_writable(o.png_path);
  Progress progress(4);
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

  CalibrationSettings s;
  s.target = o.target;
  s.quality = o.quality > 0 ? o.quality : (o.target == "mass" ? 0.9 : 0.1);
  s.rule = o.rule;
  s.budget = o.budget;
  s.rows = std::min(o.rows, t.lq);
  s.threads = o.threads;
  progress.step("calibrating " + std::to_string(t.heads) + " heads (" + o.rule + ", target " + o.target + " " +
                std::to_string(s.quality) + "), " + std::to_string(s.rows) + " sampled rows per head");
  progress.finish_step();
  const LayerCalibration cal = calibrate_layer(ap, o.cfg, s, {});

  progress.step("writing " + o.out_path);
  {
    std::ofstream f(o.out_path);
    if (!f) throw RunError("--out: cannot open '" + o.out_path + "' for writing");
    f << calibration_json(cal, ap, s, o.layer);
    if (!f) throw RunError("--out: writing '" + o.out_path + "' failed");
  }
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
  write_png(render_block_map(classes, t.batch * t.heads, labels), o.png_path);
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
  std::printf("\nmean density %.4f; wrote %s (load with sla.apply_rules / sla.load_rules) and %s\n", cal.mean_density,
              o.out_path.c_str(), o.png_path.c_str());
  return kExitOk;
}

}  // namespace sla_cli
