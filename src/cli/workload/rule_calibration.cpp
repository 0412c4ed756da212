// See rule_calibration.h.
#include "workload/rule_calibration.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <limits>
#include <queue>
#include <sstream>
#include <tuple>

#include "cli_error.h"
#include "device/owned_tensor.h"
#include "workload/sla_runner.h"

namespace sla_cli {
namespace {

// The p grid of python/sla/calibration.py (DEFAULT_P_GRID), so both tools choose from the same candidates.
const double kPGrid[] = {0.02, 0.05, 0.1,  0.15, 0.2,  0.25, 0.3,  0.4,   0.5,  0.6,   0.7,   0.75,  0.8, 0.85,
                         0.9,  0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.995, 0.998, 0.999, 1.0};
constexpr int kMaxTopkCandidates = 40;

// The smallest double topk with floor(topk * Nk) == count (python's sla._shapes.topk_for_count).
double topk_for_count(int64_t count, int64_t nk) {
  double t = static_cast<double>(count) / static_cast<double>(nk);
  while (std::floor(t * static_cast<double>(nk)) < static_cast<double>(count)) {
    t = std::nextafter(t, std::numeric_limits<double>::infinity());
  }
  return t;
}

// Geometrically spaced counts 1 .. Nk (all of them when Nk is small).
std::vector<int64_t> topk_counts(int64_t nk) {
  std::vector<int64_t> out;
  for (int i = 0; i < kMaxTopkCandidates; ++i) {
    const double x = std::pow(static_cast<double>(nk), static_cast<double>(i) / (kMaxTopkCandidates - 1));
    const int64_t t = std::clamp<int64_t>(static_cast<int64_t>(std::llround(x)), 1, nk);
    if (out.empty() || t > out.back()) out.push_back(t);
  }
  return out;
}

struct Candidate {
  double param;
  std::vector<double> density, mass, error;  // per head
};

struct Inputs {
  OwnedTensor q, k, v;
};

Inputs place_cpu(const AttentionProblem& p) {
  auto copy = [](const float* x, int64_t n) {
    return std::vector<float>(x, x + n);
  };
  Inputs in;
  in.q = OwnedTensor::from_floats(copy(p.q, p.batch * p.heads * p.lq * p.dim), sla::DType::f32,
                                  {p.batch, p.heads, p.lq, p.dim}, sla::Device::cpu);
  in.k = OwnedTensor::from_floats(copy(p.k, p.batch * p.heads * p.lk * p.dim), sla::DType::f32,
                                  {p.batch, p.heads, p.lk, p.dim}, sla::Device::cpu);
  in.v = OwnedTensor::from_floats(copy(p.v, p.batch * p.heads * p.lk * p.dv), sla::DType::f32,
                                  {p.batch, p.heads, p.lk, p.dv}, sla::Device::cpu);
  return in;
}

// Density, mass and O_s error of every head under `cfg`.
Candidate evaluate(const AttentionProblem& p, const Inputs& in, const sla::Config& cfg, double param,
                   const CalibrationSettings& s) {
  SlaRunner runner(in.q.view(), in.k.view(), in.v.view(), cfg, SlaRunner::Mode::inference, s.threads);
  runner.predict_block_map();
  runner.forward();  // no projection: O is the sparse branch O_s (docs/SPEC.md invariant 2)
  const BlockClasses classes = classes_of(runner.block_map(), cfg);
  const ReferenceRows ref = dense_reference(p, classes, s.rows, s.threads);
  const std::vector<double> o = runner.output().to_doubles();
  const int64_t n = static_cast<int64_t>(ref.rows.size()), nq = classes.q_blocks, nk = classes.k_blocks;
  Candidate c;
  c.param = param;
  c.density.assign(p.heads, 0.0);
  c.mass.assign(p.heads, 0.0);
  c.error.assign(p.heads, 0.0);
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.heads; ++h) {
      const int64_t bh = b * p.heads + h;
      double count = 0;
      for (int64_t i = 0; i < nq; ++i) count += classes.count[bh * nq + i];
      c.density[h] += count / static_cast<double>(nq * nk) / static_cast<double>(p.batch);
      for (int64_t r = 0; r < n; ++r) {
        c.mass[h] += ref.critical_mass[bh * n + r] / static_cast<double>(n * p.batch);
        double err = 0, norm = 0;
        for (int64_t e = 0; e < p.dv; ++e) {
          const double want = ref.out[(bh * n + r) * p.dv + e];
          const double got = o[(bh * p.lq + ref.rows[r]) * p.dv + e];
          err += (got - want) * (got - want);
          norm += want * want;
        }
        c.error[h] += (norm > 0 ? err / norm : err) / static_cast<double>(n * p.batch);
      }
    }
  }
  for (double& e : c.error) e = std::sqrt(e);
  return c;
}

