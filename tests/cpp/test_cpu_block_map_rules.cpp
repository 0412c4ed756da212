// CPU block map, adaptive rules (docs/BLOCK_MAP.md): per-head topk, cumulative-mass (top_p) selection with its
// count clamp, and the negligible threshold, each against a brute-force recomputation written here from the
// definitions (fp64 pooled scores, a stable sort, explicit prefix sums); the -1 padding past each row's count;
// forward on an adaptive map against the dense reference with the same masks; and the validation messages.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "test_util.h"

namespace sla_test {
namespace {

using sla::Config;
using sla::CriticalRule;
using sla::Variant;

// Pooled scores S (Nq x Nk) of one head, fp64, from the definitions of docs/SPEC.md section 1.
std::vector<double> brute_scores(const std::vector<double>& q, const std::vector<double>& k, const Shape& s, int64_t b,
                                 int64_t h, int bq, int bk) {
  const int64_t nq = (s.lq + bq - 1) / bq, nk = (s.lk + bk - 1) / bk, d = s.d;
  auto at = [&](const std::vector<double>& x, int64_t len, int64_t r, int64_t c) {
    return x[((b * s.h + h) * len + r) * d + c];
  };
  std::vector<double> mean(d, 0.0), qp(nq * d, 0.0), kp(nk * d, 0.0), out(nq * nk, 0.0);
  for (int64_t r = 0; r < s.lk; ++r)
    for (int64_t c = 0; c < d; ++c) mean[c] += at(k, s.lk, r, c) / s.lk;
  for (int64_t r = 0; r < s.lq; ++r)
    for (int64_t c = 0; c < d; ++c) qp[(r / bq) * d + c] += at(q, s.lq, r, c);
  for (int64_t r = 0; r < s.lk; ++r)
    for (int64_t c = 0; c < d; ++c) kp[(r / bk) * d + c] += at(k, s.lk, r, c) - mean[c];
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t c = 0; c < d; ++c) qp[i * d + c] /= static_cast<double>(std::min<int64_t>(bq, s.lq - i * bq));
  for (int64_t j = 0; j < nk; ++j)
    for (int64_t c = 0; c < d; ++c) kp[j * d + c] /= static_cast<double>(std::min<int64_t>(bk, s.lk - j * bk));
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t j = 0; j < nk; ++j)
      for (int64_t c = 0; c < d; ++c) out[i * nk + j] += qp[i * d + c] * kp[j * d + c];
  return out;
}

struct Expected {
  std::vector<int32_t> critical;    // sorted
  std::vector<int32_t> negligible;  // sorted
};

// One row by brute force: the stable descending order, shares softmax(scale * S), the top_p count as the smallest
// n whose prefix sum reaches p (each prefix summed from scratch), the threshold set as every block below it.
Expected brute_row(const double* row, int64_t nk, double scale, const Config& cfg, int64_t head, int64_t lut_width,
                   int64_t negl_width) {
  std::vector<int32_t> order(nk);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t c) {
    return row[a] > row[c];
  });
  const double top = row[order[0]];
  std::vector<double> share(nk);
  double z = 0.0;
  for (int64_t j = 0; j < nk; ++j) z += std::exp(scale * (row[j] - top));
  for (int64_t j = 0; j < nk; ++j) share[j] = std::exp(scale * (row[j] - top)) / z;
  int64_t t = 0;
  if (cfg.rule == CriticalRule::top_p) {
    const double p = cfg.head_top_p.empty() ? cfg.top_p : cfg.head_top_p[head];
    for (t = 1; t < nk; ++t) {
      double prefix = 0.0;
      for (int64_t e = 0; e < t; ++e) prefix += share[order[e]];
      if (prefix >= p) break;
    }
    t = std::min(std::max(t, std::min(cfg.min_blocks, lut_width)), lut_width);
  } else {
    const double topk = cfg.head_topk.empty() ? cfg.topk : cfg.head_topk[head];
    t = std::min<int64_t>(std::max<int64_t>(static_cast<int64_t>(std::floor(topk * nk)), 1), nk);
  }
  Expected e;
  e.critical.assign(order.begin(), order.begin() + t);
  int64_t tn = std::min(negl_width, nk - t);
  if (cfg.negligible_threshold > 0.0) {
    int64_t below = 0;
    for (int64_t j = 0; j < nk; ++j) below += share[j] < cfg.negligible_threshold ? 1 : 0;
    tn = std::min(tn, below);
  }
  e.negligible.assign(order.end() - tn, order.end());
  std::sort(e.critical.begin(), e.critical.end());
  std::sort(e.negligible.begin(), e.negligible.end());
  return e;
}

