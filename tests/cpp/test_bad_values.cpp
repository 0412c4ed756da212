// Inputs that used to give silent garbage on the CPU backend, through the public C++ API:
// - NaN / Inf in q or k must reach O (and the LSE, and the gradients) as in dense attention: the empty-row guard
//   (count 0: O_s = 0) and the complement variant's "denominator <= 0" zero must not swallow a NaN;
// - a caller's block map with counts or indices out of range, repeated indices, negligible blocks that are also
//   critical, or inverse tables that do not match the LUT: forward, backward, invert_block_map and
//   check_block_map return invalid_argument naming the table, the row (b, h, i) and the value;
// - a zero-size dimension names the dimension (not "data is null").
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "sla/sla.h"
#include "test_util.h"

namespace sla_test {
namespace {

using sla::Config;
using sla::Status;
using sla::StatusCode;
using sla::Variant;

::testing::AssertionResult IsInvalid(const Status& s, const std::string& needle) {
  if (s.code != StatusCode::invalid_argument) {
    return ::testing::AssertionFailure() << "expected invalid_argument, got " << sla::status_code_name(s.code) << " ("
                                         << s.message << ")";
  }
  if (s.message.find(needle) == std::string::npos) {
    return ::testing::AssertionFailure() << "message \"" << s.message << "\" does not contain \"" << needle << "\"";
  }
  return ::testing::AssertionSuccess();
}

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

Config config(Variant variant, double topk, double negligible = 0.0) {
  Config c;
  c.block_q = 32;
  c.block_k = 32;
  c.topk = topk;
  c.variant = variant;
  c.negligible = negligible;
  return c;
}

// Offset of element (b, h, l, e) of a contiguous (B, H, L, E) tensor.
int64_t at(const HostTensor& t, int64_t b, int64_t h, int64_t l, int64_t e) {
  return b * t.stride[0] + h * t.stride[1] + l * t.stride[2] + e * t.stride[3];
}

bool row_is(const HostTensor& t, int64_t b, int64_t h, int64_t l, bool (*pred)(double)) {
  for (int64_t e = 0; e < t.shape[3]; ++e) {
    if (!pred(t.get_raw(at(t, b, h, l, e)))) return false;
  }
  return true;
}
bool is_nan(double x) { return std::isnan(x); }
bool is_finite(double x) { return std::isfinite(x); }

struct Case {
  Shape s;
  Config cfg;
  Inputs in;
  MapBuffers map;
  ForwardOutputs fwd;
  Gradients grad;
};

Case make_case(Variant variant, double topk, bool weight, double negligible = 0.0) {
  Case r;
  r.s.b = 1;
  r.s.h = 2;
  r.s.lq = 100;
  r.s.lk = 90;
  r.s.d = r.s.dv = 8;
  r.cfg = config(variant, topk, negligible);
  std::mt19937_64 rng(seed_for_current_test());
  r.in = make_inputs(r.s, DType::f64, rng, weight, weight);
  r.map = alloc_map(map_shape(r.s, r.cfg), true);
  r.fwd = alloc_forward(r.s, DType::f64, true);
  r.grad = alloc_gradients(r.s, DType::f64, weight, weight);
  return r;
}

Status predict_and_forward(Case& r) {
  const Status p = predict(r.in, r.cfg, r.map);
  if (!p.ok()) return p;
  return run_forward(r.in, r.cfg, r.map, r.fwd);
}

Status backward_ones(Case& r) {
  HostTensor d_o = make_bhld(DType::f64, r.s.b, r.s.h, r.s.lq, r.s.dv);
  d_o.fill_storage(1.0);
  return run_backward(r.in, r.cfg, r.map, r.fwd, d_o, r.grad);
}

// ---- non-finite inputs --------------------------------------------------------------------------------------------

class NonFinite : public ::testing::TestWithParam<std::tuple<Variant, double>> {};

TEST_P(NonFinite, InQReachesItsRowOfOAndTheGradients) {
  const auto [variant, value] = GetParam();
  Case r = make_case(variant, 1.0, /*weight=*/true);
  r.in.q.set_raw(at(r.in.q, 0, 0, 5, 3), value);
  ASSERT_TRUE(predict_and_forward(r).ok());
  EXPECT_TRUE(row_is(r.fwd.o, 0, 0, 5, is_nan)) << "the row whose q is non-finite is NaN, never 0";
  EXPECT_TRUE(std::isnan(r.fwd.lse.get_raw(5)));
  for (int64_t l = 0; l < r.s.lq; ++l) {
    if (l != 5) EXPECT_TRUE(row_is(r.fwd.o, 0, 0, l, is_finite)) << "row " << l;
    EXPECT_TRUE(row_is(r.fwd.o, 0, 1, l, is_finite)) << "head 1, row " << l;
  }
  ASSERT_TRUE(backward_ones(r).ok());
  EXPECT_TRUE(row_is(r.grad.dq, 0, 0, 5, is_nan));
  for (int64_t l = 0; l < r.s.lk; ++l) EXPECT_TRUE(row_is(r.grad.dk, 0, 1, l, is_finite));
}

TEST_P(NonFinite, InKReachesEveryRowThatAttendsIt) {
  const auto [variant, value] = GetParam();
  Case r = make_case(variant, 1.0, /*weight=*/false);
  r.in.k.set_raw(at(r.in.k, 0, 0, 7, 3), value);
  ASSERT_TRUE(predict_and_forward(r).ok());
  for (int64_t l = 0; l < r.s.lq; ++l) {
    // +-Inf: rows whose score with key 7 is +Inf are NaN as in dense softmax; -Inf scores weigh 0 there.
    const double score_sign = r.in.q.get_raw(at(r.in.q, 0, 0, l, 3)) * value;
    if (std::isnan(value) || score_sign > 0) EXPECT_TRUE(row_is(r.fwd.o, 0, 0, l, is_nan)) << "row " << l;
    EXPECT_TRUE(row_is(r.fwd.o, 0, 1, l, is_finite)) << "head 1, row " << l;
  }
}

INSTANTIATE_TEST_SUITE_P(Values, NonFinite,
                         ::testing::Combine(::testing::Values(Variant::global, Variant::complement),
                                            ::testing::Values(kNaN, kInf)));

TEST(NonFiniteGuards, EmptyRowStaysZero) {
  Case r = make_case(Variant::global, 0.5, /*weight=*/false);
  ASSERT_TRUE(predict(r.in, r.cfg, r.map).ok());
  r.map.count.set_raw(1, 0);  // head 0, query block 1: no critical key
  ASSERT_TRUE(run_forward(r.in, r.cfg, r.map, r.fwd).ok());
  for (int64_t l = 32; l < 64; ++l) {
    EXPECT_TRUE(row_is(r.fwd.o, 0, 0, l,
                       [](double x) {
                         return x == 0.0;
                       }))
        << "row " << l;
    EXPECT_EQ(r.fwd.lse.get_raw(l), -kInf);
  }
}

TEST(NonFiniteGuards, ComplementNanDenominatorIsNotZeroed) {
  // Query block 0 attends key block 0; key blocks 1 and 2 are marginal and one of their keys is NaN: phi(q) . z_0
  // is NaN, so O_l (and, with W, O) must be NaN rather than the "denominator <= 0" zero.
  Case r = make_case(Variant::complement, 0.34, /*weight=*/true);
  ASSERT_TRUE(predict(r.in, r.cfg, r.map).ok());
  for (int64_t i = 0; i < 4; ++i) {
    r.map.lut.set_raw(i, 0);
    r.map.count.set_raw(i, 1);
  }
  ASSERT_TRUE(sla::invert_block_map(r.map.view(), sla::Exec{}).ok());
  r.in.k.set_raw(at(r.in.k, 0, 0, 70, 2), kNaN);
  ASSERT_TRUE(run_forward(r.in, r.cfg, r.map, r.fwd).ok());
  for (int64_t l = 0; l < r.s.lq; ++l) {
    EXPECT_TRUE(row_is(r.fwd.o_lin, 0, 0, l, is_nan)) << "row " << l;
    EXPECT_TRUE(row_is(r.fwd.o, 0, 0, l, is_nan)) << "row " << l;
  }
  ASSERT_TRUE(backward_ones(r).ok());
  EXPECT_TRUE(row_is(r.grad.dq, 0, 0, 0, is_nan));
}

TEST(NonFiniteGuards, ReluOfNanIsNan) {
  Case r = make_case(Variant::global, 1.0, /*weight=*/true);
  r.cfg.feature_map = sla::FeatureMap::relu;
  r.in.q.set_raw(at(r.in.q, 0, 1, 9, 0), kNaN);
  ASSERT_TRUE(predict_and_forward(r).ok());
  EXPECT_TRUE(row_is(r.fwd.o_lin, 0, 1, 9, is_nan));
}

// ---- caller block maps --------------------------------------------------------------------------------------------

// Nq = 4, Nk = 3, T = 1 (topk 0.34), Tn = 1 (negligible 0.34) for the complement variant.
class BadMap : public ::testing::Test {
 protected:
  void SetUp() override {
    r_ = make_case(Variant::complement, 0.34, /*weight=*/true, 0.34);
    ASSERT_TRUE(predict(r_.in, r_.cfg, r_.map).ok());
    ASSERT_TRUE(sla::check_block_map(r_.map.view(), 3).ok());
  }
  // Row (b=0, h=1, i=2) is element 6 of the count tables and entry 6 * T of the LUT (T = Tn = 1).
  static constexpr int64_t kRow = 6;

