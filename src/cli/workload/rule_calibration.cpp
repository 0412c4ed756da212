// See rule_calibration.h.
#include "workload/rule_calibration.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <queue>
#include <tuple>
#include <utility>

#include "cli_error.h"
#include "cpu/parallel.h"
#include "device/memory_limits.h"
#include "device/owned_tensor.h"
#include "workload/head_block_map.h"
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

// O_s of one row when the reference's exp(s - max) of every critical key underflows (their block sums are 0, so
// block_pv cannot give the ratio): the softmax over the critical keys alone, with their own maximum.
void sparse_row_exactly(const AttentionProblem& p, int64_t bh, int64_t query, const int32_t* blocks, int64_t n,
                        int64_t block_k, double* o_s) {
  const float* q = p.q + (bh * p.lq + query) * p.dim;
  const float* k = p.k + bh * p.lk * p.dim;
  const float* v = p.v + bh * p.lk * p.dv;
  std::vector<std::pair<int64_t, double>> logits;
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t c = blocks[t] * block_k; c < std::min(p.lk, (blocks[t] + 1) * block_k); ++c) {
      double dot = 0;
      for (int64_t e = 0; e < p.dim; ++e) dot += static_cast<double>(q[e]) * k[c * p.dim + e];
      logits.emplace_back(c, p.scale * dot);
      mx = std::max(mx, p.scale * dot);
    }
  }
  double sum = 0;
  std::fill(o_s, o_s + p.dv, 0.0);
  for (const auto& [c, s] : logits) {
    const double w = std::exp(s - mx);
    sum += w;
    for (int64_t e = 0; e < p.dv; ++e) o_s[e] += w * v[c * p.dv + e];
  }
  for (int64_t e = 0; e < p.dv; ++e) o_s[e] /= sum;
}

// Adds head bh's density, mass and O_s error under the block map `classes` to `c` (means over the batch). The
// mass is the sum of the reference's block masses in the LUT's order, as dense_reference computes it; O_s is the
// sum of the critical blocks' P V over their mass: the sparse branch's softmax restricted to the critical blocks.
void add_head(const AttentionProblem& p, int64_t bh, const std::vector<int64_t>& rows, const BlockSums& hr,
              const BlockClasses& classes, int threads, Candidate& c) {
  const int64_t h = bh % p.heads, n = static_cast<int64_t>(rows.size()), nq = classes.q_blocks, nk = classes.k_blocks;
  double count = 0;
  for (int64_t i = 0; i < nq; ++i) count += classes.count[i];
  c.density[h] += count / static_cast<double>(nq * nk) / static_cast<double>(p.batch);

  std::vector<double> mass(n), err2(n);
  std::vector<std::vector<double>> acc(static_cast<std::size_t>(threads), std::vector<double>(p.dv));
  sla::cpu::parallel_for(n, threads, [&](int64_t r, int worker) {
    const int64_t i = rows[r] / classes.block_q;
    const int32_t* lut = classes.lut.data() + i * classes.critical;
    const int64_t t_row = std::min<int64_t>(classes.count[i], classes.critical);
    const double* bm = hr.block_mass.data() + r * hr.k_blocks;
    std::vector<double>& o_s = acc[worker];
    std::fill(o_s.begin(), o_s.end(), 0.0);
    double m = 0;
    for (int64_t t = 0; t < t_row; ++t) {
      const int32_t j = lut[t];
      if (j < 0 || j >= nk) continue;
      m += bm[j];
      const float* pv = hr.block_pv.data() + (r * hr.k_blocks + j) * p.dv;
      for (int64_t e = 0; e < p.dv; ++e) o_s[e] += pv[e];
    }
    mass[r] = m / hr.sum[r];
    if (m > 0) {
      for (int64_t e = 0; e < p.dv; ++e) o_s[e] /= m;
    } else {
      sparse_row_exactly(p, bh, rows[r], lut, t_row, classes.block_k, o_s.data());
    }
    double err = 0, norm = 0;
    for (int64_t e = 0; e < p.dv; ++e) {
      const double want = hr.out[r * p.dv + e];
      err += (o_s[e] - want) * (o_s[e] - want);
      norm += want * want;
    }
    err2[r] = norm > 0 ? err / norm : err;
  });
  // Summed in row order, so the result does not depend on the thread count.
  for (int64_t r = 0; r < n; ++r) {
    c.mass[h] += mass[r] / static_cast<double>(n * p.batch);
    c.error[h] += err2[r] / static_cast<double>(n * p.batch);
  }
}

int64_t blocks_of(int64_t l, int64_t block) { return (l + block - 1) / block; }

// Bytes of one head's dense rows (BlockSums), checked before they are allocated.
double block_sums_bytes(const AttentionProblem& p, int64_t rows, int64_t block_k) {
  const double nk = static_cast<double>((p.lk + block_k - 1) / block_k);
  return static_cast<double>(rows) * (nk * (8.0 + 4.0 * static_cast<double>(p.dv)) + 16.0 * p.dv);
}