double quality_of(const Candidate& c, int64_t h, const CalibrationSettings& s) {
  return s.target == "mass" ? c.mass[h] : -c.error[h];
}
bool meets(const Candidate& c, int64_t h, const CalibrationSettings& s) {
  return s.target == "mass" ? c.mass[h] >= s.quality : c.error[h] <= s.quality;
}

std::string fmt(double x) {
  std::ostringstream os;
  os << std::setprecision(17) << x;
  return os.str();
}

}  // namespace

RuleQuality evaluate_rule(const AttentionProblem& problem, const sla::Config& cfg, const CalibrationSettings& s) {
  const Inputs in = place_cpu(problem);
  const Candidate c = evaluate(problem, in, cfg, 0.0, s);
  RuleQuality q;
  q.density = c.density;
  q.mass = c.mass;
  q.error = c.error;
  const double n = static_cast<double>(problem.heads);
  for (int64_t h = 0; h < problem.heads; ++h) {
    q.mean_density += c.density[h] / n;
    q.mean_mass += c.mass[h] / n;
    q.mean_error += c.error[h] / n;
  }
  return q;
}

BlockClasses predict_classes(const AttentionProblem& problem, const sla::Config& cfg, int threads) {
  const Inputs in = place_cpu(problem);
  SlaRunner runner(in.q.view(), in.k.view(), in.v.view(), cfg, SlaRunner::Mode::inference, threads);
  runner.predict_block_map();
  return classes_of(runner.block_map(), cfg);
}

LayerCalibration calibrate_layer(const AttentionProblem& p, const sla::Config& base, const CalibrationSettings& s,
                                 const std::function<void(const std::string&)>& progress) {
  const Inputs in = place_cpu(p);
  sla::BlockMapShape shape;
  sla::Config plain = base;
  plain.rule = sla::CriticalRule::topk;
  plain.head_topk.clear();
  plain.head_top_p.clear();
  plain.top_p = 0.0;
  plain.min_blocks = 1;
  plain.max_blocks = 0;
  if (!sla::block_map_shape(p.batch, p.heads, p.lq, p.lk, plain, &shape).ok()) {
    throw RunError("calibrate: the library rejects the base configuration");
  }
  const int64_t nk = shape.k_blocks;
  const std::vector<std::string> families =
      s.rule == "auto" ? std::vector<std::string>{"topk", "top_p"} : std::vector<std::string>{s.rule};

  LayerCalibration best;
  double best_cost = std::numeric_limits<double>::infinity();
  std::vector<Candidate> best_cands;
  std::vector<int> best_pick;
  for (const std::string& fam : families) {
    std::vector<Candidate> cands;
    if (fam == "topk") {
      for (int64_t t : topk_counts(nk)) {
        sla::Config c = plain;
        c.topk = topk_for_count(t, nk);
        cands.push_back(evaluate(p, in, c, c.topk, s));
        if (progress) progress("topk T = " + std::to_string(t) + " of " + std::to_string(nk));
      }
    } else {
      for (double pv : kPGrid) {
        sla::Config c = plain;
        c.rule = sla::CriticalRule::top_p;
        c.top_p = pv;
        cands.push_back(evaluate(p, in, c, pv, s));
        if (progress) progress("top_p p = " + std::to_string(pv).substr(0, 5));
      }
    }
    // Per head the cheapest candidate that meets the target (the last one when none does). Densities grow along
    // the candidates (more blocks per row), so "cheapest" is "first".
    std::vector<int> pick(p.heads, static_cast<int>(cands.size()) - 1);
    double cost = 0;
    for (int64_t h = 0; h < p.heads; ++h) {
      for (std::size_t i = 0; i < cands.size(); ++i) {
        if (meets(cands[i], h, s)) {
          pick[h] = static_cast<int>(i);
          break;
        }
      }
      cost += cands[pick[h]].density[h];
    }
    if (cost < best_cost) {
      best_cost = cost;
      best.family = fam;
      best_cands = std::move(cands);
      best_pick = pick;
    }
  }

  // Global budget: from every head's cheapest candidate, raise the head with the best quality gain per density
  // until the budget is spent (never past the head's target choice).
  const auto avg = [&](const std::vector<int>& ch) {
    double d = 0;
    for (int64_t h = 0; h < p.heads; ++h) d += best_cands[ch[h]].density[h];
    return d / static_cast<double>(p.heads);
  };
  if (s.budget > 0 && avg(best_pick) > s.budget) {
    best.budget_bound = true;
    std::vector<int> cur(p.heads, 0);
    double spent = avg(cur);
    using Step = std::tuple<double, int64_t, int, double>;  // (-gain per cost, head, next index, cost)
    std::priority_queue<Step, std::vector<Step>, std::greater<Step>> heap;
    auto push = [&](int64_t h) {
      int j = cur[h] + 1;
      while (j <= best_pick[h] && best_cands[j].density[h] <= best_cands[cur[h]].density[h]) ++j;
      if (j > best_pick[h]) return;
      const double cost = (best_cands[j].density[h] - best_cands[cur[h]].density[h]) / static_cast<double>(p.heads);
      const double gain = quality_of(best_cands[j], h, s) - quality_of(best_cands[cur[h]], h, s);
      heap.emplace(-gain / std::max(cost, 1e-15), h, j, cost);
    };
    for (int64_t h = 0; h < p.heads; ++h) push(h);
    while (!heap.empty()) {
      const auto [neg, h, j, cost] = heap.top();
      heap.pop();
      (void)neg;
      if (spent + cost > s.budget + 1e-12) continue;
      cur[h] = j;
      spent += cost;
      push(h);
    }
    best_pick = cur;
  }

  best.config = plain;
  best.q_blocks = shape.q_blocks;
  best.k_blocks = nk;
  std::vector<double> params;
  for (int64_t h = 0; h < p.heads; ++h) {
    const Candidate& c = best_cands[best_pick[h]];
    HeadCalibration hc;
    hc.param = c.param;
    hc.density = c.density[h];
    hc.mass = c.mass[h];
    hc.error = c.error[h];
    hc.met = meets(c, h, s);
    best.heads.push_back(hc);
    best.mean_density += hc.density / static_cast<double>(p.heads);
    params.push_back(c.param);
  }
  if (best.family == "topk") {
    best.config.head_topk = params;
  } else {
    best.config.rule = sla::CriticalRule::top_p;
    best.config.head_top_p = params;
  }
  return best;
}

