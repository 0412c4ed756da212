// The `sla` command line on CLI11: one App with the subcommands demo, bench and info; their flags (declared once,
// with value name, default and help, in demo_flags() and bench_flags()), the checks of their values, and the
// conversion to DemoOptions / BenchOptions.
#include "commands/command_options.h"

#include <CLI/CLI.hpp>

#include <limits>
#include <memory>
#include <sstream>

#include "cli_error.h"
#include "commands/flag_checks.h"
#include "sla/sla.h"

#ifndef SLA_VERSION
#define SLA_VERSION "unknown"  // set by CMake
#endif

namespace sla_cli {

const char* backend_choice_name(BackendChoice b) {
  switch (b) {
    case BackendChoice::automatic: return "auto";
    case BackendChoice::cpu: return "cpu";
    case BackendChoice::cuda: return "cuda";
  }
  return "invalid-backend";
}

namespace {

constexpr const char* kIntro =
    "SLA (Sparse-Linear Attention, arXiv 2509.24006) splits attention into a few critical key blocks computed\n"
    "exactly (sparse softmax) and the rest approximated by a cheap linear-attention branch.\n";

constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxSeed = std::numeric_limits<int64_t>::max();

// The flags as typed, before the checks that involve several flags.
struct ConfigText {
  std::string variant = "global", feature_map = "softmax", block_q, block_k = "64";
  double topk = 0, negligible = 0;
};

struct DemoText {
  std::string grid = "8x16x24", backend = "auto";
  DemoOptions o;
  ConfigText cfg;
};

struct CalibrateText {
  std::string block_q = "64", block_k = "64";
  CalibrateOptions o;
};

struct BenchText {
  std::string shape = "1,4,4096,64", backend = "auto";
  int64_t b = 0, h = 0, l = 0, d = 0, lk = 0;
  BenchOptions o;
  ConfigText cfg;
};

// Flags shared by demo and bench: the SLA layer's Config.
void config_flags(CLI::App& app, ConfigText* c, double topk_default, const std::string& block_q_default) {
  c->topk = topk_default;
  c->block_q = block_q_default;
  std::ostringstream topk_text;
  topk_text << topk_default;
  add_value_flag(app, "--variant", "global|complement", &c->variant, "global",
                 "linear branch over all keys (public main branch) or over the marginal blocks only (paper, SLA-1)",
                 one_of({"global", "complement"}));
  add_value_flag(app, "--feature-map", "softmax|elu|relu", &c->feature_map, "softmax",
                 "feature map phi of the linear branch", one_of({"softmax", "elu", "relu"}));
  add_value_flag(app, "--topk", "FRACTION", &c->topk, topk_text.str(),
                 "fraction of key blocks each query block attends to exactly, in (0, 1]",
                 number_in(Range{0.0, 1.0, true, false}));
  add_value_flag(app, "--block-q", "64|128", &c->block_q, block_q_default, "query rows per block",
                 one_of({"64", "128"}));
  add_value_flag(app, "--block-k", "64|128", &c->block_k, "64", "key rows per block", one_of({"64", "128"}));
  add_value_flag(app, "--negligible", "FRACTION", &c->negligible, "0",
                 "fraction of key blocks skipped entirely (complement variant only), in [0, 1-topk]",
                 number_in(Range{0.0, 1.0}));
}

sla::Config to_config(const ConfigText& c) {
  sla::Config cfg;
  cfg.variant = c.variant == "global" ? sla::Variant::global : sla::Variant::complement;
  cfg.feature_map = c.feature_map == "softmax" ? sla::FeatureMap::softmax
                    : c.feature_map == "elu"   ? sla::FeatureMap::elu
                                               : sla::FeatureMap::relu;
  cfg.topk = c.topk;
  cfg.block_q = std::stoi(c.block_q);
  cfg.block_k = std::stoi(c.block_k);
  cfg.negligible = c.negligible;
  // k_l lies in [0, 1 - topk] and only the complement variant skips blocks (docs/SPEC.md section 6).
  const Range negligible_range{0.0, 1.0 - cfg.topk};
  if (cfg.negligible > negligible_range.hi) {
    std::ostringstream os;
    os << "--negligible: expected a number in " << describe_range(negligible_range) << " (1 - topk), got '"
       << c.negligible << "'";
    throw UsageError(os.str());
  }
  if (cfg.negligible > 0 && cfg.variant != sla::Variant::complement) {
    std::ostringstream os;
    os << "--negligible: only the complement variant skips blocks; expected 0 with --variant global, got "
       << c.negligible;
    throw UsageError(os.str());
  }
  return cfg;
}

BackendChoice to_backend(const std::string& b) {
  return b == "cpu" ? BackendChoice::cpu : b == "cuda" ? BackendChoice::cuda : BackendChoice::automatic;
}

void demo_flags(CLI::App& app, DemoText* t) {
  DemoOptions& o = t->o;
  add_value_flag(app, "--grid", "TxHxW", &t->grid, "8x16x24",
                 "synthetic workload: latent video grid (frames x height x width), raster order",
                 int_list('x', 3, "TxHxW"));
  add_value_flag(app, "--heads", "N", &o.heads, "6",
                 "synthetic workload: heads (local, spatial, temporal, global, then the same kinds wider)",
                 integer_in(1, 64));
  add_value_flag(app, "--dim", "D", &o.dim, "64", "synthetic workload: head dim", integer_in(1, 1024));
  add_value_flag(app, "--seed", "N", &o.seed, "0", "synthetic workload: random seed", integer_in(0, kMaxSeed));
  add_value_flag(app, "--qkv", "FILE", &o.qkv_path, "",
                 "captured tensors instead of the synthetic workload: .npy of shape (3,B,H,L,D) or (3,H,L,D), or "
                 ".npz with arrays q, k, v of shape (B,H,L,D) or (H,L,D); f16/f32/f64 (docs/CAPTURE_QKV.md)");
  o.png_path = "sla_blockmap.png";
  add_value_flag(app, "--png", "PATH", &o.png_path, "sla_blockmap.png", "where to write the block-map picture");
  add_value_flag(app, "--backend", "auto|cpu|cuda", &t->backend, "auto",
                 "auto: the GPU when it is usable and supports the config, else CPU", one_of({"auto", "cpu", "cuda"}));
  add_value_flag(app, "--ref-rows", "N", &o.ref_rows, "0",
                 "query rows per head checked against dense attention (evenly spaced); 0: all rows that fit a fixed "
                 "budget",
                 integer_in(0, kMaxInt));
  add_value_flag(app, "--threads", "N", &o.threads, "0", "CPU threads; 0: all", integer_in(0, 4096));
  add_switch(app, "--progress", &o.progress,
             "show counts and the estimated time left of long steps on stderr also when it is not a terminal (on a "
             "terminal they show anyway)");
  add_switch(app, "--compare-rules", &o.compare_rules,
             "also compare fixed topk with calibrated per-head topk and top_p at the same average density "
             "(docs/BLOCK_MAP.md; CPU, calibrated on these inputs)");
  config_flags(app, &t->cfg, 0.1, "64");
  app.footer(
      "Builds a synthetic video-token workload (or loads captured Q/K/V with --qkv), predicts the SLA block map,\n"
      "runs SLA and dense attention, and reports per head: sparsity, the share of the dense attention mass the\n"
      "critical blocks cover, the error of SLA's sparse branch against dense attention, and timings. Writes a\n"
      "picture of the block map (critical / marginal / negligible key blocks per query block) as a PNG.\n\n"
      "Examples:\n"
      "  sla demo\n"
      "  sla demo --topk 0.05 --variant complement --negligible 0.5 --png map.png\n"
      "  sla demo --qkv captured_layer10.npz --block-q 128\n"
      "  sla demo --compare-rules\n");
}

DemoOptions finish_demo(const CLI::App& app, DemoText& t) {
  DemoOptions o = t.o;
  std::istringstream grid(t.grid);
  std::string item;
  int64_t* dims[] = {&o.frames, &o.height, &o.width};
  for (int64_t* d : dims) {
    std::getline(grid, item, 'x');
    *d = std::stoll(item);
  }
  if (!o.qkv_path.empty()) {
    for (const char* synthetic_only : {"--grid", "--heads", "--dim", "--seed"}) {
      if (app.count(synthetic_only) > 0) {
        throw UsageError(std::string(synthetic_only) +
                         ": describes the synthetic workload; expected no such flag together with --qkv (the file "
                         "gives the shapes)");
      }
    }
  }
  if (o.png_path.empty()) throw UsageError("--png: expected a file path, got ''");
  o.backend = to_backend(t.backend);
  o.cfg = to_config(t.cfg);
  return o;
}

void bench_flags(CLI::App& app, BenchText* t) {
  BenchOptions& o = t->o;
  add_value_flag(app, "--shape", "B,H,L,D", &t->shape, "1,4,4096,64", "batch, heads, sequence length, head dim",
                 int_list(',', 4, "B,H,L,D"));
  add_value_flag(app, "--b", "N", &t->b, "", "batch (overrides --shape)", integer_in(1, kMaxInt));
  add_value_flag(app, "--h", "N", &t->h, "", "heads (overrides --shape)", integer_in(1, kMaxInt));
  add_value_flag(app, "--l", "N", &t->l, "", "query length (overrides --shape)", integer_in(1, kMaxInt));
  add_value_flag(app, "--d", "N", &t->d, "", "head dim (overrides --shape)", integer_in(1, 1024));
  add_value_flag(app, "--lk", "N", &t->lk, "", "key length (default: the query length)", integer_in(1, kMaxInt));
  add_value_flag(app, "--dtype", "auto|f32|f64|bf16|f16", &o.dtype, "auto",
                 "input dtype; auto: bf16 on the GPU, f32 on the CPU", one_of({"auto", "f32", "f64", "bf16", "f16"}));
  add_value_flag(app, "--backend", "auto|cpu|cuda", &t->backend, "auto",
                 "auto: the GPU when it is usable and supports the problem, else CPU", one_of({"auto", "cpu", "cuda"}));
  add_value_flag(app, "--warmup", "N", &o.warmup, "1", "untimed runs before timing", integer_in(0, 10000));
  add_value_flag(app, "--iters", "N", &o.iters, "5", "timed runs; the median is reported", integer_in(1, 100000));
  add_switch(app, "--backward", &o.backward, "also time forward + backward");
  add_switch(app, "--json", &o.json, "print one JSON object instead of a table");
  add_switch(app, "--progress", &o.progress,
             "show counts and the estimated time left of long steps on stderr also when it is not a terminal (on a "
             "terminal they show anyway)");
  add_value_flag(app, "--seed", "N", &o.seed, "0", "seed of the random inputs", integer_in(0, kMaxSeed));
  add_value_flag(app, "--threads", "N", &o.threads, "0", "CPU threads; 0: all", integer_in(0, 4096));
  config_flags(app, &t->cfg, 0.05, "128");
  app.footer(
      "Times the block-map prediction, the forward pass and (with --backward) forward + backward on random\n"
      "inputs. Reports the median of --iters runs (CUDA events on the GPU, a steady clock on the CPU).\n\n"
      "Examples:\n"
      "  sla bench --shape 1,4,4096,64 --backend cpu\n"
      "  sla bench --shape 1,12,32760,128 --topk 0.05 --dtype bf16 --backward --json   # Wan2.1 480p on a GPU\n");
}

BenchOptions finish_bench(const CLI::App& app, BenchText& t) {
  BenchOptions o = t.o;
  std::istringstream shape(t.shape);
  std::string item;
  int64_t dims[4];
  for (int64_t& d : dims) {
    std::getline(shape, item, ',');
    d = std::stoll(item);
  }
  o.batch = app.count("--b") ? t.b : dims[0];
  o.heads = app.count("--h") ? t.h : dims[1];
  o.lq = app.count("--l") ? t.l : dims[2];
  o.dim = app.count("--d") ? t.d : dims[3];
  o.lk = app.count("--lk") ? t.lk : o.lq;
  if (o.dim > 1024) throw UsageError("--shape: expected a head dim D in [1, 1024], got " + std::to_string(o.dim));
  o.backend = to_backend(t.backend);
  o.cfg = to_config(t.cfg);
  return o;
}

void calibrate_flags(CLI::App& app, CalibrateText* t) {
  CalibrateOptions& o = t->o;
  add_value_flag(app, "--qkv", "FILE", &o.qkv_path, "",
                 "captured Q/K/V of one layer: .npy of shape (3,B,H,L,D) or (3,H,L,D), or .npz with arrays q, k, v "
                 "(docs/CAPTURE_QKV.md); required")
      ->required();
  add_value_flag(app, "--out", "PATH", &o.out_path, "sla_rules.json",
                 "the calibration file (JSON; python's sla.apply_rules loads it). An existing file gets this layer "
                 "added (or replaced, same --layer) and keeps its other layers; its settings must match this run's");
  add_value_flag(app, "--png", "PATH", &o.png_path, "sla_calibration.png",
                 "block-map picture of the chosen per-head rules");
  add_value_flag(app, "--layer", "NAME", &o.layer, "", "the layer's name in the file (module name in the model)");
  add_value_flag(app, "--target", "mass|error", &o.target, "mass",
                 "mass: mean attention mass in the critical blocks >= quality; error: RMS over sampled rows of "
                 "|O_s - O| / |O| <= quality",
                 one_of({"mass", "error"}));
  add_value_flag(app, "--quality", "X", &o.quality, "0.9 for mass, 0.1 for error", "the target's level",
                 number_in(Range{0.0, 1e9, true, false}));
  add_value_flag(app, "--rule", "topk|top_p|auto", &o.rule, "top_p",
                 "per-head topk, per-head top_p, or the cheaper of the two", one_of({"topk", "top_p", "auto"}));
  add_value_flag(app, "--budget", "DENSITY", &o.budget, "0",
                 "the most average density (critical blocks / Nk over heads); 0: no budget",
                 number_in(Range{0.0, 1.0}));
  add_value_flag(app, "--block-q", "64|128", &t->block_q, "64", "query rows per block", one_of({"64", "128"}));
  add_value_flag(app, "--block-k", "64|128", &t->block_k, "64", "key rows per block", one_of({"64", "128"}));
  add_value_flag(app, "--rows", "N", &o.rows, "256", "sampled query rows per head", integer_in(1, kMaxInt));
  add_value_flag(app, "--threads", "N", &o.threads, "0", "CPU threads; 0: all", integer_in(0, 4096));
  add_switch(app, "--progress", &o.progress,
             "show counts and the estimated time left of long steps on stderr also when it is not a terminal (on a "
             "terminal they show anyway)");
  app.footer(
      "Chooses per head the cheapest block-map rule parameter (topk fraction or top_p) that meets the quality\n"
      "target on sampled query rows against dense attention, under an optional average-density budget, and\n"
      "writes it as a calibration file (docs/BLOCK_MAP.md); one run per layer, each adding its layer to --out.\n"
      "Runs on the CPU.\n\n"
      "Examples:\n"
      "  sla calibrate --qkv layer10.npz --layer blocks.10.attn1 --out rules.json\n"
      "  sla calibrate --qkv layer11.npz --layer blocks.11.attn1 --out rules.json   # rules.json: both layers\n"
      "  sla calibrate --qkv layer10.npz --rule topk --target error --quality 0.05 --budget 0.1\n");
}

CalibrateOptions finish_calibrate(const CLI::App& app, CalibrateText& t) {
  CalibrateOptions o = t.o;
  if (o.target == "mass" && app.count("--quality") > 0 && o.quality > 1.0) {
    std::ostringstream os;
    os << "--quality: expected a mass share in (0, 1] with --target mass, got " << o.quality;
    throw UsageError(os.str());
  }
  if (o.png_path.empty()) throw UsageError("--png: expected a file path, got ''");
  if (o.out_path.empty()) throw UsageError("--out: expected a file path, got ''");
  o.cfg.block_q = std::stoi(t.block_q);
  o.cfg.block_k = std::stoi(t.block_k);
  return o;
}

// The App with its subcommands, and the values the flags are bound to (CLI11 keeps pointers into them, so the
// whole object stays in one place).
class SlaApp {
 public:
  SlaApp() : app_(kIntro, "sla") {
    app_.set_version_flag("--version", version_text(), "print the version and build information, then exit");
    app_.set_help_flag("-h,--help", "show this help");
    app_.require_subcommand(0, 1);
    app_.get_formatter()->column_width(kHelpColumn);
    app_.footer("No command: demo. Run `sla <command> --help` for the flags of a command.");
    demo_ = app_.add_subcommand(
        "demo", "run SLA and dense attention on a video-token workload; print a report and write a block-map PNG");
    bench_ = app_.add_subcommand("bench", "time block map, forward and backward");
    info_ = app_.add_subcommand("info", "build information and GPU availability");
    calibrate_ = app_.add_subcommand(
        "calibrate", "per-head block-map rules from captured Q/K/V: a calibration file and a block-map PNG");
    for (CLI::App* sub : {demo_, bench_, info_, calibrate_}) sub->get_formatter()->column_width(kHelpColumn);
    demo_flags(*demo_, &demo_text_);
    bench_flags(*bench_, &bench_text_);
    calibrate_flags(*calibrate_, &calibrate_text_);
    info_->footer(
        "Prints the library's build information (version, backends, CUDA archs, head dims, dtypes) and whether a\n"
        "GPU is usable.");
  }

