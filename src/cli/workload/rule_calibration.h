// Calibration of the block-map rules for one layer (docs/BLOCK_MAP.md, "Calibration"): per head, the cheapest
// parameter of a rule family (per-head topk or per-head top_p) whose quality on sampled query rows meets a target,
// optionally under a budget on the average density. The same choice and file format as python/sla/calibration.py,
// computed with the library's CPU block map and forward (O with W = b = 0 is the sparse branch alone) against
// the CLI's independent dense reference on sampled rows.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sla/config.h"
#include "workload/reference_attention.h"

namespace sla_cli {

struct CalibrationSettings {
  std::string target = "mass";  // "mass": mean attention mass in the critical blocks >= quality;
                                // "error": RMS over rows of |O_s - O| / |O| <= quality
  double quality = 0.9;
  std::string rule = "top_p";  // "topk", "top_p" or "auto" (per layer the cheaper family)
  double budget = 0.0;         // > 0: the average density over heads may not exceed it
  int64_t rows = 256;          // sampled query rows per head
  int threads = 0;
};

struct HeadCalibration {
  double param = 0;    // topk fraction or p
  double density = 0;  // mean critical blocks per row / Nk
  double mass = 0;     // mean attention mass in the critical blocks (sampled rows)
  double error = 0;    // RMS over sampled rows of |O_s - O| / |O|
  bool met = false;
};

struct LayerCalibration {
  std::string family;  // "topk" or "top_p"
  std::vector<HeadCalibration> heads;
  double mean_density = 0;
  bool budget_bound = false;
  int64_t q_blocks = 0, k_blocks = 0;
  sla::Config config;  // the base config with the chosen rule (head_topk or head_top_p)
};

// Called after each (head, candidate rule) measured: `done` of `total`, and the estimated share of the work done
// (a head's dense rows cost more than one candidate), for a progress display.
using CalibrationProgress = std::function<void(int64_t done, int64_t total, double fraction)>;

// `base` gives block sizes, variant and scale; its rule fields are replaced. Every candidate is measured on the
// same sampled rows, whose dense attention is computed once per head and summed per key block; a candidate's
// statistics are then sums over its critical blocks (its mass equals dense_reference's critical mass exactly,
// its O_s the library's sparse branch up to float rounding). `progress` may be empty.
LayerCalibration calibrate_layer(const AttentionProblem& problem, const sla::Config& base,
                                 const CalibrationSettings& settings, const CalibrationProgress& progress);

// Density, mass and O_s error of every head under `cfg` (whatever its rule), on the CPU.
struct RuleQuality {
  std::vector<double> density, mass, error;  // per head
  double mean_density = 0, mean_mass = 0, mean_error = 0;
};
RuleQuality evaluate_rule(const AttentionProblem& problem, const sla::Config& cfg, const CalibrationSettings& settings);

// The block classes of `cfg`'s map of the problem (CPU), for pictures and reports.
BlockClasses predict_classes(const AttentionProblem& problem, const sla::Config& cfg, int threads);

}  // namespace sla_cli
