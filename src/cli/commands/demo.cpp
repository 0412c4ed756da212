// `sla demo`: SLA against dense attention on a video-token workload, with a report and a block-map picture.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <sstream>

#include "cli_error.h"
#include "commands/backend_select.h"
#include "commands/commands.h"
#include "commands/output_checks.h"
#include "device/memory_limits.h"
#include "device/wall_timer.h"
#include "formats/npy_reader.h"
#include "formats/png_writer.h"
#include "report/blockmap_image.h"
#include "report/progress.h"
#include "report/report.h"
#include "workload/projection_fit.h"
#include "workload/reference_attention.h"
#include "workload/rule_calibration.h"
#include "workload/sla_runner.h"
#include "workload/synthetic_video.h"

namespace sla_cli {

namespace {

// Work budgets (multiply-adds) that keep the demo interactive on a small CPU.
constexpr double kReferenceBudget = 2e10;  // the independent dense reference on sampled rows
constexpr double kCpuDenseBudget = 4e10;   // the library's dense attention on the CPU (all rows)
constexpr int64_t kMinReferenceRows = 256;

struct DemoInputs {
  int64_t batch = 1, heads = 0, lq = 0, lk = 0, dim = 0, dv = 0;
  std::vector<float> q, k, v;       // (B,H,L,D) row-major
  std::vector<std::string> labels;  // per (b,h)
  std::string description;
};

// Host bytes of one demo run, roughly: Q, K, V as floats, the backend's copies of them, and O, O_l and the dense
// output with their double copies for the metrics. Checked before anything is allocated.
double demo_bytes(double bh, double lq, double lk, double dim, double dv) {
  const double inputs = bh * (lq * dim + lk * dim + lk * dv);
  const double outputs = bh * lq * dv;
  return 8.0 * inputs + 40.0 * outputs;
}

void check_synthetic_size(const DemoOptions& o) {
  const double tokens = static_cast<double>(o.frames) * o.height * o.width;
  const double bytes = demo_bytes(static_cast<double>(o.heads), tokens, tokens, o.dim, o.dim);
  std::ostringstream what;
  what << "--grid " << o.frames << "x" << o.height << "x" << o.width << " (" << static_cast<long long>(tokens)
       << " tokens, " << o.heads << " heads, D=" << o.dim << ")";
  const std::string shortfall = host_memory_shortfall(bytes, what.str());
  if (!shortfall.empty()) throw UsageError(shortfall + "; choose a smaller grid");
  // The block-map tables index query and key blocks with int32 (docs/SPEC.md section 1).
  if (tokens / 64 > 2147483647.0)
    throw UsageError(what.str() + ": more key blocks than the int32 block-map tables hold");
}

DemoInputs load_inputs(const DemoOptions& o) {
  DemoInputs in;
  if (!o.qkv_path.empty()) {
    QkvTensors t = load_qkv(o.qkv_path);
    const std::string shortfall = host_memory_shortfall(
        demo_bytes(static_cast<double>(t.batch * t.heads), t.lq, t.lk, t.dim, t.dv), "--qkv " + o.qkv_path);
    if (!shortfall.empty()) throw RunError(shortfall);
    in.batch = t.batch;
    in.heads = t.heads;
    in.lq = t.lq;
    in.lk = t.lk;
    in.dim = t.dim;
    in.dv = t.dv;
    in.q = std::move(t.q);
    in.k = std::move(t.k);
    in.v = std::move(t.v);
    for (int64_t b = 0; b < in.batch; ++b) {
      for (int64_t h = 0; h < in.heads; ++h) {
        in.labels.push_back((in.batch > 1 ? "b" + std::to_string(b) + " " : std::string()) + "h" + std::to_string(h));
      }
    }
    std::ostringstream os;
    os << o.qkv_path << ": B=" << in.batch << " H=" << in.heads << " Lq=" << in.lq << " Lk=" << in.lk << " D=" << in.dim
       << " Dv=" << in.dv << " (" << sla::dtype_name(t.source_dtype) << ")";
    in.description = os.str();
    return in;
  }
  const VideoGrid grid{o.frames, o.height, o.width};
  VideoWorkload w = make_video_workload(grid, o.heads, o.dim, o.seed);
  in.heads = w.heads;
  in.lq = in.lk = w.tokens;
  in.dim = in.dv = w.dim;
  in.q = std::move(w.q);
  in.k = std::move(w.k);
  in.v = std::move(w.v);
  for (int64_t h = 0; h < in.heads; ++h) in.labels.push_back("h" + std::to_string(h) + " " + w.head_labels[h]);
  std::ostringstream os;
  os << "synthetic video tokens, grid " << o.frames << "x" << o.height << "x" << o.width << " = " << w.tokens
     << " tokens (raster order), " << in.heads << " heads, D=" << in.dim << ", seed " << o.seed;
  in.description = os.str();
  return in;
}

// Q, K, V on one device and the SLA runner for them.
struct DeviceProblem {
  sla::Device device = sla::Device::cpu;
  sla::DType dtype = sla::DType::f32;
  OwnedTensor q, k, v;
  std::unique_ptr<SlaRunner> sla;
};

DeviceProblem place(const DemoInputs& in, const sla::Config& cfg, sla::Device device, int threads) {
  DeviceProblem p;
  p.device = device;
  // The CUDA kernels take bf16/f16; the CPU reference runs f32.
  p.dtype = device == sla::Device::cuda ? sla::DType::bf16 : sla::DType::f32;
  p.q = OwnedTensor::from_floats(in.q, p.dtype, {in.batch, in.heads, in.lq, in.dim}, device);
  p.k = OwnedTensor::from_floats(in.k, p.dtype, {in.batch, in.heads, in.lk, in.dim}, device);
  p.v = OwnedTensor::from_floats(in.v, p.dtype, {in.batch, in.heads, in.lk, in.dv}, device);
  p.sla = std::make_unique<SlaRunner>(p.q.view(), p.k.view(), p.v.view(), cfg, SlaRunner::Mode::save_forward, threads);
  return p;
}

// Rows `rows` of every (b,h) of a (BH, L, Dv) tensor.
std::vector<double> gather_rows(const std::vector<double>& all, int64_t bh, int64_t l, int64_t dv,
                                const std::vector<int64_t>& rows) {
  std::vector<double> out(bh * rows.size() * dv);
  for (int64_t h = 0; h < bh; ++h) {
    for (std::size_t r = 0; r < rows.size(); ++r) {
      std::copy_n(all.begin() + (h * l + rows[r]) * dv, dv, out.begin() + (h * rows.size() + r) * dv);
    }
  }
  return out;
}

// Relative L2 error of `got` against `want` for head h (both (BH, rows, Dv)).
double rel_l2(const std::vector<double>& got, const std::vector<double>& want, int64_t h, int64_t per_head) {
  double err = 0, ref = 0;
  for (int64_t i = h * per_head; i < (h + 1) * per_head; ++i) {
    err += (got[i] - want[i]) * (got[i] - want[i]);
    ref += want[i] * want[i];
  }
  return ref > 0 ? std::sqrt(err / ref) : std::sqrt(err);
}

std::string describe_config(const sla::Config& cfg, const sla::BlockMapShape& s) {
  std::ostringstream os;
  os << sla::variant_name(cfg.variant) << " variant, " << sla::feature_map_name(cfg.feature_map) << " phi, blocks "
     << cfg.block_q << "/" << cfg.block_k << ", topk " << cfg.topk << " -> T = " << s.critical << " of " << s.k_blocks
     << " key blocks per query block (" << s.q_blocks << " query blocks)";
  if (s.negligible > 0) os << ", " << s.negligible << " negligible";
  return os.str();
}

std::string speedup_note(double dense_ms, double sla_ms) {
  if (!(sla_ms > 0)) return "";
  char buf[96];
  const double r = dense_ms / sla_ms;
  if (r >= 1) {
    std::snprintf(buf, sizeof buf, "SLA (block map + forward) is %.2fx faster", r);
  } else {
    std::snprintf(buf, sizeof buf, "SLA (block map + forward) is %.2fx slower at this small size", 1 / r);
  }
  return buf;
}

// Places the problem on the chosen device. With --backend auto, a GPU that rejects the problem (a head dim or
// dtype it was not built for) hands it to the CPU, and `backend` records why.
DeviceProblem place_with_fallback(const DemoInputs& in, const DemoOptions& o, BackendDecision* backend) {
  if (backend->device == sla::Device::cuda) {
    try {
      return place(in, o.cfg, sla::Device::cuda, o.threads);
    } catch (const UnsupportedError& e) {
      if (o.backend == BackendChoice::cuda) throw;
      *backend = {sla::Device::cpu, std::string("auto: the GPU cannot run this problem: ") + e.what()};
    }
  }
  return place(in, o.cfg, sla::Device::cpu, o.threads);
}

// One (b,h) of a (B,H,L,D) tensor as a (1,1,L,D) view.
sla::TensorView head_view(const OwnedTensor& t, int64_t bh) {
  const sla::TensorView all = t.view();
  const int64_t per_head = all.shape[2] * all.shape[3];
  char* base = static_cast<char*>(all.data) + bh * per_head * static_cast<int64_t>(sla::dtype_size(all.dtype));
  return contiguous_view(base, all.dtype, {1, 1, all.shape[2], all.shape[3]}, all.device);
}

// The library's dense attention, timed: the same API with topk = 1 is exact softmax attention (docs/SPEC.md
// invariant 1), so SLA and dense run on the same backend and code path. On the CPU it runs one head per call so
// that the progress can count heads (the backend computes every head independently, so the output is the same);
// the time is the sum of the calls.
std::vector<double> run_library_dense(const DeviceProblem& dp, const DemoOptions& o, Progress& progress, double* ms) {
  sla::Config dense_cfg = o.cfg;
  dense_cfg.topk = 1.0;
  dense_cfg.negligible = 0.0;
  if (dp.device == sla::Device::cuda) {
    SlaRunner dense(dp.q.view(), dp.k.view(), dp.v.view(), dense_cfg, SlaRunner::Mode::inference, o.threads);
    dense.predict_block_map();
    dense.forward();  // untimed warm-up
    *ms = timed_ms(dp.device, [&] {
      dense.forward();
    });
    return dense.output().to_doubles();
  }
  const sla::TensorView q = dp.q.view();
  const int64_t bh_count = q.shape[0] * q.shape[1];
  std::vector<double> out;
  *ms = 0;
  for (int64_t bh = 0; bh < bh_count; ++bh) {
    SlaRunner dense(head_view(dp.q, bh), head_view(dp.k, bh), head_view(dp.v, bh), dense_cfg,
                    SlaRunner::Mode::inference, o.threads);
    dense.predict_block_map();
    *ms += timed_ms(dp.device, [&] {
      dense.forward();
    });
    const std::vector<double> head = dense.output().to_doubles();
    out.insert(out.end(), head.begin(), head.end());
    progress.count(bh + 1, bh_count);
  }
  return out;
}

// The inputs as the backend saw them (rounded to bf16 on the GPU), so that errors measure SLA, not input rounding.
std::vector<float> as_seen(const OwnedTensor& t) {
  const std::vector<double> d = t.to_doubles();
  return std::vector<float>(d.begin(), d.end());
}

HeadStats head_stats(int64_t h, const std::string& label, const BlockClasses& classes, const ReferenceRows& ref,
                     const std::vector<double>& o_sla, const ProjectionFit& fit, int64_t dv) {
  HeadStats s;
  s.label = label;
  double crit = 0, negl = 0;
  for (int64_t i = 0; i < classes.q_blocks; ++i) {
    crit += std::min<int64_t>(classes.count[h * classes.q_blocks + i], classes.critical);
    if (classes.negligible > 0) {
      negl += std::min<int64_t>(classes.negl_count[h * classes.q_blocks + i], classes.negligible);
    }
  }
  const double pairs = static_cast<double>(classes.q_blocks * classes.k_blocks);
  s.frac_critical = crit / pairs;
  s.frac_negligible = negl / pairs;
  s.frac_marginal = 1.0 - s.frac_critical - s.frac_negligible;
  s.sparsity = 1.0 - s.frac_critical;
  const int64_t nrows = static_cast<int64_t>(ref.rows.size());
  for (int64_t r = 0; r < nrows; ++r) {
    s.critical_mass += ref.critical_mass[h * nrows + r] / nrows;
    s.negligible_mass += ref.negligible_mass[h * nrows + r] / nrows;
    s.best_mass += ref.best_mass[h * nrows + r] / nrows;
  }
  s.err_sparse = rel_l2(o_sla, ref.out, h, nrows * dv);
  if (!fit.rel_error_per_head.empty()) s.err_fitted = fit.rel_error_per_head[h];
  return s;
}

// --compare-rules: fixed topk against per-head topk and per-head top_p calibrated on these inputs with the fixed
// rule's density as the budget (docs/BLOCK_MAP.md), all measured the same way on the CPU.
void print_rule_comparison(const AttentionProblem& ap, const DemoOptions& o, int64_t rows,
                           const std::vector<std::string>& labels, bool counts) {
  CalibrationSettings s;
  s.rows = rows;
  s.threads = o.threads;
  s.target = "error";
  s.quality = 1e-6;  // unreachable: the budget decides
  sla::Config fixed = o.cfg;
  const RuleQuality base = evaluate_rule(ap, fixed, s);
  s.budget = base.mean_density;
  struct Column {
    std::string name;
    RuleQuality q;
  };
  std::vector<Column> cols = {{"fixed topk", base}};
  Progress progress(2, counts);
  for (const char* fam : {"topk", "top_p"}) {
    s.rule = fam;
    char what[96];
    std::snprintf(what, sizeof what, "calibrating per-head %s at average density %.4f", fam, s.budget);
    progress.step(what);
    const LayerCalibration cal = calibrate_layer(ap, o.cfg, s, [&](int64_t done, int64_t total, double fraction) {
      progress.count(done, total, fraction);
    });
    cols.push_back({std::string("per-head ") + fam, evaluate_rule(ap, cal.config, s)});
  }
  progress.finish_step();
  std::printf("\nBlock-map rules at the same average density (calibrated on these inputs; CPU, %lld rows per head)\n",
              static_cast<long long>(rows));
  std::printf("%-16s", "head");
  for (const Column& c : cols) std::printf(" | %-26s", c.name.c_str());
  std::printf("\n%-16s", "");
  for (std::size_t i = 0; i < cols.size(); ++i) std::printf(" | %-8s %-9s %-8s", "density", "crit.mass", "O_s err");
  std::printf("\n");
  for (int64_t h = 0; h < ap.heads; ++h) {
    std::printf("%-16s",
                h < static_cast<int64_t>(labels.size()) ? labels[h].c_str() : ("h" + std::to_string(h)).c_str());
    for (const Column& c : cols) std::printf(" | %-8.4f %-9.4f %-8.4f", c.q.density[h], c.q.mass[h], c.q.error[h]);
    std::printf("\n");
  }
  std::printf("%-16s", "mean");
  for (const Column& c : cols) std::printf(" | %-8.4f %-9.4f %-8.4f", c.q.mean_density, c.q.mean_mass, c.q.mean_error);
  std::printf("\n");
}

}  // namespace

int run_demo(const DemoOptions& o) {
  check_output_path("--png", o.png_path);
  if (!o.qkv_path.empty()) check_distinct_files("--png", o.png_path, "--qkv", o.qkv_path);
  if (o.qkv_path.empty()) check_synthetic_size(o);
  const bool counts = o.progress || stderr_is_terminal();
  Progress progress(6, counts);
  progress.step(o.qkv_path.empty() ? "building the synthetic video workload" : "reading " + o.qkv_path);
  const DemoInputs in = load_inputs(o);
  const int64_t bh = in.batch * in.heads;

  BackendDecision backend = choose_backend(o.backend);
  const DeviceProblem dp = place_with_fallback(in, o, &backend);
  const std::string dev = describe_device(dp.device);
  DemoReport report;
  report.workload = in.description;
  report.backend = dev + ", " + sla::dtype_name(dp.dtype) + " inputs";
  report.backend_reason = backend.reason;
  report.config = describe_config(o.cfg, dp.sla->block_map().shape);

  progress.step("SLA block map and forward on " + dev + " (" + std::to_string(bh) + " heads)");
  if (dp.device == sla::Device::cuda) {  // untimed warm-up: timings exclude one-time start-up costs
    dp.sla->predict_block_map();
    dp.sla->forward();
  }
  const double map_ms = timed_ms(dp.device, [&] {
    dp.sla->predict_block_map();
  });
  const double fwd_ms = timed_ms(dp.device, [&] {
    dp.sla->forward();
  });
  report.timings.push_back({"SLA block map", map_ms, ""});
  report.timings.push_back({"SLA forward", fwd_ms, ""});

  std::vector<double> dense_api;
  const double dense_work = static_cast<double>(bh) * in.lq * in.lk * (in.dim + in.dv);
  if (dp.device == sla::Device::cuda || dense_work <= kCpuDenseBudget) {
    progress.step("dense attention (SLA with topk = 1) on " + dev);
    double dense_ms = 0;
    dense_api = run_library_dense(dp, o, progress, &dense_ms);
    report.timings.push_back({"dense attention (topk = 1)", dense_ms, speedup_note(dense_ms, map_ms + fwd_ms)});
  } else {
    progress.step("skipping the library's dense attention (too slow on the CPU for this size)");
    report.timings.push_back({"dense attention (topk = 1)", -1, "too slow on the CPU for this size"});
  }

  // The independent reference on evenly spaced rows: dense output and the attention mass per block class.
  const BlockClasses classes = classes_of(dp.sla->block_map(), o.cfg);
  int64_t max_rows = o.ref_rows;
  if (max_rows == 0) {
    const double per_row = static_cast<double>(bh) * in.lk * (in.dim + in.dv);
    max_rows = std::max<int64_t>(kMinReferenceRows, static_cast<int64_t>(kReferenceBudget / per_row));
  }
  max_rows = std::min(max_rows, in.lq);
  progress.step("exact dense reference on the CPU (" + std::to_string(max_rows) + " rows x " + std::to_string(bh) +
                " heads)");
  const bool exact_inputs = dp.dtype == sla::DType::f32;
  const std::vector<float> q_seen = exact_inputs ? std::vector<float>() : as_seen(dp.q);
  const std::vector<float> k_seen = exact_inputs ? std::vector<float>() : as_seen(dp.k);
  const std::vector<float> v_seen = exact_inputs ? std::vector<float>() : as_seen(dp.v);
  AttentionProblem ap;
  ap.batch = in.batch;
  ap.heads = in.heads;
  ap.lq = in.lq;
  ap.lk = in.lk;
  ap.dim = in.dim;
  ap.dv = in.dv;
  ap.scale = o.cfg.scale > 0 ? o.cfg.scale : 1.0 / std::sqrt(static_cast<double>(in.dim));
  ap.q = exact_inputs ? in.q.data() : q_seen.data();
  ap.k = exact_inputs ? in.k.data() : k_seen.data();
  ap.v = exact_inputs ? in.v.data() : v_seen.data();
  const ReferenceRows ref = dense_reference(ap, classes, max_rows, o.threads, [&](int64_t done, int64_t total) {
    progress.count(done, total);
  });
  const int64_t nrows = static_cast<int64_t>(ref.rows.size());
  report.rows_checked = nrows;
  report.rows_total = in.lq;

  progress.step("metrics and the least-squares projection fit");
  const std::vector<double> o_sla = gather_rows(dp.sla->output().to_doubles(), bh, in.lq, in.dv, ref.rows);
  const std::vector<double> o_lin = gather_rows(dp.sla->linear_output().to_doubles(), bh, in.lq, in.dv, ref.rows);
  const ProjectionFit fit = fit_projection(o_sla, o_lin, ref.out, bh, nrows, in.dv);
  for (int64_t h = 0; h < bh; ++h) report.heads.push_back(head_stats(h, in.labels[h], classes, ref, o_sla, fit, in.dv));
  if (!dense_api.empty()) {
    const std::vector<double> d = gather_rows(dense_api, bh, in.lq, in.dv, ref.rows);
    for (int64_t h = 0; h < bh; ++h)
      report.dense_check = std::max(report.dense_check, rel_l2(d, ref.out, h, nrows * in.dv));
  }
  if (!exact_inputs) {
    report.notes.push_back("Note: " + std::string(sla::dtype_name(dp.dtype)) +
                           " output rounding (~0.4% per element) is part of the errors on the GPU.");
  }

  progress.step("writing " + o.png_path);
  write_png(render_block_map(classes, bh, in.labels), o.png_path, "--png " + o.png_path);
  report.png_path = o.png_path;
  progress.finish_step();

  print_demo_report(report, std::cout);
  if (o.compare_rules) {
    std::cout.flush();
    print_rule_comparison(ap, o, std::min<int64_t>(nrows, 256), in.labels, counts);
  }
  // Finite inputs (load_qkv checks them) should give finite numbers; a NaN here is not a result to pass on.
  for (const HeadStats& h : report.heads) {
    if (!std::isfinite(h.err_sparse) || !std::isfinite(h.critical_mass)) {
      std::cerr << "sla: error: head " << h.label
                << " has non-finite metrics (the SLA output or the reference holds NaN or Inf); the report above is "
                   "not valid\n";
      return kExitFailure;
    }
  }
  return kExitOk;
}

}  // namespace sla_cli
