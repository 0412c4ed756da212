// The options of each `sla` subcommand, parsed from the command line (by CLI11, see flag_checks.h), and their
// --help texts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sla/config.h"
#include "sla/types.h"

namespace sla_cli {

enum class BackendChoice { automatic, cpu, cuda };
const char* backend_choice_name(BackendChoice b);

struct DemoOptions {
  bool help = false;
  int64_t frames = 8, height = 16, width = 24;  // latent grid T x Hh x Ww; tokens in raster order
  int64_t heads = 6;
  int64_t dim = 64;
  sla::Config cfg;  // block sizes, topk, variant, ... (demo defaults set by the parser)
  uint64_t seed = 0;
  std::string png_path;  // where the block-map picture goes
  std::string qkv_path;  // captured Q/K/V (.npy / .npz) instead of the synthetic workload; empty: synthetic
  BackendChoice backend = BackendChoice::automatic;
  int64_t ref_rows = 0;  // query rows per (batch, head) for the dense reference; 0: as many as a budget allows
  int threads = 0;       // CPU threads; 0: all
  bool compare_rules = false;  // also compare fixed topk with calibrated per-head rules at equal density
  bool progress = false;       // counts and time left on stderr also when it is not a terminal
};

struct BenchOptions {
  bool help = false;
  int64_t batch = 1, heads = 4, lq = 4096, lk = 4096, dim = 64;
  std::string dtype = "auto";  // auto: bf16 on the GPU, f32 on the CPU
  sla::Config cfg;
  BackendChoice backend = BackendChoice::automatic;
  int64_t warmup = 1, iters = 5;
  bool backward = false;  // also time forward + backward
  bool json = false;
  uint64_t seed = 0;
  int threads = 0;
  bool progress = false;  // counts and time left on stderr also when it is not a terminal
};

struct CalibrateOptions {
  bool help = false;
  std::string qkv_path;                          // captured Q/K/V (.npy / .npz), required
  std::string out_path = "sla_rules.json";       // the calibration file (JSON)
  std::string png_path = "sla_calibration.png";  // block-map picture of the chosen rules
  std::string layer;                             // the layer's name in the file (sla.apply_rules matches it)
  std::string target = "mass";                   // mass | error
  double quality = 0;                            // 0: 0.9 for mass, 0.1 for error
  std::string rule = "top_p";                    // topk | top_p | auto
  double budget = 0;                             // average density bound; 0: none
  sla::Config cfg;                               // block sizes (the rule fields are chosen)
  int64_t rows = 256;                            // sampled query rows per head
  int threads = 0;
  bool progress = false;  // counts and time left on stderr also when it is not a terminal
};

// What the command line asks for. `text` holds the help or version text for those two.
struct CommandLine {
  enum class Command { demo, bench, info, calibrate, help, version };
  Command command = Command::demo;
  DemoOptions demo;
  BenchOptions bench;
  CalibrateOptions calibrate;
  std::string text;
};

// The whole command line after the program name: `sla [demo|bench|info] [flags]` (no subcommand: demo),
// `sla --help`, `sla --version`, `sla <command> --help`. Throws UsageError naming the flag and the expected value
// for unknown commands and flags, missing values and bad values.
CommandLine parse_command_line(const std::vector<std::string>& args);

// The flags of one subcommand (what follows `sla demo` / `sla bench`). With --help they return with help = true.
DemoOptions parse_demo_options(const std::vector<std::string>& args);
BenchOptions parse_bench_options(const std::vector<std::string>& args);

std::string demo_help();
std::string bench_help();
std::string info_help();
std::string calibrate_help();
std::string main_help();
std::string version_text();  // "sla 0.1.0 (...build information...)"

}  // namespace sla_cli
