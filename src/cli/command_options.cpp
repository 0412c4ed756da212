// Flag tables, parsing and help texts of `sla demo`, `sla bench` and `sla info`.
#include "command_options.h"

#include <limits>

#include "args.h"
#include "cli_error.h"

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

// Flags shared by demo and bench: the SLA layer's Config.
std::vector<FlagSpec> config_flags(const std::string& topk_default, const std::string& block_q_default) {
  return {
      {"--variant", "global|complement", "global",
       "linear branch over all keys (public main branch) or over the marginal blocks only (paper, SLA-1)"},
      {"--feature-map", "softmax|elu|relu", "softmax", "feature map phi of the linear branch"},
      {"--topk", "FRACTION", topk_default, "fraction of key blocks each query block attends to exactly, in (0, 1]"},
      {"--block-q", "64|128", block_q_default, "query rows per block"},
      {"--block-k", "64|128", "64", "key rows per block"},
      {"--negligible", "FRACTION", "0",
       "fraction of key blocks skipped entirely (complement variant only), in [0, 1-topk]"},
  };
}

sla::Config parse_config(const ParsedFlags& f) {
  sla::Config cfg;
  cfg.variant = f.choice("--variant", {"global", "complement"}) == "global" ? sla::Variant::global
                                                                           : sla::Variant::complement;
  const std::string fm = f.choice("--feature-map", {"softmax", "elu", "relu"});
  cfg.feature_map = fm == "softmax" ? sla::FeatureMap::softmax
                    : fm == "elu"   ? sla::FeatureMap::elu
                                    : sla::FeatureMap::relu;
  cfg.topk = f.number("--topk", Range{0.0, 1.0, true, false});
  cfg.block_q = std::stoi(f.choice("--block-q", {"64", "128"}));
  cfg.block_k = std::stoi(f.choice("--block-k", {"64", "128"}));
  cfg.negligible = f.number("--negligible", Range{0.0, 1.0 - cfg.topk});
  if (cfg.negligible > 0 && cfg.variant != sla::Variant::complement) {
    throw UsageError("--negligible: only the complement variant skips blocks; expected 0 with --variant global, got " +
                     f.text("--negligible"));
  }
  return cfg;
}

BackendChoice parse_backend(const ParsedFlags& f) {
  const std::string b = f.choice("--backend", {"auto", "cpu", "cuda"});
  return b == "cpu" ? BackendChoice::cpu : b == "cuda" ? BackendChoice::cuda : BackendChoice::automatic;
}

std::vector<FlagSpec> demo_flags() {
  std::vector<FlagSpec> flags = {
      {"--grid", "TxHxW", "8x16x24", "synthetic workload: latent video grid (frames x height x width), raster order"},
      {"--heads", "N", "6", "synthetic workload: heads (local, spatial, temporal, global, then the same kinds wider)"},
      {"--dim", "D", "64", "synthetic workload: head dim"},
      {"--seed", "N", "0", "synthetic workload: random seed"},
      {"--qkv", "FILE", "",
       "captured tensors instead of the synthetic workload: .npy of shape (3,B,H,L,D) or (3,H,L,D), or .npz with "
       "arrays q, k, v of shape (B,H,L,D) or (H,L,D); f16/f32/f64"},
      {"--png", "PATH", "sla_blockmap.png", "where to write the block-map picture"},
      {"--backend", "auto|cpu|cuda", "auto", "auto: the GPU when it is usable and supports the config, else CPU"},
      {"--ref-rows", "N", "0",
       "query rows per head checked against dense attention (evenly spaced); 0: all rows that fit a fixed budget"},
      {"--threads", "N", "0", "CPU threads; 0: all"},
  };
  for (FlagSpec& s : config_flags("0.1", "64")) flags.push_back(s);
  flags.push_back({"--help", "", "", "show this help"});
  return flags;
}

std::vector<FlagSpec> bench_flags() {
  std::vector<FlagSpec> flags = {
      {"--shape", "B,H,L,D", "1,4,4096,64", "batch, heads, sequence length, head dim"},
      {"--b", "N", "", "batch (overrides --shape)"},
      {"--h", "N", "", "heads (overrides --shape)"},
      {"--l", "N", "", "query length (overrides --shape)"},
      {"--d", "N", "", "head dim (overrides --shape)"},
      {"--lk", "N", "", "key length (default: the query length)"},
      {"--dtype", "auto|f32|f64|bf16|f16", "auto", "input dtype; auto: bf16 on the GPU, f32 on the CPU"},
      {"--backend", "auto|cpu|cuda", "auto", "auto: the GPU when it is usable and supports the problem, else CPU"},
      {"--warmup", "N", "1", "untimed runs before timing"},
      {"--iters", "N", "5", "timed runs; the median is reported"},
      {"--backward", "", "", "also time forward + backward"},
      {"--json", "", "", "print one JSON object instead of a table"},
      {"--seed", "N", "0", "seed of the random inputs"},
      {"--threads", "N", "0", "CPU threads; 0: all"},
  };
  for (FlagSpec& s : config_flags("0.05", "128")) flags.push_back(s);
  flags.push_back({"--help", "", "", "show this help"});
  return flags;
}

constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();

}  // namespace

DemoOptions parse_demo_options(const std::vector<std::string>& args) {
  const ParsedFlags f = parse_flags(args, demo_flags());
  DemoOptions o;
  if (f.is_set("--help")) {
    o.help = true;
    return o;
  }
  const std::vector<int64_t> grid = f.int_list("--grid", 'x', 3);
  o.frames = grid[0];
  o.height = grid[1];
  o.width = grid[2];
  o.heads = f.integer("--heads", 1, 64);
  o.dim = f.integer("--dim", 1, 1024);
  o.seed = static_cast<uint64_t>(f.integer("--seed", 0, std::numeric_limits<int64_t>::max()));
  o.qkv_path = f.text("--qkv");
  if (!o.qkv_path.empty()) {
    for (const char* synthetic_only : {"--grid", "--heads", "--dim", "--seed"}) {
      if (f.given(synthetic_only)) {
        throw UsageError(std::string(synthetic_only) +
                         ": describes the synthetic workload; expected no such flag together with --qkv (the file "
                         "gives the shapes)");
      }
    }
  }
  o.png_path = f.text("--png");
  if (o.png_path.empty()) throw UsageError("--png: expected a file path, got ''");
  o.backend = parse_backend(f);
  o.ref_rows = f.integer("--ref-rows", 0, kMaxInt);
  o.threads = static_cast<int>(f.integer("--threads", 0, 4096));
  o.cfg = parse_config(f);
  return o;
}

BenchOptions parse_bench_options(const std::vector<std::string>& args) {
  const ParsedFlags f = parse_flags(args, bench_flags());
  BenchOptions o;
  if (f.is_set("--help")) {
    o.help = true;
    return o;
  }
  const std::vector<int64_t> shape = f.int_list("--shape", ',', 4);
  o.batch = f.given("--b") ? f.integer("--b", 1, kMaxInt) : shape[0];
  o.heads = f.given("--h") ? f.integer("--h", 1, kMaxInt) : shape[1];
  o.lq = f.given("--l") ? f.integer("--l", 1, kMaxInt) : shape[2];
  o.dim = f.given("--d") ? f.integer("--d", 1, 1024) : shape[3];
  o.lk = f.given("--lk") ? f.integer("--lk", 1, kMaxInt) : o.lq;
  o.dtype = f.choice("--dtype", {"auto", "f32", "f64", "bf16", "f16"});
  o.backend = parse_backend(f);
  o.warmup = f.integer("--warmup", 0, 10000);
  o.iters = f.integer("--iters", 1, 100000);
  o.backward = f.is_set("--backward");
  o.json = f.is_set("--json");
  o.seed = static_cast<uint64_t>(f.integer("--seed", 0, std::numeric_limits<int64_t>::max()));
  o.threads = static_cast<int>(f.integer("--threads", 0, 4096));
  o.cfg = parse_config(f);
  return o;
}

std::string demo_help() {
  return std::string(kIntro) +
         "\nUsage: sla demo [flags]\n\n"
         "Builds a synthetic video-token workload (or loads captured Q/K/V with --qkv), predicts the SLA block map,\n"
         "runs SLA and dense attention, and reports per head: sparsity, the share of the dense attention mass the\n"
         "critical blocks cover, the error of SLA's sparse branch against dense attention, and timings. Writes a\n"
         "picture of the block map (critical / marginal / negligible key blocks per query block) as a PNG.\n\n"
         "Flags:\n" +
         format_flags_help(demo_flags()) +
         "\nExamples:\n"
         "  sla demo\n"
         "  sla demo --topk 0.05 --variant complement --negligible 0.5 --png map.png\n"
         "  sla demo --qkv captured_layer10.npz --block-q 128\n";
}

std::string bench_help() {
  return std::string(kIntro) +
         "\nUsage: sla bench [flags]\n\n"
         "Times the block-map prediction, the forward pass and (with --backward) forward + backward on random\n"
         "inputs. Reports the median of --iters runs (CUDA events on the GPU, a steady clock on the CPU).\n\n"
         "Flags:\n" +
         format_flags_help(bench_flags()) +
         "\nExamples:\n"
         "  sla bench --shape 1,4,4096,64 --backend cpu\n"
         "  sla bench --shape 1,12,32760,128 --topk 0.05 --dtype bf16 --backward --json   # Wan2.1 480p on a GPU\n";
}

std::string info_help() {
  return std::string(kIntro) +
         "\nUsage: sla info\n\n"
         "Prints the library's build information (version, backends, CUDA archs, head dims, dtypes) and whether a\n"
         "GPU is usable.\n";
}

std::string main_help() {
  return std::string(kIntro) +
         "\nUsage: sla [demo|bench|info] [flags]      (no subcommand: demo)\n\n"
         "Commands:\n"
         "  demo   run SLA and dense attention on a video-token workload; print a report and write a block-map PNG\n"
         "  bench  time block map, forward and backward\n"
         "  info   build information and GPU availability\n\n"
         "Run `sla <command> --help` for the flags of a command.\n";
}

}  // namespace sla_cli