  CommandLine parse(std::vector<std::string> args) {
    if (!args.empty() && args[0] == "help") args[0] = "--help";  // `sla help`, as before CLI11
    // No subcommand: demo (`sla --topk 0.2` is `sla demo --topk 0.2`).
    const bool top_level_flag = !args.empty() && (args[0] == "--help" || args[0] == "-h" || args[0] == "--version");
    if (args.empty() || (args[0].rfind("-", 0) == 0 && !top_level_flag)) args.insert(args.begin(), "demo");
    CommandLine cl;
    try {
      std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 consumes from the back
      app_.parse(reversed);
    } catch (const CLI::CallForHelp&) {
      cl.command = CommandLine::Command::help;
      cl.text = app_.help();
      return cl;
    } catch (const CLI::CallForVersion& e) {
      cl.command = CommandLine::Command::version;
      cl.text = e.what();
      return cl;
    } catch (const CLI::ExtrasError&) {
      throw UsageError(describe_extras());
    } catch (const CLI::ArgumentMismatch& e) {
      // CLI11 says "--topk: 1 required FRACTION missing" when the command line ends before the value.
      const std::string msg = e.what();
      const std::size_t colon = msg.find(": "), req = msg.find(" required "), miss = msg.rfind(" missing");
      if (colon == std::string::npos || req == std::string::npos || miss == std::string::npos || miss < req) {
        throw UsageError(msg);
      }
      throw UsageError(msg.substr(0, colon) + ": missing its value (" + msg.substr(req + 10, miss - req - 10) +
                       "): the command line ends here");
    } catch (const CLI::ParseError& e) {
      throw UsageError(e.what());
    }
    if (demo_->parsed()) {
      cl.command = CommandLine::Command::demo;
      cl.demo = finish_demo(*demo_, demo_text_);
    } else if (bench_->parsed()) {
      cl.command = CommandLine::Command::bench;
      cl.bench = finish_bench(*bench_, bench_text_);
    } else if (calibrate_->parsed()) {
      cl.command = CommandLine::Command::calibrate;
      cl.calibrate = finish_calibrate(*calibrate_, calibrate_text_);
    } else {
      cl.command = CommandLine::Command::info;
    }
    return cl;
  }