  // Forward, backward and check_block_map all reject the map with `needle` in the message.
  void ExpectRejected(const std::string& needle) {
    EXPECT_TRUE(IsInvalid(run_forward(r_.in, r_.cfg, r_.map, r_.fwd), needle));
    EXPECT_TRUE(IsInvalid(backward_ones(r_), needle));
    EXPECT_TRUE(IsInvalid(sla::check_block_map(r_.map.view(), 3), needle));
  }
  Case r_;
};

TEST_F(BadMap, CountAboveT) {
  r_.map.count.set_raw(kRow, 2);
  ExpectRejected("map.count: row (b=0, h=1, i=2) is 2; expected 0 <= count <= T = 1");
}

TEST_F(BadMap, NegativeCount) {
  r_.map.count.set_raw(kRow, -1);
  ExpectRejected("map.count: row (b=0, h=1, i=2) is -1");
}

TEST_F(BadMap, EntryOutOfRange) {
  for (int32_t bad : {3, -1, std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min()}) {
    r_.map.lut.set_raw(kRow, bad);
    ExpectRejected("map.lut: row (b=0, h=1, i=2) entry 0 is " + std::to_string(bad) +
                   "; expected a key-block index in [0, Nk) = [0, 3)");
  }
}

TEST_F(BadMap, NegligibleAlsoCritical) {
  r_.map.negl_lut.set_raw(kRow, r_.map.lut.get_raw(kRow));
  ExpectRejected("map.negl_lut: row (b=0, h=1, i=2) entry 0 is key block");
}

TEST_F(BadMap, NegligibleCountAndEntry) {
  r_.map.negl_count.set_raw(kRow, 5);
  ExpectRejected("map.negl_count: row (b=0, h=1, i=2) is 5; expected 0 <= count <= Tn = 1");
  r_.map.negl_count.set_raw(kRow, 1);
  r_.map.negl_lut.set_raw(kRow, 9);
  ExpectRejected("map.negl_lut: row (b=0, h=1, i=2) entry 0 is 9");
}

TEST_F(BadMap, InverseTablesMustMatchTheLut) {
  // Head 1's offsets live at (Nk + 1) * 1 = 4.. in inv_offset.
  r_.map.inv_offset.set_raw(4 + 1, 100);
  EXPECT_TRUE(IsInvalid(backward_ones(r_), "map.inv_offset: (b=0, h=1) entry 1 is 100; expected"));
  EXPECT_TRUE(IsInvalid(sla::check_block_map(r_.map.view(), 3), "map.inv_offset"));
  EXPECT_TRUE(run_forward(r_.in, r_.cfg, r_.map, r_.fwd).ok()) << "the forward pass does not read them";
}

TEST_F(BadMap, InvertRejectsABadLut) {
  r_.map.lut.set_raw(kRow, 7);
  EXPECT_TRUE(
      IsInvalid(sla::invert_block_map(r_.map.view(), sla::Exec{}), "map.lut: row (b=0, h=1, i=2) entry 0 is 7"));
}

TEST(BadMapRows, RepeatedEntryAndPermutedRow) {
  Case r = make_case(Variant::global, 0.67, /*weight=*/false);  // T = 2 of Nk = 3
  ASSERT_TRUE(predict(r.in, r.cfg, r.map).ok());
  // A permuted row is fine (docs/SPEC.md 7.7) once the inverse tables are rebuilt for it.
  const double a = r.map.lut.get_raw(0), b = r.map.lut.get_raw(1);
  r.map.lut.set_raw(0, b);
  r.map.lut.set_raw(1, a);
  ASSERT_TRUE(sla::invert_block_map(r.map.view(), sla::Exec{}).ok());
  EXPECT_TRUE(sla::check_block_map(r.map.view(), 3).ok());
  EXPECT_TRUE(run_forward(r.in, r.cfg, r.map, r.fwd).ok());
  r.map.lut.set_raw(1, b);
  EXPECT_TRUE(
      IsInvalid(run_forward(r.in, r.cfg, r.map, r.fwd), "map.lut: row (b=0, h=0, i=0) entry 1 repeats key block"));
  // Entries past the count are never read, so never checked.
  r.map.count.set_raw(0, 1);
  EXPECT_TRUE(run_forward(r.in, r.cfg, r.map, r.fwd).ok());
}

TEST(CheckBlockMap, ArgumentChecks) {
  Case r = make_case(Variant::global, 0.67, false);  // T = 2 of Nk = 3
  ASSERT_TRUE(predict(r.in, r.cfg, r.map).ok());
  EXPECT_TRUE(IsInvalid(sla::check_block_map(r.map.view(), 0), "k_blocks: expected Nk in [1, 2^31 - 1], got 0"));
  EXPECT_TRUE(IsInvalid(sla::check_block_map(r.map.view(), 1),
                        "map.lut: expected last dimension T in [1, Nk = 1] (k_blocks), got 2"));
  sla::BlockMap on_device = r.map.view();
  on_device.lut.device = sla::Device::cuda;
  EXPECT_TRUE(IsInvalid(sla::check_block_map(on_device, 3), "map.lut: expected tables in host memory"));
  sla::BlockMap missing = r.map.view();
  missing.count = sla::TensorView{};
  EXPECT_TRUE(IsInvalid(sla::check_block_map(missing, 3), "map.count: required but absent"));
}

// ---- zero-size dimensions -----------------------------------------------------------------------------------------

TEST(ZeroSize, NamesTheDimensionNotTheNullPointer) {
  Config c = config(Variant::global, 0.5);
  const sla::TensorView q = sla::make_view(nullptr, DType::f32, {1, 2, 64, 0});
  std::vector<float> kd(1 * 2 * 64 * 8);
  const sla::TensorView k = sla::make_view(kd.data(), DType::f32, {1, 2, 64, 8});
  size_t bytes = 0;
  EXPECT_TRUE(
      IsInvalid(sla::predict_block_map_workspace_size(q, k, c, &bytes), "q: expected shape[3] (D) >= 1, got 0"));
  const sla::TensorView q2 = sla::make_view(nullptr, DType::f32, {1, 2, 0, 8});
  EXPECT_TRUE(
      IsInvalid(sla::predict_block_map_workspace_size(q2, k, c, &bytes), "q: expected shape[2] (Lq) >= 1, got 0"));
}

}  // namespace
}  // namespace sla_test