struct RuleCase {
  const char* name;
  Config cfg;
  int64_t lq, lk;
};

// Checks every row of the predicted map against brute_row, and the -1 padding; *mean gets the mean row count.
void check_brute_force(const RuleCase& rc, int64_t heads, double* mean) {
  std::mt19937_64 rng(seed_for_current_test());
  Shape s;
  s.b = 2;
  s.h = heads;
  s.lq = rc.lq;
  s.lk = rc.lk;
  s.d = 16;
  s.dv = 16;
  // Q and K in [-3, 3): pooled scores spread enough that the shares are far from uniform.
  const Inputs in = make_inputs(s, sla::DType::f64, rng, false, false, Layout::bhld, 3.0);
  const sla::BlockMapShape ms = map_shape(s, rc.cfg);
  MapBuffers map = alloc_map(ms, true);
  const sla::Status st = predict(in, rc.cfg, map);
  ASSERT_TRUE(st.ok()) << st.message;
  const std::vector<double> q = in.q.logical(), k = in.k.logical();
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.d));
  double total = 0.0;
  int64_t rows = 0;
  for (int64_t b = 0; b < s.b; ++b)
    for (int64_t h = 0; h < s.h; ++h) {
      const std::vector<double> sc = brute_scores(q, k, s, b, h, rc.cfg.block_q, rc.cfg.block_k);
      for (int64_t i = 0; i < ms.q_blocks; ++i) {
        const Expected e = brute_row(&sc[i * ms.k_blocks], ms.k_blocks, scale, rc.cfg, h, ms.critical, ms.negligible);
        const int64_t n = static_cast<int64_t>(map.count.get({b, h, i}));
        ASSERT_EQ(n, static_cast<int64_t>(e.critical.size()))
            << rc.name << ": count of row " << b << "," << h << "," << i;
        for (int64_t t = 0; t < ms.critical; ++t) {
          const double got = map.lut.get({b, h, i, t});
          if (t < n) {
            ASSERT_EQ(got, e.critical[t]) << rc.name << ": lut row " << b << "," << h << "," << i << " entry " << t;
          } else {
            ASSERT_EQ(got, -1) << rc.name << ": entries past the count must be -1";
          }
        }
        if (ms.negligible > 0) {
          const int64_t nn = static_cast<int64_t>(map.negl_count.get({b, h, i}));
          ASSERT_EQ(nn, static_cast<int64_t>(e.negligible.size())) << rc.name << ": negligible count of row " << i;
          for (int64_t t = 0; t < ms.negligible; ++t) {
            const double got = map.negl_lut.get({b, h, i, t});
            ASSERT_EQ(got, t < nn ? e.negligible[t] : -1) << rc.name << ": negl row " << i << " entry " << t;
          }
        }
        total += static_cast<double>(n);
        ++rows;
      }
    }
  // The inverse tables hold exactly the row counts' entries.
  for (int64_t b = 0; b < s.b; ++b)
    for (int64_t h = 0; h < s.h; ++h) {
      int64_t sum = 0;
      for (int64_t i = 0; i < ms.q_blocks; ++i) sum += static_cast<int64_t>(map.count.get({b, h, i}));
      EXPECT_EQ(map.inv_offset.get({b, h, ms.k_blocks}), sum) << rc.name;
    }
  *mean = total / static_cast<double>(rows);
}

double expect_matches_brute_force(const RuleCase& rc, int64_t heads) {
  double mean = 0.0;
  check_brute_force(rc, heads, &mean);
  return mean;
}

Config base(int bq, int bk) {
  Config c;
  c.block_q = bq;
  c.block_k = bk;
  return c;
}

TEST(BlockMapRules, PerHeadTopkMatchesBruteForce) {
  Config c = base(32, 16);
  c.head_topk = {0.05, 0.3, 0.5, 1.0};
  expect_matches_brute_force({"per-head topk", c, 250, 333}, 4);
}