  std::string help(const std::string& command) {
    if (command.empty()) return app_.help();
    return app_.get_subcommand(command)->help("sla " + command);
  }

 private:
  // An argument no flag or command takes: an unknown command, an unknown flag or a stray value.
  std::string describe_extras() const {
    for (const CLI::App* sub : {demo_, bench_, info_, calibrate_}) {
      if (!sub->parsed() || sub->remaining().empty()) continue;
      const std::string first = sub->remaining().front();
      const std::string command = sub->get_name();
      if (sub == info_) return "info: takes no flags, got '" + first + "'";
      if (first.rfind("-", 0) == 0) {
        return "unknown flag '" + first + "' (see `sla " + command + " --help` for the flags of this command)";
      }
      return "unexpected argument '" + first + "' (flags start with --; see `sla " + command + " --help`)";
    }
    const std::vector<std::string> rest = app_.remaining();
    return "unknown command '" + (rest.empty() ? std::string() : rest.front()) +
           "'; expected demo, bench, info or calibrate (see sla --help)";
  }

  CLI::App app_;
  CLI::App* demo_ = nullptr;
  CLI::App* bench_ = nullptr;
  CLI::App* info_ = nullptr;
  CLI::App* calibrate_ = nullptr;
  DemoText demo_text_;
  BenchText bench_text_;
  CalibrateText calibrate_text_;
};

}  // namespace

CommandLine parse_command_line(const std::vector<std::string>& args) {
  SlaApp app;
  return app.parse(args);
}

DemoOptions parse_demo_options(const std::vector<std::string>& args) {
  std::vector<std::string> full = {"demo"};
  full.insert(full.end(), args.begin(), args.end());
  const CommandLine cl = parse_command_line(full);
  DemoOptions o = cl.demo;
  o.help = cl.command == CommandLine::Command::help;
  return o;
}

BenchOptions parse_bench_options(const std::vector<std::string>& args) {
  std::vector<std::string> full = {"bench"};
  full.insert(full.end(), args.begin(), args.end());
  const CommandLine cl = parse_command_line(full);
  BenchOptions o = cl.bench;
  o.help = cl.command == CommandLine::Command::help;
  return o;
}

std::string demo_help() { return SlaApp().help("demo"); }
std::string bench_help() { return SlaApp().help("bench"); }
std::string info_help() { return SlaApp().help("info"); }
std::string calibrate_help() { return SlaApp().help("calibrate"); }
std::string main_help() { return SlaApp().help(""); }

std::string version_text() { return std::string("sla ") + SLA_VERSION + "\n" + sla::build_info(); }

}  // namespace sla_cli
