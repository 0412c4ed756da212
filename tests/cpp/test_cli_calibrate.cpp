// `sla calibrate` / `sla demo --compare-rules` core (src/cli/workload/rule_calibration.h): on the synthetic video
// workload every head meets the target, the local head needs fewer blocks than the temporal one, a budget binds,
// the chosen rule measures as reported, and the file names the rule per head.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "workload/rule_calibration.h"
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