TEST(BlockMapRules, TopPMatchesBruteForce) {
  for (double p : {0.3, 0.6, 0.9, 0.99, 1.0}) {
    Config c = base(32, 16);
    c.rule = CriticalRule::top_p;
    c.top_p = p;
    expect_matches_brute_force({"top_p", c, 256, 400}, 2);
  }
}

TEST(BlockMapRules, TopPCountGrowsWithP) {
  double last = 0.0;
  for (double p : {0.2, 0.5, 0.8, 0.95}) {
    Config c = base(32, 32);
    c.rule = CriticalRule::top_p;
    c.top_p = p;
    const double mean = expect_matches_brute_force({"top_p monotone", c, 256, 512}, 2);
    EXPECT_GE(mean, last) << "p " << p;
    last = mean;
  }
  EXPECT_GT(last, 1.0);
}

TEST(BlockMapRules, PerHeadTopPWithClampMatchesBruteForce) {
  Config c = base(16, 16);
  c.rule = CriticalRule::top_p;
  c.head_top_p = {0.5, 0.95, 0.999};
  c.min_blocks = 3;
  c.max_blocks = 9;
  expect_matches_brute_force({"per-head top_p clamp", c, 200, 301}, 3);
}

TEST(BlockMapRules, NegligibleThresholdMatchesBruteForce) {
  for (CriticalRule rule : {CriticalRule::topk, CriticalRule::top_p}) {
    Config c = base(32, 16);
    c.variant = Variant::complement;
    c.rule = rule;
    if (rule == CriticalRule::top_p) {
      c.top_p = 0.8;
      c.max_blocks = 10;
    } else {
      c.topk = 0.2;
    }
    c.negligible_threshold = 0.01;
    c.max_negligible = 0.5;
    expect_matches_brute_force({"negligible threshold", c, 256, 330}, 2);
  }
}

TEST(BlockMapRules, TiesGoToTheLowerIndexUnderTopP) {
  // Every key row equal: every pooled key is zero after smooth-K, every share is 1 / Nk; with Nk = 8 and p = 0.3
  // the count is ceil(0.3 * 8) = 3 (the prefix 3/8 >= 0.3 first), the blocks 0, 1, 2.
  Shape s;
  s.b = 1;
  s.h = 1;
  s.lq = 64;
  s.lk = 128;
  s.d = 8;
  s.dv = 8;
  std::mt19937_64 rng(seed_for_current_test());
  Inputs in = make_inputs(s, sla::DType::f64, rng, false, false);
  std::vector<double> k = in.k.logical();
  for (int64_t r = 1; r < s.lk; ++r)
    for (int64_t c = 0; c < s.d; ++c) k[r * s.d + c] = k[c];
  in.k.set_logical(k);
  Config c = base(64, 16);
  c.rule = CriticalRule::top_p;
  c.top_p = 0.3;
  const sla::BlockMapShape ms = map_shape(s, c);
  ASSERT_EQ(ms.critical, 8);
  MapBuffers map = alloc_map(ms, false);
  ASSERT_TRUE(predict(in, c, map).ok());
  EXPECT_EQ(map.count.get({0, 0, 0}), 3);
  for (int t = 0; t < 3; ++t) EXPECT_EQ(map.lut.get({0, 0, 0, t}), t);
  for (int t = 3; t < 8; ++t) EXPECT_EQ(map.lut.get({0, 0, 0, t}), -1);
}

TEST(BlockMapRules, TableWidths) {
  Shape s;
  s.h = 3;
  s.lq = 100;
  s.lk = 640;  // Nk = 10 with bk = 64
  Config c = base(64, 64);
  c.head_topk = {0.1, 0.45, 0.2};
  EXPECT_EQ(map_shape(s, c).critical, 4);
  Config p = base(64, 64);
  p.rule = CriticalRule::top_p;
  p.top_p = 0.9;
  EXPECT_EQ(map_shape(s, p).critical, 10);
  p.max_blocks = 6;
  EXPECT_EQ(map_shape(s, p).critical, 6);
  p.variant = Variant::complement;
  p.negligible_threshold = 0.01;
  p.max_negligible = 0.8;
  EXPECT_EQ(map_shape(s, p).negligible, 4);  // min(floor(0.8 * 10), 10 - 6)
}