// Density, mass and O_s error of every head under each of `cfgs` (params[i] is cfgs[i]'s rule parameter), all on
// the same sampled rows. Per (b,h): the dense rows once, then each candidate's block map of that head.
std::vector<Candidate> evaluate(const AttentionProblem& p, const std::vector<sla::Config>& cfgs,
                                const std::vector<double>& params, const CalibrationSettings& s,
                                const CalibrationProgress& progress) {
  const int threads = sla::cpu::resolve_thread_count(s.threads);
  const std::vector<int64_t> rows = sample_rows(p.lq, s.rows);
  const int64_t n = static_cast<int64_t>(rows.size());
  const int64_t block_k = cfgs.empty() ? 64 : cfgs.front().block_k;
  const std::string shortfall = host_memory_shortfall(
      block_sums_bytes(p, n, block_k), "the dense reference of one head (" + std::to_string(n) + " sampled rows)");
  if (!shortfall.empty()) throw RunError(shortfall + "; sample fewer rows (--rows)");

  std::vector<Candidate> out(cfgs.size());
  for (std::size_t i = 0; i < cfgs.size(); ++i) {
    out[i].param = params[i];
    out[i].density.assign(p.heads, 0.0);
    out[i].mass.assign(p.heads, 0.0);
    out[i].error.assign(p.heads, 0.0);
  }
  const int64_t bh_count = p.batch * p.heads;
  const int64_t total = bh_count * static_cast<int64_t>(cfgs.size());
  // The work of a head's dense rows in units of one candidate (its block map and the sums over its blocks, taken
  // at half density), so that the progress estimate does not jump after each head.
  const double nk = static_cast<double>(blocks_of(p.lk, block_k)), nq = static_cast<double>(blocks_of(p.lq, 64));
  const double candidate_work =
      static_cast<double>(n) * nk * p.dv / 2 + (static_cast<double>(p.lq + p.lk) + nq * nk) * p.dim;
  const double rows_work = static_cast<double>(n) * static_cast<double>(p.lk) * (p.dim + 2.0 * p.dv);
  const double rows_units = rows_work / candidate_work;
  const double all_units = static_cast<double>(bh_count) * (rows_units + static_cast<double>(cfgs.size()));
  std::atomic<int64_t> done{0};
  for (int64_t bh = 0; bh < bh_count; ++bh) {
    const BlockSums hr = dense_block_sums(p, bh, rows, block_k, threads);
    // One candidate per thread (each writes only its own statistics): a block map of one head is too small to
    // spread over threads well. The calling thread (worker 0) reports the progress.
    sla::cpu::parallel_for(static_cast<int64_t>(cfgs.size()), threads, [&](int64_t i, int worker) {
      add_head(p, bh, rows, hr, head_block_map(p, bh, cfgs[i], 1), 1, out[i]);
      const int64_t now = ++done;
      const double units = static_cast<double>(bh + 1) * rows_units + static_cast<double>(now);
      if (progress && worker == 0) progress(now, total, units / all_units);
    });
  }
  for (Candidate& c : out) {
    for (double& e : c.error) e = std::sqrt(e);
  }
  return out;
}

double quality_of(const Candidate& c, int64_t h, const CalibrationSettings& s) {
  return s.target == "mass" ? c.mass[h] : -c.error[h];
}
bool meets(const Candidate& c, int64_t h, const CalibrationSettings& s) {
  return s.target == "mass" ? c.mass[h] >= s.quality : c.error[h] <= s.quality;
}

}  // namespace

RuleQuality evaluate_rule(const AttentionProblem& problem, const sla::Config& cfg, const CalibrationSettings& s) {
  const Candidate c = evaluate(problem, {cfg}, {0.0}, s, {}).front();
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
  // The library only reads Q and K; its views take non-const pointers.
  auto view = [](const float* x, int64_t b, int64_t h, int64_t l, int64_t d) {
    return contiguous_view(const_cast<float*>(x), sla::DType::f32, {b, h, l, d}, sla::Device::cpu);
  };
  const sla::TensorView q = view(problem.q, problem.batch, problem.heads, problem.lq, problem.dim);
  const sla::TensorView k = view(problem.k, problem.batch, problem.heads, problem.lk, problem.dim);
  const sla::TensorView v = view(problem.v, problem.batch, problem.heads, problem.lk, problem.dv);
  SlaRunner runner(q, k, v, cfg, SlaRunner::Mode::inference, threads);
  runner.predict_block_map();
  return classes_of(runner.block_map(), cfg);
}

LayerCalibration calibrate_layer(const AttentionProblem& p, const sla::Config& base, const CalibrationSettings& s,
                                 const CalibrationProgress& progress) {
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

  // Every candidate of every family is measured in one pass over the heads (the dense rows once per head).
  std::vector<sla::Config> cfgs;
  std::vector<double> candidate_params;
  std::vector<std::size_t> family_end;  // candidates [family_end[f-1], family_end[f]) belong to families[f]
  for (const std::string& fam : families) {
    if (fam == "topk") {
      for (int64_t t : topk_counts(nk)) {
        sla::Config c = plain;
        c.topk = topk_for_count(t, nk);
        cfgs.push_back(c);
        candidate_params.push_back(c.topk);
      }
    } else {
      for (double pv : kPGrid) {
        sla::Config c = plain;
        c.rule = sla::CriticalRule::top_p;
        c.top_p = pv;
        cfgs.push_back(c);
        candidate_params.push_back(pv);
      }
    }
    family_end.push_back(cfgs.size());
  }
  std::vector<Candidate> all = evaluate(p, cfgs, candidate_params, s, progress);

  LayerCalibration best;
  double best_cost = std::numeric_limits<double>::infinity();
  std::vector<Candidate> best_cands;
  std::vector<int> best_pick;
  for (std::size_t f = 0; f < families.size(); ++f) {
    const std::string& fam = families[f];
    const std::size_t first = f == 0 ? 0 : family_end[f - 1];
    std::vector<Candidate> cands(std::make_move_iterator(all.begin() + first),
                                 std::make_move_iterator(all.begin() + family_end[f]));
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

}  // namespace sla_cli