std::string calibration_json(const LayerCalibration& cal, const AttentionProblem& p, const CalibrationSettings& s,
                             const std::string& layer) {
  // JSON text of a fixed, flat schema: strings are the layer name (escaped) and a few constants.
  auto str = [](const std::string& x) {
    std::string o = "\"";
    for (char ch : x) {
      if (ch == '"' || ch == '\\') {
        o += '\\';
        o += ch;
      } else if (static_cast<unsigned char>(ch) < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", ch);
        o += buf;
      } else {
        o += ch;
      }
    }
    return o + "\"";
  };
  std::ostringstream os;
  os << "{\n \"format\": \"sla-calibration\",\n \"version\": 1,\n \"settings\": {\"target\": " << str(s.target)
     << ", \"quality\": " << fmt(s.quality) << ", \"rule\": " << str(s.rule)
     << ", \"budget\": " << (s.budget > 0 ? fmt(s.budget) : "null")
     << ", \"budget_bound\": " << (cal.budget_bound ? "true" : "false") << ", \"block_q\": " << cal.config.block_q
     << ", \"block_k\": " << cal.config.block_k << ", \"rows_per_head\": " << s.rows
     << ", \"average_density\": " << fmt(cal.mean_density) << ", \"tool\": \"sla calibrate\"},\n \"layers\": {\n  "
     << str(layer) << ": {\n   \"rule\": {";
  os << (cal.family == "topk" ? "\"topk\": [" : "\"top_p\": [");
  for (std::size_t h = 0; h < cal.heads.size(); ++h) os << (h ? ", " : "") << fmt(cal.heads[h].param);
  os << "]";
  if (cal.family == "top_p") os << ", \"min_blocks\": 1, \"max_blocks\": null";
  os << "},\n   \"family\": " << str(cal.family) << ",\n   \"shape\": {\"heads\": " << p.heads << ", \"lq\": " << p.lq
     << ", \"lk\": " << p.lk << ", \"d\": " << p.dim << ", \"q_blocks\": " << cal.q_blocks
     << ", \"k_blocks\": " << cal.k_blocks << ", \"passes\": 1, \"batch\": " << p.batch
     << ", \"scale\": " << fmt(p.scale) << "},\n   \"heads\": [";
  for (std::size_t h = 0; h < cal.heads.size(); ++h) {
    const HeadCalibration& hc = cal.heads[h];
    os << (h ? ",\n    " : "\n    ") << "{\"param\": " << fmt(hc.param) << ", \"density\": " << fmt(hc.density)
       << ", \"mass\": " << fmt(hc.mass) << ", \"error\": " << fmt(hc.error)
       << ", \"met\": " << (hc.met ? "true" : "false") << "}";
  }
  os << "\n   ],\n   \"mean_density\": " << fmt(cal.mean_density) << "\n  }\n }\n}\n";
  return os.str();
}

}  // namespace sla_cli