TEST(BlockMapRules, ForwardOnAnAdaptiveMapEqualsTheMaskedReference) {
  std::mt19937_64 rng(seed_for_current_test());
  Shape s;
  s.b = 1;
  s.h = 2;
  s.lq = 130;
  s.lk = 200;
  s.d = 8;
  s.dv = 8;
  Config c = base(32, 32);
  c.rule = CriticalRule::top_p;
  c.head_top_p = {0.5, 0.9};
  c.variant = Variant::complement;
  c.negligible_threshold = 0.05;
  c.max_negligible = 0.5;
  const Inputs in = make_inputs(s, sla::DType::f64, rng, true, true, Layout::bhld, 2.0);
  const sla::BlockMapShape ms = map_shape(s, c);
  MapBuffers map = alloc_map(ms, false);
  ASSERT_TRUE(predict(in, c, map).ok());
  ForwardOutputs out = alloc_forward(s, sla::DType::f64, false);
  const sla::Status st = run_forward(in, c, map, out);
  ASSERT_TRUE(st.ok()) << st.message;
  const ref::Dims dims = ref::dims_of(s);
  const ref::Masks masks = ref::masks_from_tables(map, ms.k_blocks);
  const std::vector<double> q = in.q.logical(), k = in.k.logical(), v = in.v.logical();
  const double scale = 1.0 / std::sqrt(8.0);
  const std::vector<double> os = ref::sparse(dims, q, k, v, masks, c.block_q, c.block_k, scale, nullptr);
  const std::vector<double> ol =
      ref::linear(dims, q, k, v, masks, c.block_q, c.block_k, c.variant, c.feature_map, c.eps);
  const std::vector<double> want = ref::output(dims, os, ol, in.w.logical(), in.bias.logical());
  EXPECT_TRUE(all_close(out.o.logical(), want, 1e-10, 1e-10));
}

void expect_invalid(const Config& c, const std::string& needle, int64_t heads = 2) {
  sla::BlockMapShape ms;
  const sla::Status st = sla::block_map_shape(1, heads, 256, 256, c, &ms);
  EXPECT_EQ(st.code, sla::StatusCode::invalid_argument) << needle;
  EXPECT_NE(st.message.find(needle), std::string::npos) << "message: " << st.message << "\nexpected: " << needle;
}

TEST(BlockMapRules, ValidationNamesTheArgument) {
  Config c;
  c.head_topk = {0.1, 1.5};
  expect_invalid(c, "cfg.head_topk[1]: expected a finite value in (0, 1], got 1.5");
  c.head_topk = {0.1, 0.2, 0.3};
  expect_invalid(c, "cfg.head_topk: expected H = 2 values (one per head) or none, got 3");
  c = Config();
  c.top_p = 0.9;
  expect_invalid(c, "cfg.top_p: expected 0 and cfg.head_top_p empty with cfg.rule = topk");
  c.rule = CriticalRule::top_p;
  c.top_p = 0.0;
  expect_invalid(c, "cfg.top_p: expected a finite value in (0, 1] with cfg.rule = top_p, got 0");
  c.top_p = 0.9;
  c.min_blocks = 0;
  expect_invalid(c, "cfg.min_blocks: expected >= 1, got 0");
  c.min_blocks = 4;
  c.max_blocks = 2;
  expect_invalid(c, "cfg.max_blocks: expected 0 (meaning Nk) or >= cfg.min_blocks = 4, got 2");
  c = Config();
  c.max_blocks = 3;
  expect_invalid(c, "cfg.min_blocks/max_blocks: expected the defaults 1 and 0 with cfg.rule = topk");
  c = Config();
  c.negligible_threshold = 0.01;
  c.max_negligible = 0.5;
  expect_invalid(c, "cfg.negligible_threshold: expected 0 for the global variant");
  c.variant = Variant::complement;
  c.max_negligible = 0.0;
  expect_invalid(c, "cfg.max_negligible: expected a finite value in (0, 1] with a negligible threshold, got 0");
  c.max_negligible = 0.5;
  c.negligible = 0.1;
  expect_invalid(c, "cfg.negligible: expected 0 when cfg.negligible_threshold is set");
  c = Config();
  c.max_negligible = 0.5;
  expect_invalid(c, "cfg.max_negligible: expected 0 when cfg.negligible_threshold is 0");
  c = Config();
  c.rule = static_cast<CriticalRule>(5);
  expect_invalid(c, "cfg.rule: expected topk (0) or top_p (1), got 5");
}

}  // namespace
}  // namespace sla_test
