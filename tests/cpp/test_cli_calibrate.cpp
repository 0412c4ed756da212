// `sla calibrate` / `sla demo --compare-rules` core (src/cli/workload/rule_calibration.h): on the synthetic video
// workload every head meets the target, the local head needs fewer blocks than the temporal one, a budget binds,
// the chosen rule measures as reported, and the file names the rule per head. The statistics of a rule equal those
// of the previous algorithm (the library's forward on every row and a dense reference per candidate).
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "device/owned_tensor.h"
#include "workload/calibration_file.h"
#include "workload/reference_attention.h"
#include "workload/rule_calibration.h"
#include "workload/sla_runner.h"
#include "workload/synthetic_video.h"

namespace sla_cli {
namespace {

struct Workload {
  VideoWorkload w;
  AttentionProblem p;
};

Workload make(int64_t heads) {
  Workload x;
  x.w = make_video_workload(VideoGrid{2, 8, 32}, heads, 32, 5);
  x.p.batch = 1;
  x.p.heads = heads;
  x.p.lq = x.p.lk = x.w.tokens;
  x.p.dim = x.p.dv = 32;
  x.p.scale = 1.0 / std::sqrt(32.0);
  x.p.q = x.w.q.data();
  x.p.k = x.w.k.data();
  x.p.v = x.w.v.data();
  return x;
}

// The statistics as calibrate_layer measured them before it read every candidate from one set of dense rows per
// head: the library's block map and forward (O with W = b = 0 is O_s) on the whole problem, and dense_reference's
// critical mass, per candidate.
RuleQuality previous_evaluate(const AttentionProblem& p, const sla::Config& cfg, int64_t rows) {
  auto copy = [](const float* x, int64_t n) {
    return std::vector<float>(x, x + n);
  };
  const OwnedTensor q = OwnedTensor::from_floats(copy(p.q, p.batch * p.heads * p.lq * p.dim), sla::DType::f32,
                                                 {p.batch, p.heads, p.lq, p.dim}, sla::Device::cpu);
  const OwnedTensor k = OwnedTensor::from_floats(copy(p.k, p.batch * p.heads * p.lk * p.dim), sla::DType::f32,
                                                 {p.batch, p.heads, p.lk, p.dim}, sla::Device::cpu);
  const OwnedTensor v = OwnedTensor::from_floats(copy(p.v, p.batch * p.heads * p.lk * p.dv), sla::DType::f32,
                                                 {p.batch, p.heads, p.lk, p.dv}, sla::Device::cpu);
  SlaRunner runner(q.view(), k.view(), v.view(), cfg, SlaRunner::Mode::inference, 0);
  runner.predict_block_map();
  runner.forward();
  const BlockClasses classes = classes_of(runner.block_map(), cfg);
  const ReferenceRows ref = dense_reference(p, classes, rows, 0);
  const std::vector<double> o = runner.output().to_doubles();
  const int64_t n = static_cast<int64_t>(ref.rows.size()), nq = classes.q_blocks, nk = classes.k_blocks;
  RuleQuality c;
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

// Density and mass are the same sums as before (bit for bit); O_s is computed from the dense rows' per-block sums
// instead of the library's float forward, so the error agrees to float rounding.
void expect_previous_statistics(const AttentionProblem& p, const sla::Config& cfg, int64_t rows,
                                const std::string& what) {
  CalibrationSettings s;
  s.rows = rows;
  const RuleQuality now = evaluate_rule(p, cfg, s);
  const RuleQuality before = previous_evaluate(p, cfg, rows);
  for (int64_t h = 0; h < p.heads; ++h) {
    EXPECT_EQ(now.density[h], before.density[h]) << what << " head " << h;
    EXPECT_EQ(now.mass[h], before.mass[h]) << what << " head " << h;
    EXPECT_NEAR(now.error[h], before.error[h], 1e-6 + 1e-5 * before.error[h]) << what << " head " << h;
  }
}

TEST(CliCalibrate, RuleStatisticsEqualThePreviousAlgorithm) {
  Workload x = make(4);  // local, spatial, temporal, global
  sla::Config topk;
  topk.topk = 0.25;
  expect_previous_statistics(x.p, topk, 64, "fixed topk");
  sla::Config per_head = topk;
  per_head.head_topk = {0.125, 0.25, 0.5, 1.0};
  expect_previous_statistics(x.p, per_head, 100, "per-head topk");
  sla::Config top_p;
  top_p.rule = sla::CriticalRule::top_p;
  top_p.head_top_p = {0.5, 0.9, 0.99, 0.3};
  top_p.block_q = 128;
  expect_previous_statistics(x.p, top_p, 256, "per-head top_p, block_q 128, every row");
  sla::Config complement = topk;
  complement.variant = sla::Variant::complement;
  complement.negligible = 0.5;
  expect_previous_statistics(x.p, complement, 64, "complement with negligible blocks");
  // The same memory read as batch 2 x 2 heads: statistics are means over the batch.
  x.p.batch = 2;
  x.p.heads = 2;
  sla::Config batched = topk;
  batched.head_topk = {0.125, 0.5};
  expect_previous_statistics(x.p, batched, 64, "batch 2, per-head topk");
}

TEST(CliCalibrate, RaggedLengthsEqualThePreviousAlgorithm) {
  // 2 x 8 x 30 = 480 tokens: the last query and key blocks are partial.
  const VideoWorkload w = make_video_workload(VideoGrid{2, 8, 30}, 3, 24, 7);
  AttentionProblem p;
  p.batch = 1;
  p.heads = 3;
  p.lq = p.lk = w.tokens;
  p.dim = p.dv = 24;
  p.scale = 1.0 / std::sqrt(24.0);
  p.q = w.q.data();
  p.k = w.k.data();
  p.v = w.v.data();
  sla::Config cfg;
  cfg.rule = sla::CriticalRule::top_p;
  cfg.top_p = 0.8;
  expect_previous_statistics(p, cfg, 50, "ragged top_p");
}

TEST(CliCalibrate, CriticalBlocksFarBelowTheRowMaximumStillGiveTheirSoftmax) {
  // One query row, two key blocks of 64: block 0 holds keys with a moderate score everywhere (the higher pooled
  // score), block 1 one key with a score 200 above the rest and keys that pull its mean down. With topk = 1 block
  // the critical block is block 0, whose exp(s - max) underflow to 0 in the dense row: O_s must still be the
  // softmax over block 0 alone, as the library computes it.
  const int64_t l = 128, d = 2;
  std::vector<float> q(l * d, 0.0f), k(l * d, 0.0f), v(l * d, 0.0f);
  for (int64_t r = 0; r < l; ++r) q[r * d] = 1.0f;
  for (int64_t c = 0; c < 64; ++c) {
    k[c * d] = 1.0f;
    v[c * d] = static_cast<float>(c % 7);  // block 0's softmax is the mean of these
    v[c * d + 1] = 1.0f;
  }
  k[64 * d] = 300.0f;  // the row maximum, in block 1
  for (int64_t c = 65; c < l; ++c) k[c * d] = -10.0f;
  v[64 * d] = 100.0f;
  AttentionProblem p;
  p.batch = p.heads = 1;
  p.lq = p.lk = l;
  p.dim = p.dv = d;
  p.scale = 1.0;
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  sla::Config cfg;
  cfg.topk = 0.5;  // T = 1 of 2 key blocks
  cfg.scale = 1.0;
  CalibrationSettings s;
  s.rows = 1;
  const RuleQuality now = evaluate_rule(p, cfg, s);
  const RuleQuality before = previous_evaluate(p, cfg, 1);
  EXPECT_EQ(now.density[0], 0.5);
  EXPECT_EQ(now.mass[0], 0.0) << "block 0's share of the row's softmax underflows";
  EXPECT_TRUE(std::isfinite(now.error[0]));
  EXPECT_NEAR(now.error[0], before.error[0], 1e-6 * before.error[0]);
}

TEST(CliCalibrate, MeetsTheMassTargetPerHead) {
  const Workload x = make(3);  // local, spatial, temporal
  for (const char* rule : {"topk", "top_p"}) {
    CalibrationSettings s;
    s.rule = rule;
    s.quality = 0.9;
    s.rows = 128;
    sla::Config base;
    const LayerCalibration cal = calibrate_layer(x.p, base, s, {});
    ASSERT_EQ(cal.heads.size(), 3u) << rule;
    for (const HeadCalibration& h : cal.heads) {
      EXPECT_TRUE(h.met) << rule;
      EXPECT_GE(h.mass, 0.9) << rule;
    }
    EXPECT_LT(cal.heads[0].density, cal.heads[2].density) << rule << ": the local head needs fewer blocks";
    // Measured again with the chosen rule, the densities and masses are the reported ones.
    const RuleQuality q = evaluate_rule(x.p, cal.config, s);
    for (int h = 0; h < 3; ++h) {
      EXPECT_NEAR(q.density[h], cal.heads[h].density, 1e-12) << rule;
      EXPECT_NEAR(q.mass[h], cal.heads[h].mass, 1e-12) << rule;
    }
  }
}

TEST(CliCalibrate, BudgetBindsAndBeatsFixedTopkAtEqualDensity) {
  const Workload x = make(4);  // local, spatial, temporal, global
  CalibrationSettings s;
  s.rule = "topk";
  s.target = "error";
  s.quality = 1e-6;  // unreachable: the budget decides
  s.rows = 128;
  sla::Config fixed;
  fixed.topk = 0.25;
  const RuleQuality base = evaluate_rule(x.p, fixed, s);
  s.budget = base.mean_density;
  const LayerCalibration cal = calibrate_layer(x.p, fixed, s, {});
  EXPECT_TRUE(cal.budget_bound);
  EXPECT_LE(cal.mean_density, s.budget + 1e-12);
  const RuleQuality q = evaluate_rule(x.p, cal.config, s);
  EXPECT_LT(q.mean_error, base.mean_error);
  EXPECT_GT(q.mean_mass, base.mean_mass);
}

TEST(CliCalibrate, FileNamesTheRuleOfEveryHead) {
  const Workload x = make(2);
  CalibrationSettings s;
  s.rule = "topk";
  s.rows = 64;
  const LayerCalibration cal = calibrate_layer(x.p, sla::Config(), s, {});
  const std::string json = calibration_json(cal, x.p, s, "blocks.0 \"attn1\"");
  EXPECT_NE(json.find("\"format\": \"sla-calibration\""), std::string::npos);
  EXPECT_NE(json.find("\"version\": 1"), std::string::npos);
  EXPECT_NE(json.find("\"blocks.0 \\\"attn1\\\"\""), std::string::npos) << "the layer name is escaped";
  EXPECT_NE(json.find("\"rule\": {\"topk\": ["), std::string::npos);
  EXPECT_NE(json.find("\"k_blocks\": 8"), std::string::npos);
  EXPECT_EQ(cal.config.head_topk.size(), 2u);
}

}  // namespace
}  // namespace sla_cli
