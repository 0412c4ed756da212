// Argument validation of the public API: every rejected input gets the right status code and a message that
// names the argument; valid inputs (including strided layouts, ragged and huge L) resolve into the right Problem.
//
// Validation never reads tensor data, so every view points at one small dummy buffer; shapes may be huge.
// Expected sizes below are worked out by hand from docs/SPEC.md, never computed by the code under test.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/validate.h"
#include "sla/sla.h"

namespace sla {
namespace {

void* dummy() {
  static double buffer[4];
  return buffer;
}

TensorView view(DType dt, std::initializer_list<int64_t> shape) { return make_view(dummy(), dt, shape); }

::testing::AssertionResult HasError(const Status& s, StatusCode code, const std::string& needle) {
  if (s.code != code) {
    return ::testing::AssertionFailure() << "expected code " << status_code_name(code) << ", got "
                                         << status_code_name(s.code) << " (" << s.message << ")";
  }
  if (s.message.find(needle) == std::string::npos) {
    return ::testing::AssertionFailure() << "message \"" << s.message << "\" does not contain \"" << needle << "\"";
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult IsInvalid(const Status& s, const std::string& needle) {
  return HasError(s, StatusCode::invalid_argument, needle);
}

// The reference problem: B=2, H=3, Lq=100, Lk=130, D=32, Dv=16, block 32/32, topk 0.5.
// By hand: Nq = ceil(100/32) = 4, Nk = ceil(130/32) = 5, T = floor(0.5*5) = 2; complement with k_l = 0.2:
// Tn = min(floor(0.2*5), 5-2) = 1.
constexpr int64_t B = 2, H = 3, LQ = 100, LK = 130, D = 32, DV = 16;
constexpr int64_t NQ = 4, NK = 5, T = 2, TN = 1;

Config global_cfg() {
  Config c;
  c.block_q = 32;
  c.block_k = 32;
  c.topk = 0.5;
  return c;
}

Config complement_cfg() {
  Config c = global_cfg();
  c.variant = Variant::complement;
  c.negligible = 0.2;
  return c;
}

BlockMap make_map(bool inverse, bool negligible) {
  BlockMap m;
  m.lut = view(DType::i32, {B, H, NQ, T});
  m.count = view(DType::i32, {B, H, NQ});
  if (inverse) {
    m.inv_offset = view(DType::i32, {B, H, NK + 1});
    m.inv_index = view(DType::i32, {B, H, NQ * T});
  }
  if (negligible) {
    m.negl_lut = view(DType::i32, {B, H, NQ, TN});
    m.negl_count = view(DType::i32, {B, H, NQ});
    if (inverse) {
      m.negl_inv_offset = view(DType::i32, {B, H, NK + 1});
      m.negl_inv_index = view(DType::i32, {B, H, NQ * TN});
    }
  }
  return m;
}

ForwardArgs make_forward(DType dt = DType::f32, bool training = true, bool complement = false) {
  const DType acc = dt == DType::f64 ? DType::f64 : DType::f32;
  ForwardArgs a;
  a.q = view(dt, {B, H, LQ, D});
  a.k = view(dt, {B, H, LK, D});
  a.v = view(dt, {B, H, LK, DV});
  a.proj_weight = view(acc, {DV, DV});
  a.proj_bias = view(acc, {DV});
  a.map = make_map(false, complement);
  a.o = view(dt, {B, H, LQ, DV});
  if (training) {
    a.lse = view(acc, {B, H, LQ});
    a.o_lin = view(acc, {B, H, LQ, DV});
    a.lin_h = view(acc, {B, H, D, DV});
    a.lin_z = view(acc, {B, H, D});
  }
  return a;
}

BackwardArgs make_backward(DType dt = DType::f32, bool complement = false) {
  const DType acc = dt == DType::f64 ? DType::f64 : DType::f32;
  ForwardArgs f = make_forward(dt, true, complement);
  BackwardArgs a;
  a.q = f.q;
  a.k = f.k;
  a.v = f.v;
  a.proj_weight = f.proj_weight;
  a.proj_bias = f.proj_bias;
  a.map = make_map(true, complement);
  a.o = f.o;
  a.d_o = f.o;
  a.lse = f.lse;
  a.o_lin = f.o_lin;
  a.lin_h = f.lin_h;
  a.lin_z = f.lin_z;
  a.dq = view(dt, {B, H, LQ, D});
  a.dk = view(dt, {B, H, LK, D});
  a.dv = view(dt, {B, H, LK, DV});
  a.d_proj_weight = view(acc, {DV, DV});
  a.d_proj_bias = view(acc, {DV});
  return a;
}

Status fwd(const ForwardArgs& a, const Config& c = global_cfg()) {
  Problem p;
  return validate_forward(a, c, &p);
}
Status bwd(const BackwardArgs& a, const Config& c = global_cfg()) {
  Problem p;
  return validate_backward(a, c, &p);
}

// ---- the baseline arguments are valid (otherwise every rejection below would prove nothing) ----

TEST(ApiValidation, BaselineArgumentsAreValid) {
  EXPECT_TRUE(fwd(make_forward()).ok()) << fwd(make_forward()).message;
  EXPECT_TRUE(fwd(make_forward(DType::bf16, false)).ok());
  EXPECT_TRUE(fwd(make_forward(DType::f16, true, true), complement_cfg()).ok());
  EXPECT_TRUE(bwd(make_backward()).ok()) << bwd(make_backward()).message;
  EXPECT_TRUE(bwd(make_backward(DType::f64, true), complement_cfg()).ok());
}

// ---- q, k, v ----

TEST(ApiValidation, RejectsWrongRank) {
  ForwardArgs a = make_forward();
  a.q = view(DType::f32, {B, LQ, D});
  EXPECT_TRUE(IsInvalid(fwd(a), "q: expected 4 dimensions (B, H, Lq, D), got 3"));
}

TEST(ApiValidation, RejectsMalformedViewWithTooManyDims) {
  ForwardArgs a = make_forward();
  a.k = view(DType::f32, {1, B, H, LK, D, 1});  // 6 dims: make_view marks the view malformed
  EXPECT_TRUE(IsInvalid(fwd(a), "k: expected 4 dimensions"));
}

TEST(ApiValidation, RejectsBatchMismatch) {
  ForwardArgs a = make_forward();
  a.k = view(DType::f32, {B + 1, H, LK, D});
  EXPECT_TRUE(IsInvalid(fwd(a), "k: expected shape[0] (B) = 2 like q, got 3"));
}

TEST(ApiValidation, RejectsHeadCountMismatch) {
  ForwardArgs a = make_forward();
  a.v = view(DType::f32, {B, H + 1, LK, DV});
  EXPECT_TRUE(IsInvalid(fwd(a), "v: expected shape[1] (H) = 3 like k, got 4"));
}

TEST(ApiValidation, RejectsHeadDimMismatchBetweenQAndK) {
  ForwardArgs a = make_forward();
  a.k = view(DType::f32, {B, H, LK, 16});
  EXPECT_TRUE(IsInvalid(fwd(a), "k: expected shape[3] (D) = 32 like q, got 16"));
}

TEST(ApiValidation, RejectsSequenceMismatchBetweenKAndV) {
  ForwardArgs a = make_forward();
  a.v = view(DType::f32, {B, H, LK - 1, DV});
  EXPECT_TRUE(IsInvalid(fwd(a), "v: expected shape[2] (Lk) = 130 like k, got 129"));
}

TEST(ApiValidation, RejectsDvMismatchBetweenVAndO) {
  ForwardArgs a = make_forward();
  a.o = view(DType::f32, {B, H, LQ, D});
  EXPECT_TRUE(IsInvalid(fwd(a), "o: expected shape[3] (Dv) = 16 like v, got 32"));
}

TEST(ApiValidation, RejectsOutputLengthMismatch) {
  ForwardArgs a = make_forward();
  a.o = view(DType::f32, {B, H, LK, DV});
  EXPECT_TRUE(IsInvalid(fwd(a), "o: expected shape[2] (Lq) = 100 like q, got 130"));
}

TEST(ApiValidation, RejectsZeroLength) {
  ForwardArgs a = make_forward();
  a.q = view(DType::f32, {B, H, 0, D});
  EXPECT_TRUE(IsInvalid(fwd(a), "q: expected shape[2] (Lq) >= 1, got 0"));
}

TEST(ApiValidation, RejectsDtypeMismatch) {
  ForwardArgs a = make_forward();
  a.k = view(DType::bf16, {B, H, LK, D});
  EXPECT_TRUE(IsInvalid(fwd(a), "k: expected dtype f32 like q, got bf16"));
}

TEST(ApiValidation, RejectsIntegerInputs) {
  ForwardArgs a = make_forward();
  a.q = view(DType::i32, {B, H, LQ, D});
  EXPECT_TRUE(IsInvalid(fwd(a), "q: expected dtype f16, bf16, f32 or f64, got i32"));
}

TEST(ApiValidation, RejectsOutputDtypeMismatch) {
  ForwardArgs a = make_forward();
  a.o = view(DType::f16, {B, H, LQ, DV});
  EXPECT_TRUE(IsInvalid(fwd(a), "o: expected dtype f32 like q, got f16"));
}

TEST(ApiValidation, RejectsMixedDevices) {
  ForwardArgs a = make_forward();
  a.k.device = Device::cuda;
  EXPECT_TRUE(IsInvalid(fwd(a), "k: expected device cpu:0 like q, got cuda:0"));
}

TEST(ApiValidation, RejectsMixedDeviceIndices) {
  ForwardArgs a = make_forward();
  for (TensorView* t : {&a.q, &a.k, &a.v, &a.o, &a.proj_weight, &a.proj_bias, &a.lse, &a.o_lin, &a.lin_h, &a.lin_z,
                        &a.map.lut, &a.map.count}) {
    t->device = Device::cuda;
  }
  ASSERT_TRUE(fwd(a).ok()) << fwd(a).message;  // all on cuda:0 is fine for validation
  a.v.device_index = 1;
  EXPECT_TRUE(IsInvalid(fwd(a), "v: expected device cuda:0 like q, got cuda:1"));
}

TEST(ApiValidation, RejectsNullData) {
  ForwardArgs a = make_forward();
  a.q.data = nullptr;
  EXPECT_TRUE(IsInvalid(fwd(a), "q: data is null"));
}

TEST(ApiValidation, RejectsNonUnitLastStride) {
  ForwardArgs a = make_forward();
  a.q = make_strided_view(dummy(), DType::f32, {B, H, LQ, D}, {H * LQ * D * 2, LQ * D * 2, D * 2, 2});
  EXPECT_TRUE(IsInvalid(fwd(a), "q: expected stride[3] = 1 (contiguous last dimension), got 2"));
}

TEST(ApiValidation, RejectsZeroStride) {
  ForwardArgs a = make_forward();
  a.k = make_strided_view(dummy(), DType::f32, {B, H, LK, D}, {H * LK * D, 0, D, 1});
  EXPECT_TRUE(IsInvalid(fwd(a), "k: expected stride[1] >= 1"));
}

TEST(ApiValidation, RejectsNegativeStride) {
  ForwardArgs a = make_forward();
  a.v = make_strided_view(dummy(), DType::f32, {B, H, LK, DV}, {H * LK * DV, LK * DV, -DV, 1});
  EXPECT_TRUE(IsInvalid(fwd(a), "v: expected stride[2] >= 1"));
}

TEST(ApiValidation, RejectsAddressRangeBeyondInt64) {
  ForwardArgs a = make_forward();
  a.q = make_strided_view(dummy(), DType::f32, {B, H, LQ, D}, {int64_t{1} << 62, LQ * D, D, 1});
  EXPECT_TRUE(IsInvalid(fwd(a), "q: shape (2, 3, 100, 32) with strides"));
}

TEST(ApiValidation, RejectsOverlappingOutput) {
  ForwardArgs a = make_forward();
  a.o = make_strided_view(dummy(), DType::f32, {B, H, LQ, DV}, {H * LQ * DV, LQ * DV, 8, 1});  // rows overlap
  EXPECT_TRUE(IsInvalid(fwd(a), "o: strides (4800, 1600, 8, 1)"));
}

TEST(ApiValidation, RejectsHeadDimAboveLimitAsUnsupported) {
  ForwardArgs a = make_forward();
  a.q = view(DType::f32, {B, H, LQ, 2048});
  EXPECT_TRUE(HasError(fwd(a), StatusCode::unsupported, "q: head dim D = 2048"));
}

// ---- Config ----

TEST(ApiValidation, RejectsUnsupportedBlockSizes) {
  Config c = global_cfg();
  c.block_q = 48;
  EXPECT_TRUE(IsInvalid(validate_config(c), "cfg.block_q: expected 16, 32, 64 or 128, got 48"));
  c = global_cfg();
  c.block_k = 256;
  EXPECT_TRUE(IsInvalid(validate_config(c), "cfg.block_k: expected 16, 32, 64 or 128, got 256"));
  c.block_k = 0;
  EXPECT_TRUE(IsInvalid(validate_config(c), "cfg.block_k"));
}

TEST(ApiValidation, RejectsTopkOutOfRange) {
  for (double topk : {0.0, -0.1, 1.5, std::nan(""), std::numeric_limits<double>::infinity()}) {
    Config c = global_cfg();
    c.topk = topk;
    EXPECT_TRUE(IsInvalid(validate_config(c), "cfg.topk: expected a finite value in (0, 1]")) << "topk " << topk;
  }
}

TEST(ApiValidation, RejectsNegligibleOutOfRange) {
  for (double negl : {-0.1, 0.6, std::nan(""), std::numeric_limits<double>::infinity()}) {
    Config c = complement_cfg();  // topk 0.5: negligible must lie in [0, 0.5]
    c.negligible = negl;
    EXPECT_TRUE(IsInvalid(validate_config(c), "cfg.negligible: expected a finite value in [0, 1 - topk]"))
        << "negligible " << negl;
  }
}

TEST(ApiValidation, AcceptsNegligibleAtUpperBound) {
  Config c = complement_cfg();
  c.topk = 0.3;
  c.negligible = 1.0 - 0.3;
  EXPECT_TRUE(validate_config(c).ok());
}

TEST(ApiValidation, RejectsNegligibleForGlobalVariant) {
  Config c = global_cfg();
  c.negligible = 0.1;
  EXPECT_TRUE(IsInvalid(validate_config(c), "cfg.negligible: expected 0 for the global variant"));
}

TEST(ApiValidation, RejectsBadScale) {
  for (double scale : {-1.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
    Config c = global_cfg();
    c.scale = scale;
    EXPECT_TRUE(IsInvalid(validate_config(c), "cfg.scale: expected 0 (meaning 1/sqrt(D)) or a finite value > 0"))
        << "scale " << scale;
  }
}

TEST(ApiValidation, RejectsBadEps) {
  for (double eps : {0.0, -1e-5, std::nan("")}) {
    Config c = global_cfg();
    c.eps = eps;
    EXPECT_TRUE(IsInvalid(validate_config(c), "cfg.eps: expected a finite value > 0")) << "eps " << eps;
  }
}

TEST(ApiValidation, RejectsOutOfRangeEnums) {
  Config c = global_cfg();
  c.variant = static_cast<Variant>(7);
  EXPECT_TRUE(IsInvalid(validate_config(c), "cfg.variant: expected global (0) or complement (1), got 7"));
  c = global_cfg();
  c.feature_map = static_cast<FeatureMap>(-1);
  EXPECT_TRUE(IsInvalid(validate_config(c), "cfg.feature_map"));
}

TEST(ApiValidation, PublicEntryPointsRejectBadConfig) {
  Config c = global_cfg();
  c.topk = 0.0;
  std::size_t bytes = 0;
  ForwardArgs a = make_forward();
  EXPECT_TRUE(IsInvalid(predict_block_map(a.q, a.k, c, a.map, Exec{}), "cfg.topk"));
  EXPECT_TRUE(IsInvalid(predict_block_map_workspace_size(a.q, a.k, c, &bytes), "cfg.topk"));
  BlockMapShape s;
  EXPECT_TRUE(IsInvalid(block_map_shape(B, H, LQ, LK, c, &s), "cfg.topk"));
  // The fields forward and backward read are checked there too.
  c = global_cfg();
  c.eps = 0.0;
  EXPECT_TRUE(IsInvalid(forward(make_forward(), c, Exec{}), "cfg.eps"));
  EXPECT_TRUE(IsInvalid(forward_workspace_size(make_forward(), c, &bytes), "cfg.eps"));
  EXPECT_TRUE(IsInvalid(backward(make_backward(), c, Exec{}), "cfg.eps"));
  EXPECT_TRUE(IsInvalid(backward_workspace_size(make_backward(), c, &bytes), "cfg.eps"));
  c = global_cfg();
  c.block_k = 48;
  EXPECT_TRUE(IsInvalid(fwd(make_forward(), c), "cfg.block_k: expected 16, 32, 64 or 128, got 48"));
  c = global_cfg();
  c.variant = static_cast<Variant>(7);
  EXPECT_TRUE(IsInvalid(bwd(make_backward(), c), "cfg.variant: expected global (0) or complement (1), got 7"));
}

TEST(ApiValidation, ForwardAndBackwardDoNotReadTheBlockMapFields) {
  // T and Tn come from the tables: topk, negligible and the adaptive rules are for predict_block_map only, so any
  // value (even one predict rejects) leaves forward and backward unchanged.
  Config c = global_cfg();
  c.topk = 0.0;
  c.negligible = 0.7;
  c.rule = CriticalRule::top_p;
  c.top_p = 2.0;
  c.negligible_threshold = 0.5;
  EXPECT_TRUE(IsInvalid(validate_config(c), "cfg."));
  Problem p;
  ASSERT_TRUE(validate_forward(make_forward(), c, &p).ok()) << validate_forward(make_forward(), c, &p).message;
  EXPECT_EQ(p.map.critical, T);
  EXPECT_EQ(p.map.negligible, 0);
  ASSERT_TRUE(validate_backward(make_backward(), c, &p).ok()) << validate_backward(make_backward(), c, &p).message;
  c.variant = Variant::complement;
  c.negligible = 0.0;
  ASSERT_TRUE(validate_forward(make_forward(DType::f32, true, true), c, &p).ok());
  EXPECT_EQ(p.map.negligible, TN);
}

// ---- block map ----

TEST(ApiValidation, RejectsLutOfWrongShape) {
  ForwardArgs a = make_forward();
  a.map.lut = view(DType::i32, {B, H, NQ + 1, T});
  EXPECT_TRUE(IsInvalid(fwd(a), "map.lut: expected shape[2] (Nq = ceil(Lq / block_q)) = 4, got 5"));
  a.map.lut = view(DType::i32, {B, H, NQ});
  EXPECT_TRUE(IsInvalid(fwd(a), "map.lut: expected 4 dimensions (B, H, Nq, T), got 3"));
  a.map.lut = TensorView{};
  EXPECT_TRUE(IsInvalid(fwd(a), "map.lut: required but absent"));
}

// T is map.lut's last dimension: any width in [1, Nk] is accepted, whatever cfg.topk says (0.5 here: 2 of Nk = 5).
TEST(ApiValidation, TakesTheLutWidthFromTheTable) {
  for (int64_t t = 1; t <= NK; ++t) {
    ForwardArgs a = make_forward();
    a.map.lut = view(DType::i32, {B, H, NQ, t});
    Problem p;
    ASSERT_TRUE(validate_forward(a, global_cfg(), &p).ok())
        << "T " << t << ": " << validate_forward(a, global_cfg(), &p).message;
    EXPECT_EQ(p.map.critical, t);
    EXPECT_EQ(p.map.negligible, 0);
    BackwardArgs g = make_backward();
    g.map.lut = a.map.lut;
    g.map.inv_index = view(DType::i32, {B, H, NQ * t});
    ASSERT_TRUE(validate_backward(g, global_cfg(), &p).ok())
        << "T " << t << ": " << validate_backward(g, global_cfg(), &p).message;
    EXPECT_EQ(p.map.critical, t);
  }
}

TEST(ApiValidation, RejectsLutWidthOutsideOneToNk) {
  ForwardArgs a = make_forward();
  a.map.lut = view(DType::i32, {B, H, NQ, 0});
  EXPECT_TRUE(IsInvalid(fwd(a), "map.lut: expected last dimension T in [1, Nk = 5], got 0"));
  a.map.lut = view(DType::i32, {B, H, NQ, NK + 1});
  EXPECT_TRUE(IsInvalid(fwd(a), "map.lut: expected last dimension T in [1, Nk = 5], got 6"));
  BackwardArgs g = make_backward();
  g.map.lut = view(DType::i32, {B, H, NQ, NK + 1});
  EXPECT_TRUE(IsInvalid(bwd(g), "map.lut: expected last dimension T in [1, Nk = 5], got 6"));
}

TEST(ApiValidation, RejectsInverseIndexNotMatchingTheLutWidth) {
  BackwardArgs a = make_backward();
  a.map.lut = view(DType::i32, {B, H, NQ, 3});  // T = 3: inv_index must hold Nq * 3 = 12 entries per (b, h)
  EXPECT_TRUE(IsInvalid(bwd(a), "map.inv_index: expected shape[2] (Nq * T) = 12, got 8"));
  ForwardArgs f = make_forward(DType::f32, true, true);
  f.map.negl_inv_offset = view(DType::i32, {B, H, NK + 1});
  f.map.negl_inv_index = view(DType::i32, {B, H, NQ * 2});
  EXPECT_TRUE(IsInvalid(fwd(f, complement_cfg()), "map.negl_inv_index: expected shape[2] (Nq * Tn) = 4, got 8"));
}

TEST(ApiValidation, RejectsLutOfWrongDtype) {
  ForwardArgs a = make_forward();
  a.map.lut = view(DType::f32, {B, H, NQ, T});
  EXPECT_TRUE(IsInvalid(fwd(a), "map.lut: expected dtype i32"));
}

TEST(ApiValidation, RejectsNonContiguousLut) {
  ForwardArgs a = make_forward();
  a.map.lut = make_strided_view(dummy(), DType::i32, {B, H, NQ, T}, {H * NQ * T * 2, NQ * T * 2, T * 2, 1});
  EXPECT_TRUE(IsInvalid(fwd(a), "map.lut: expected a contiguous"));
}

TEST(ApiValidation, RejectsCountOfWrongShape) {
  ForwardArgs a = make_forward();
  a.map.count = view(DType::i32, {B, H, NQ, 1});
  EXPECT_TRUE(IsInvalid(fwd(a), "map.count: expected 3 dimensions"));
}

TEST(ApiValidation, RejectsLutOnAnotherDevice) {
  ForwardArgs a = make_forward();
  a.map.count.device = Device::cuda;
  EXPECT_TRUE(IsInvalid(fwd(a), "map.count: expected device cpu:0 like q, got cuda:0"));
}

TEST(ApiValidation, RejectsNegligibleTablesForTheGlobalVariant) {
  ForwardArgs a = make_forward(DType::f32, true, /*complement=*/true);
  EXPECT_TRUE(IsInvalid(fwd(a, global_cfg()),
                        "map.negl_lut: expected absent for the global variant (only the complement variant skips "
                        "blocks), got a present view"));
  a.map.negl_lut = TensorView{};
  EXPECT_TRUE(IsInvalid(fwd(a, global_cfg()), "map.negl_count: expected absent for the global variant"));
}

TEST(ApiValidation, RejectsNegligibleCountWithoutTable) {
  ForwardArgs a = make_forward(DType::f32, true, /*complement=*/true);
  a.map.negl_lut = TensorView{};
  EXPECT_TRUE(IsInvalid(fwd(a, complement_cfg()), "map.negl_count: expected absent because map.negl_lut is absent"));
}

// Tn is map.negl_lut's last dimension (0 when it is absent), in [0, Nk - T], whatever cfg.negligible says.
TEST(ApiValidation, TakesTheNegligibleWidthFromTheTable) {
  Problem p;
  ForwardArgs a = make_forward(DType::f32, true, /*complement=*/false);
  ASSERT_TRUE(validate_forward(a, complement_cfg(), &p).ok()) << validate_forward(a, complement_cfg(), &p).message;
  EXPECT_EQ(p.map.negligible, 0);
  for (int64_t tn = 1; tn <= NK - T; ++tn) {
    a = make_forward(DType::f32, true, /*complement=*/true);
    a.map.negl_lut = view(DType::i32, {B, H, NQ, tn});
    ASSERT_TRUE(validate_forward(a, complement_cfg(), &p).ok()) << "Tn " << tn;
    EXPECT_EQ(p.map.critical, T);
    EXPECT_EQ(p.map.negligible, tn);
    BackwardArgs g = make_backward(DType::f32, /*complement=*/true);
    g.map.negl_lut = a.map.negl_lut;
    g.map.negl_inv_index = view(DType::i32, {B, H, NQ * tn});
    ASSERT_TRUE(validate_backward(g, complement_cfg(), &p).ok()) << "Tn " << tn;
    EXPECT_EQ(p.map.negligible, tn);
  }
}

TEST(ApiValidation, RejectsNegligibleWidthAboveNkMinusT) {
  ForwardArgs a = make_forward(DType::f32, true, /*complement=*/true);
  a.map.negl_lut = view(DType::i32, {B, H, NQ, NK - T + 1});
  EXPECT_TRUE(IsInvalid(fwd(a, complement_cfg()),
                        "map.negl_lut: expected last dimension Tn in [0, Nk - T = 5 - 2 = 3], got 4"));
  a.map.lut = view(DType::i32, {B, H, NQ, NK});  // T = Nk leaves no room
  a.map.negl_lut = view(DType::i32, {B, H, NQ, 1});
  EXPECT_TRUE(IsInvalid(fwd(a, complement_cfg()),
                        "map.negl_lut: expected last dimension Tn in [0, Nk - T = 5 - 5 = 0], got 1"));
  a.map.negl_lut = view(DType::i32, {B, H, NQ, 0});
  EXPECT_TRUE(IsInvalid(fwd(a, complement_cfg()), "map.negl_lut: expected last dimension Tn >= 1"));
}

TEST(ApiValidation, RejectsHalfAnInversePair) {
  ForwardArgs a = make_forward();
  a.map.inv_offset = view(DType::i32, {B, H, NK + 1});
  Problem p;
  EXPECT_TRUE(IsInvalid(validate_predict(a.q, a.k, global_cfg(), a.map, &p),
                        "map.inv_index: absent but map.inv_offset is present"));
}

TEST(ApiValidation, RejectsInverseOffsetsOfWrongShape) {
  BackwardArgs a = make_backward();
  a.map.inv_offset = view(DType::i32, {B, H, NK});
  EXPECT_TRUE(IsInvalid(bwd(a), "map.inv_offset: expected shape[2] (Nk + 1 = ceil(Lk / block_k) + 1) = 6, got 5"));
}

// ---- forward outputs and projection ----

TEST(ApiValidation, RejectsPartiallyPresentSavedOutputs) {
  ForwardArgs a = make_forward();
  a.lin_h = TensorView{};
  EXPECT_TRUE(IsInvalid(fwd(a), "lin_h: absent but lse is present"));
  a = make_forward(DType::f32, false);
  a.lin_z = view(DType::f32, {B, H, D});
  EXPECT_TRUE(IsInvalid(fwd(a), "lse: absent but lin_z is present"));
}

// O_l is optional in the saved state: only the CPU backward reads it.
TEST(ApiValidation, SavesTheStateWithoutOLin) {
  ForwardArgs a = make_forward();
  a.o_lin = TensorView{};
  EXPECT_TRUE(fwd(a).ok()) << fwd(a).message;
  a = make_forward(DType::f32, false);
  a.o_lin = view(DType::f32, {B, H, LQ, DV});
  EXPECT_TRUE(IsInvalid(fwd(a), "o_lin: present but lse, lin_h and lin_z are absent"));
  a = make_forward();
  a.o_lin = view(DType::f32, {B, H, LQ, D + 1});
  EXPECT_TRUE(IsInvalid(fwd(a), "o_lin: expected shape[3] (Dv)"));
}

TEST(ApiValidation, OnlyTheCpuBackwardNeedsOLin) {
  BackwardArgs a = make_backward();
  a.o_lin = TensorView{};
  EXPECT_TRUE(
      IsInvalid(bwd(a), "o_lin: absent; expected the forward's O_l (B, H, Lq, Dv), which the CPU backward reads"));
  for (TensorView* t :
       {&a.q, &a.k, &a.v, &a.o, &a.d_o, &a.proj_weight, &a.proj_bias, &a.lse, &a.lin_h, &a.lin_z, &a.dq, &a.dk, &a.dv,
        &a.d_proj_weight, &a.d_proj_bias, &a.map.lut, &a.map.count, &a.map.inv_offset, &a.map.inv_index}) {
    t->device = Device::cuda;
  }
  EXPECT_TRUE(bwd(a).ok()) << bwd(a).message;
}

TEST(ApiValidation, RejectsSavedOutputsInInputDtype) {
  ForwardArgs a = make_forward(DType::f16);
  a.lse = view(DType::f16, {B, H, LQ});
  EXPECT_TRUE(IsInvalid(fwd(a), "lse: expected dtype f32 (the accumulation type for f16 inputs), got f16"));
}

TEST(ApiValidation, RejectsSavedStateOfWrongShape) {
  ForwardArgs a = make_forward();
  a.lin_h = view(DType::f32, {B, H, DV, D});
  EXPECT_TRUE(IsInvalid(fwd(a), "lin_h: expected shape[2] (D) = 32 like q, got 16"));
}

TEST(ApiValidation, RejectsProjectionWeightOfWrongShape) {
  ForwardArgs a = make_forward();
  a.proj_weight = view(DType::f32, {DV, D});
  EXPECT_TRUE(IsInvalid(fwd(a), "proj_weight: expected shape[1] (Dv) = 16 like v, got 32"));
}

TEST(ApiValidation, RejectsProjectionWeightOfWrongDtype) {
  ForwardArgs a = make_forward(DType::bf16);
  a.proj_weight = view(DType::bf16, {DV, DV});
  EXPECT_TRUE(IsInvalid(fwd(a), "proj_weight: expected dtype f32"));
}

TEST(ApiValidation, RejectsProjectionBiasOfWrongShape) {
  ForwardArgs a = make_forward();
  a.proj_bias = view(DType::f32, {DV, 1});
  EXPECT_TRUE(IsInvalid(fwd(a), "proj_bias: expected 1 dimensions"));
}

TEST(ApiValidation, AcceptsAbsentProjection) {
  ForwardArgs a = make_forward();
  a.proj_weight = TensorView{};
  a.proj_bias = TensorView{};
  Problem p;
  ASSERT_TRUE(validate_forward(a, global_cfg(), &p).ok());
  EXPECT_FALSE(p.has_weight);
  EXPECT_FALSE(p.has_bias);
}

// ---- backward ----

// The CPU backward reads the inverse tables: without them it fails, saying so and how to build them.
TEST(ApiValidation, CpuBackwardRequiresInverseMap) {
  BackwardArgs a = make_backward();
  a.map = make_map(/*inverse=*/false, false);
  // By hand: Nk + 1 = 6, Nq * T = 4 * 2 = 8.
  const std::string expected =
      "map.inv_offset: required but absent; the CPU backward reads the inverse tables: expected map.inv_offset "
      "(B, H, Nk + 1) = (2, 3, 6) and map.inv_index (B, H, Nq * T) = (2, 3, 8), filled from the LUT by "
      "invert_block_map";
  EXPECT_TRUE(IsInvalid(bwd(a), expected));
  EXPECT_TRUE(IsInvalid(backward(a, global_cfg(), Exec{}), expected));
  std::size_t bytes = 0;
  EXPECT_TRUE(IsInvalid(backward_workspace_size(a, global_cfg(), &bytes), expected));
  a.map.inv_offset = view(DType::i32, {B, H, NK + 1});
  EXPECT_TRUE(IsInvalid(bwd(a), "map.inv_index: absent but map.inv_offset is present"));
  a.map.inv_offset = TensorView{};
  a.map.inv_index = view(DType::i32, {B, H, NQ * T});
  EXPECT_TRUE(IsInvalid(bwd(a), "map.inv_offset: absent but map.inv_index is present"));
}

// Every view of a backward call on cuda:0 (validation reads no data, so the host dummy buffer will do).
void move_to_cuda(BackwardArgs* a) {
  BlockMap& m = a->map;
  for (TensorView* t : {&a->q,
                        &a->k,
                        &a->v,
                        &a->proj_weight,
                        &a->proj_bias,
                        &a->o,
                        &a->d_o,
                        &a->lse,
                        &a->o_lin,
                        &a->lin_h,
                        &a->lin_z,
                        &a->o_sparse,
                        &a->dq,
                        &a->dk,
                        &a->dv,
                        &a->d_proj_weight,
                        &a->d_proj_bias,
                        &m.lut,
                        &m.count,
                        &m.negl_lut,
                        &m.negl_count,
                        &m.inv_offset,
                        &m.inv_index,
                        &m.negl_inv_offset,
                        &m.negl_inv_index}) {
    t->device = Device::cuda;
  }
}

// The CUDA backward rebuilds the inverse tables from the checked LUT and never reads the caller's: they are
// optional there, and checked (pair, shape, dtype, device) when given.
TEST(ApiValidation, CudaBackwardInverseTablesAreOptionalButCheckedWhenGiven) {
  BackwardArgs a = make_backward();
  move_to_cuda(&a);
  ASSERT_TRUE(bwd(a).ok()) << bwd(a).message;  // with them
  a.map.inv_offset = TensorView{};
  a.map.inv_index = TensorView{};
  Problem p;
  ASSERT_TRUE(validate_backward(a, global_cfg(), &p).ok()) << validate_backward(a, global_cfg(), &p).message;
  EXPECT_EQ(p.device, Device::cuda);
  EXPECT_EQ(p.map.critical, T);
  EXPECT_TRUE(p.save_for_backward);
  // The complement variant with negligible tables, no inverse tables at all.
  BackwardArgs c = make_backward(DType::bf16, /*complement=*/true);
  c.map = make_map(/*inverse=*/false, /*negligible=*/true);
  move_to_cuda(&c);
  EXPECT_TRUE(bwd(c, complement_cfg()).ok()) << bwd(c, complement_cfg()).message;
  // The same call on the CPU is refused: only the device decides.
  BackwardArgs h = make_backward(DType::bf16, /*complement=*/true);
  h.map = make_map(false, true);
  EXPECT_TRUE(IsInvalid(bwd(h, complement_cfg()), "map.inv_offset: required but absent; the CPU backward"));

  // Given: half a pair, a wrong shape, a wrong dtype or a table on another device are still rejected.
  a.map.inv_offset = view(DType::i32, {B, H, NK + 1});
  a.map.inv_offset.device = Device::cuda;
  EXPECT_TRUE(IsInvalid(bwd(a), "map.inv_index: absent but map.inv_offset is present"));
  a.map.inv_index = view(DType::i32, {B, H, NQ * T + 1});
  a.map.inv_index.device = Device::cuda;
  EXPECT_TRUE(IsInvalid(bwd(a), "map.inv_index: expected shape[2] (Nq * T) = 8, got 9"));
  a.map.inv_index = view(DType::f32, {B, H, NQ * T});
  a.map.inv_index.device = Device::cuda;
  EXPECT_TRUE(IsInvalid(bwd(a), "map.inv_index: expected dtype i32"));
  a.map.inv_index = view(DType::i32, {B, H, NQ * T});  // on the host
  EXPECT_TRUE(IsInvalid(bwd(a), "map.inv_index: expected device cuda:0 like q, got cpu:0"));
}

// In a build without CUDA, a CUDA backward without inverse tables gets past validation to the missing backend.
TEST(ApiValidation, CudaBackwardWithoutInverseTablesReachesTheBackend) {
  if (build_info().find("without CUDA") == std::string::npos) GTEST_SKIP() << "built with CUDA";
  BackwardArgs a = make_backward();
  a.map = make_map(/*inverse=*/false, false);
  move_to_cuda(&a);
  const std::string expected = "q: tensor is on CUDA but this build of SLA has no CUDA backend";
  EXPECT_TRUE(HasError(backward(a, global_cfg(), Exec{}), StatusCode::unsupported, expected));
  std::size_t bytes = 0;
  EXPECT_TRUE(HasError(backward_workspace_size(a, global_cfg(), &bytes), StatusCode::unsupported, expected));
}

// No backward reads the negligible class's inverse tables: they may be absent, and are checked when given.
TEST(ApiValidation, NegligibleInverseTablesAreOptionalButCheckedWhenGiven) {
  BackwardArgs a = make_backward(DType::f32, true);
  a.map.negl_inv_offset = TensorView{};
  a.map.negl_inv_index = TensorView{};
  EXPECT_TRUE(bwd(a, complement_cfg()).ok()) << bwd(a, complement_cfg()).message;
  a.map.negl_inv_offset = view(DType::i32, {B, H, NK + 1});
  EXPECT_TRUE(IsInvalid(bwd(a, complement_cfg()), "map.negl_inv_index: absent but map.negl_inv_offset is present"));
  a.map.negl_inv_index = view(DType::i32, {B, H, NQ * TN + 1});
  EXPECT_TRUE(IsInvalid(bwd(a, complement_cfg()), "map.negl_inv_index"));
}

TEST(ApiValidation, BackwardRequiresSavedOutputs) {
  BackwardArgs a = make_backward();
  a.lse = TensorView{};
  EXPECT_TRUE(IsInvalid(bwd(a), "lse: required but absent"));
}

TEST(ApiValidation, BackwardRejectsGradientOfWrongShapeOrDtype) {
  BackwardArgs a = make_backward();
  a.dk = view(DType::f32, {B, H, LQ, D});
  EXPECT_TRUE(IsInvalid(bwd(a), "dk: expected shape[2] (L) = 130 like k, got 100"));
  a = make_backward();
  a.dv = view(DType::f64, {B, H, LK, DV});
  EXPECT_TRUE(IsInvalid(bwd(a), "dv: expected dtype f32 like v, got f64"));
  a = make_backward();
  a.dq.data = nullptr;
  EXPECT_TRUE(IsInvalid(bwd(a), "dq: data is null"));
}

TEST(ApiValidation, BackwardRejectsBadOutputGradient) {
  BackwardArgs a = make_backward();
  a.d_o = view(DType::f32, {B, H, LQ, D});
  EXPECT_TRUE(IsInvalid(bwd(a), "d_o: expected shape[3] (Dv) = 16 like v, got 32"));
}

TEST(ApiValidation, BackwardRejectsProjectionGradientInInputDtype) {
  BackwardArgs a = make_backward(DType::bf16);
  a.d_proj_weight = view(DType::bf16, {DV, DV});
  EXPECT_TRUE(IsInvalid(bwd(a), "d_proj_weight: expected dtype f32"));
}

TEST(ApiValidation, BackwardRejectsInverseTablesBeyondInt32) {
  // L = 10^6 with 16-row blocks and topk = 1: Nq * T = 62500^2 > 2^31 inverse entries (views only, no memory).
  const int64_t l = 1000000, n = 62500;
  Config c = global_cfg();
  c.block_q = c.block_k = 16;
  c.topk = 1.0;
  BackwardArgs a = make_backward();
  a.q = view(DType::f32, {1, 1, l, D});
  a.k = a.q;
  a.v = view(DType::f32, {1, 1, l, DV});
  a.map.lut = view(DType::i32, {1, 1, n, n});
  a.map.count = view(DType::i32, {1, 1, n});
  a.map.inv_offset = view(DType::i32, {1, 1, n + 1});
  a.map.inv_index = view(DType::i32, {1, 1, n * n});
  EXPECT_TRUE(HasError(bwd(a, c), StatusCode::unsupported, "map.inv_index: Nq * T = 62500 * 62500"));
  // The CUDA backward rebuilds tables of that size in its workspace: refused without the caller's too.
  a.map.inv_offset = TensorView{};
  a.map.inv_index = TensorView{};
  for (TensorView* t : {&a.q, &a.k, &a.v, &a.map.lut, &a.map.count}) t->device = Device::cuda;
  EXPECT_TRUE(HasError(bwd(a, c), StatusCode::unsupported, "map.inv_index: Nq * T = 62500 * 62500"));
}

// ---- invert_block_map ----

TEST(ApiValidation, InvertResolvesSizesFromTheMap) {
  Problem p;
  ASSERT_TRUE(validate_invert(make_map(true, true), &p).ok());
  EXPECT_EQ(p.batch, B);
  EXPECT_EQ(p.heads, H);
  EXPECT_EQ(p.map.q_blocks, NQ);
  EXPECT_EQ(p.map.k_blocks, NK);
  EXPECT_EQ(p.map.critical, T);
  EXPECT_EQ(p.map.negligible, TN);
}

TEST(ApiValidation, InvertRequiresInverseOutputs) {
  BlockMap m = make_map(false, false);
  EXPECT_TRUE(IsInvalid(invert_block_map(m, Exec{}), "map.inv_offset: required but absent"));
  m = make_map(true, false);
  m.inv_index = TensorView{};
  EXPECT_TRUE(IsInvalid(invert_block_map(m, Exec{}), "map.inv_index: required but absent"));
}

TEST(ApiValidation, InvertRejectsMoreCriticalBlocksThanKeyBlocks) {
  BlockMap m = make_map(true, false);
  m.inv_offset = view(DType::i32, {B, H, 2});  // Nk = 1 < T = 2
  Problem p;
  EXPECT_TRUE(IsInvalid(validate_invert(m, &p),
                        "map.lut: expected last dimension T in [1, Nk = 1] (Nk from map.inv_offset), got 2"));
  m = make_map(true, true);
  m.negl_lut = view(DType::i32, {B, H, NQ, NK - T + 1});
  EXPECT_TRUE(
      IsInvalid(validate_invert(m, &p), "map.negl_lut: expected last dimension Tn in [0, Nk - T = 5 - 2 = 3], got 4"));
}

TEST(ApiValidation, InvertRejectsNegligibleCountWithoutTable) {
  BlockMap m = make_map(true, false);
  m.negl_count = view(DType::i32, {B, H, NQ});
  Problem p;
  EXPECT_TRUE(IsInvalid(validate_invert(m, &p), "map.negl_count: expected absent because map.negl_lut is absent"));
}

// ---- Exec ----

TEST(ApiValidation, RejectsWorkspaceTooSmall) {
  alignas(16) static char buffer[64];
  Exec e;
  e.workspace = buffer;
  e.workspace_bytes = 64;
  EXPECT_TRUE(HasError(validate_exec(e, 1024), StatusCode::workspace_too_small,
                       "exec.workspace_bytes: expected at least 1024 bytes"));
  EXPECT_TRUE(validate_exec(e, 64).ok());
  EXPECT_TRUE(HasError(validate_exec(Exec{}, 1), StatusCode::workspace_too_small, "expected at least 1 bytes"));
}

// End to end through the public functions: the need comes from the CPU backend, the check from validate_exec.
// Skipped where the backend needs no workspace (the call would then run the backend on dummy data).
TEST(ApiValidation, PublicCallsCheckWorkspaceAgainstBackendNeed) {
  const ForwardArgs f = make_forward();
  const BackwardArgs g = make_backward();
  std::size_t need[3] = {};
  ASSERT_TRUE(predict_block_map_workspace_size(f.q, f.k, global_cfg(), &need[0]).ok());
  ASSERT_TRUE(forward_workspace_size(f, global_cfg(), &need[1]).ok());
  ASSERT_TRUE(backward_workspace_size(g, global_cfg(), &need[2]).ok());
  if (need[0] == 0 && need[1] == 0 && need[2] == 0) GTEST_SKIP() << "the backend needs no workspace";
  alignas(64) static char buffer[1];
  for (int i = 0; i < 3; ++i) {
    if (need[i] == 0) continue;
    Exec e;
    e.workspace = buffer;
    e.workspace_bytes = need[i] - 1;
    const Status s = i == 0   ? predict_block_map(f.q, f.k, global_cfg(), f.map, e)
                     : i == 1 ? forward(f, global_cfg(), e)
                              : backward(g, global_cfg(), e);
    EXPECT_TRUE(HasError(s, StatusCode::workspace_too_small,
                         "exec.workspace_bytes: expected at least " + std::to_string(need[i]) + " bytes"))
        << "call " << i;
  }
}

TEST(ApiValidation, PublicCallsRejectNullWorkspaceWithBytes) {
  Exec e;
  e.workspace_bytes = 1 << 30;
  EXPECT_TRUE(IsInvalid(forward(make_forward(), global_cfg(), e), "exec.workspace: null"));
  EXPECT_TRUE(IsInvalid(backward(make_backward(), global_cfg(), e), "exec.workspace: null"));
}

TEST(ApiValidation, RejectsNullWorkspaceWithBytes) {
  Exec e;
  e.workspace_bytes = 128;
  EXPECT_TRUE(IsInvalid(validate_exec(e, 0), "exec.workspace: null but exec.workspace_bytes = 128"));
}

TEST(ApiValidation, RejectsNegativeThreadCount) {
  Exec e;
  e.num_threads = -2;
  EXPECT_TRUE(IsInvalid(validate_exec(e, 0), "exec.num_threads: expected >= 0"));
  EXPECT_TRUE(IsInvalid(invert_block_map(make_map(true, false), e), "exec.num_threads"));
}

TEST(ApiValidation, RejectsNullOutputPointers) {
  ForwardArgs a = make_forward();
  EXPECT_TRUE(IsInvalid(forward_workspace_size(a, global_cfg(), nullptr), "bytes: expected a non-null"));
  EXPECT_TRUE(IsInvalid(predict_block_map_workspace_size(a.q, a.k, global_cfg(), nullptr), "bytes"));
  EXPECT_TRUE(IsInvalid(block_map_shape(B, H, LQ, LK, global_cfg(), nullptr), "out: expected a non-null"));
}

// ---- CUDA tensors in a build without CUDA ----

TEST(ApiValidation, CudaTensorInCpuOnlyBuildIsUnsupported) {
  if (build_info().find("without CUDA") == std::string::npos) GTEST_SKIP() << "built with CUDA";
  EXPECT_FALSE(cuda_available());
  ForwardArgs a = make_forward();
  for (TensorView* t : {&a.q, &a.k, &a.v, &a.o, &a.proj_weight, &a.proj_bias, &a.lse, &a.o_lin, &a.lin_h, &a.lin_z,
                        &a.map.lut, &a.map.count}) {
    t->device = Device::cuda;
  }
  const std::string expected = "q: tensor is on CUDA but this build of SLA has no CUDA backend";
  EXPECT_TRUE(HasError(forward(a, global_cfg(), Exec{}), StatusCode::unsupported, expected));
  std::size_t bytes = 0;
  EXPECT_TRUE(HasError(forward_workspace_size(a, global_cfg(), &bytes), StatusCode::unsupported, expected));
  EXPECT_TRUE(HasError(predict_block_map(a.q, a.k, global_cfg(), a.map, Exec{}), StatusCode::unsupported, expected));
  BlockMap m = make_map(true, false);
  for (TensorView* t : {&m.lut, &m.count, &m.inv_offset, &m.inv_index}) t->device = Device::cuda;
  EXPECT_TRUE(HasError(invert_block_map(m, Exec{}), StatusCode::unsupported, "map.lut: tensor is on CUDA"));
}

// ---- valid problems resolve correctly ----

TEST(ApiValidation, BlockMapShapeSpecExampleClampsToOne) {
  // docs/SPEC.md 1.4: 197 tokens, bk 64, topk 0.2 -> Nk = 4, floor(0.8) = 0 -> T clamped to 1.
  Config c;
  c.block_q = 64;
  c.block_k = 64;
  c.topk = 0.2;
  BlockMapShape s;
  ASSERT_TRUE(block_map_shape(1, 2, 197, 197, c, &s).ok());
  EXPECT_EQ(s.batch, 1);
  EXPECT_EQ(s.heads, 2);
  EXPECT_EQ(s.q_blocks, 4);
  EXPECT_EQ(s.k_blocks, 4);
  EXPECT_EQ(s.critical, 1);
  EXPECT_EQ(s.negligible, 0);
}

TEST(ApiValidation, BlockMapShapeValues) {
  struct Row {
    int64_t lq, lk;
    int bq, bk;
    double topk, negl;
    Variant variant;
    int64_t nq, nk, t, tn;  // worked out by hand
  };
  const Row rows[] = {
      {32760, 32760, 64, 64, 0.05, 0.0, Variant::global, 512, 512, 25, 0},  // Wan2.1: floor(25.6)
      {1000, 1000, 128, 64, 0.25, 0.0, Variant::global, 8, 16, 4, 0},
      {10, 10, 64, 64, 0.05, 0.0, Variant::global, 1, 1, 1, 0},                      // L < block
      {100, 300, 16, 32, 1.0, 0.0, Variant::global, 7, 10, 10, 0},                   // topk 1: every block
      {640, 640, 64, 64, 0.3, 0.7, Variant::complement, 10, 10, 3, 7},               // k_l = 1 - topk
      {640, 640, 64, 64, 0.5, 0.25, Variant::complement, 10, 10, 5, 2},              // floor(2.5)
      {1000000, 1000000, 64, 64, 0.05, 0.0, Variant::global, 15625, 15625, 781, 0},  // L = 10^6
  };
  for (const Row& r : rows) {
    Config c;
    c.block_q = r.bq;
    c.block_k = r.bk;
    c.topk = r.topk;
    c.negligible = r.negl;
    c.variant = r.variant;
    BlockMapShape s;
    ASSERT_TRUE(block_map_shape(2, 3, r.lq, r.lk, c, &s).ok()) << "lq " << r.lq;
    EXPECT_EQ(s.q_blocks, r.nq) << "lq " << r.lq;
    EXPECT_EQ(s.k_blocks, r.nk) << "lk " << r.lk;
    EXPECT_EQ(s.critical, r.t) << "lk " << r.lk << " topk " << r.topk;
    EXPECT_EQ(s.negligible, r.tn) << "lk " << r.lk << " negligible " << r.negl;
  }
}

TEST(ApiValidation, BlockMapShapeRejectsEmptySizes) {
  BlockMapShape s;
  EXPECT_TRUE(IsInvalid(block_map_shape(1, 1, 0, 10, global_cfg(), &s), "lq: expected >= 1, got 0"));
  EXPECT_TRUE(IsInvalid(block_map_shape(1, -1, 10, 10, global_cfg(), &s), "heads: expected >= 1, got -1"));
}

TEST(ApiValidation, ForwardResolvesProblem) {
  Problem p;
  ASSERT_TRUE(validate_forward(make_forward(), global_cfg(), &p).ok());
  EXPECT_EQ(p.batch, B);
  EXPECT_EQ(p.heads, H);
  EXPECT_EQ(p.lq, LQ);
  EXPECT_EQ(p.lk, LK);
  EXPECT_EQ(p.d, D);
  EXPECT_EQ(p.dv, DV);
  EXPECT_EQ(p.dtype, DType::f32);
  EXPECT_EQ(p.acc, DType::f32);
  EXPECT_EQ(p.device, Device::cpu);
  EXPECT_DOUBLE_EQ(p.scale, 1.0 / std::sqrt(32.0));
  EXPECT_EQ(p.map.q_blocks, NQ);
  EXPECT_EQ(p.map.k_blocks, NK);
  EXPECT_EQ(p.map.critical, T);
  EXPECT_EQ(p.map.negligible, 0);
  EXPECT_TRUE(p.has_weight);
  EXPECT_TRUE(p.has_bias);
  EXPECT_TRUE(p.save_for_backward);

  Config c = complement_cfg();
  c.scale = 0.25;
  ASSERT_TRUE(validate_forward(make_forward(DType::f64, false, true), c, &p).ok());
  EXPECT_EQ(p.acc, DType::f64);
  EXPECT_EQ(p.scale, 0.25);
  EXPECT_EQ(p.map.negligible, TN);
  EXPECT_FALSE(p.save_for_backward);
}

TEST(ApiValidation, AcceptsBLHDLayoutWithoutCopies) {
  // (B, L, H, D) memory described as logical (B, H, L, D): strides {L*H*D, D, H*D, 1}.
  ForwardArgs a = make_forward();
  a.q = make_strided_view(dummy(), DType::f32, {B, H, LQ, D}, {LQ * H * D, D, H * D, 1});
  a.k = make_strided_view(dummy(), DType::f32, {B, H, LK, D}, {LK * H * D, D, H * D, 1});
  a.v = make_strided_view(dummy(), DType::f32, {B, H, LK, DV}, {LK * H * DV, DV, H * DV, 1});
  a.o = make_strided_view(dummy(), DType::f32, {B, H, LQ, DV}, {LQ * H * DV, DV, H * DV, 1});
  Problem p;
  ASSERT_TRUE(validate_forward(a, global_cfg(), &p).ok()) << validate_forward(a, global_cfg(), &p).message;
  EXPECT_EQ(p.lq, LQ);
  EXPECT_EQ(p.lk, LK);
  BackwardArgs g = make_backward();
  g.q = a.q;
  g.k = a.k;
  g.v = a.v;
  g.o = g.d_o = a.o;
  g.dq = a.q;
  g.dk = a.k;
  g.dv = a.v;
  EXPECT_TRUE(validate_backward(g, global_cfg(), &p).ok()) << validate_backward(g, global_cfg(), &p).message;
}

TEST(ApiValidation, AcceptsSequenceShorterThanBlock) {
  ForwardArgs a = make_forward(DType::f32, false);
  a.q = view(DType::f32, {B, H, 5, D});
  a.k = view(DType::f32, {B, H, 7, D});
  a.v = view(DType::f32, {B, H, 7, DV});
  a.o = view(DType::f32, {B, H, 5, DV});
  a.map.lut = view(DType::i32, {B, H, 1, 1});  // Nq = Nk = 1, T = clamp(floor(0.5), 1, 1) = 1
  a.map.count = view(DType::i32, {B, H, 1});
  Problem p;
  ASSERT_TRUE(validate_forward(a, global_cfg(), &p).ok()) << validate_forward(a, global_cfg(), &p).message;
  EXPECT_EQ(p.map.q_blocks, 1);
  EXPECT_EQ(p.map.critical, 1);
}

TEST(ApiValidation, AcceptsMillionTokenSequence) {
  // int64 sizes throughout: 10^6 tokens, (B, L, H, D) strides; views only, no memory.
  const int64_t l = 1000000, h = 12, d = 128;
  Config c;  // 64/64, topk 0.05: Nq = Nk = 15625, T = floor(781.25) = 781
  ForwardArgs a;
  a.q = make_strided_view(dummy(), DType::bf16, {2, h, l, d}, {l * h * d, d, h * d, 1});
  a.k = a.q;
  a.v = a.q;
  a.o = a.q;
  a.map.lut = view(DType::i32, {2, h, 15625, 781});
  a.map.count = view(DType::i32, {2, h, 15625});
  Problem p;
  ASSERT_TRUE(validate_forward(a, c, &p).ok()) << validate_forward(a, c, &p).message;
  EXPECT_EQ(p.lq, l);
  EXPECT_EQ(p.map.critical, 781);
}

TEST(ApiValidation, PredictAcceptsOptionalInverse) {
  ForwardArgs a = make_forward();
  Problem p;
  EXPECT_TRUE(validate_predict(a.q, a.k, global_cfg(), make_map(false, false), &p).ok());
  EXPECT_TRUE(validate_predict(a.q, a.k, global_cfg(), make_map(true, false), &p).ok());
  EXPECT_EQ(p.lk, LK);
}

// ---- dispatch to the CPU backend with real buffers ----

TEST(ApiDispatch, CpuPredictInvertForwardBackwardRun) {
  // Lq = Lk = 40, blocks of 16: Nq = Nk = 3, T = floor(0.5 * 3) = 1. V = 1 everywhere, so every softmax-weighted
  // row of the sparse branch is exactly 1, and with W, b absent O = O_s = 1: the output was really written.
  constexpr int64_t L = 40, d = 16, nq = 3, nk = 3, t = 1;
  Config c;
  c.block_q = c.block_k = 16;
  c.topk = 0.5;
  std::vector<float> q(L * d), k(L * d), v(L * d, 1.0f), o(L * d, -7.0f), d_o(L * d, 0.5f);
  for (int64_t i = 0; i < L * d; ++i) {
    q[i] = static_cast<float>((i * 37 % 11) - 5) * 0.1f;
    k[i] = static_cast<float>((i * 53 % 13) - 6) * 0.1f;
  }
  std::vector<float> lse(L), o_lin(L * d), lin_h(d * d), lin_z(d), dq(L * d), dk(L * d), dv(L * d);
  std::vector<int32_t> lut(nq * t), count(nq), inv_offset(nk + 1), inv_index(nq * t);
  BlockMap m;
  m.lut = make_view(lut.data(), DType::i32, {1, 1, nq, t});
  m.count = make_view(count.data(), DType::i32, {1, 1, nq});
  m.inv_offset = make_view(inv_offset.data(), DType::i32, {1, 1, nk + 1});
  m.inv_index = make_view(inv_index.data(), DType::i32, {1, 1, nq * t});
  ForwardArgs f;
  f.q = make_view(q.data(), DType::f32, {1, 1, L, d});
  f.k = make_view(k.data(), DType::f32, {1, 1, L, d});
  f.v = make_view(v.data(), DType::f32, {1, 1, L, d});
  f.map = m;
  f.o = make_view(o.data(), DType::f32, {1, 1, L, d});
  f.lse = make_view(lse.data(), DType::f32, {1, 1, L});
  f.o_lin = make_view(o_lin.data(), DType::f32, {1, 1, L, d});
  f.lin_h = make_view(lin_h.data(), DType::f32, {1, 1, d, d});
  f.lin_z = make_view(lin_z.data(), DType::f32, {1, 1, d});

  std::size_t bytes = 0;
  ASSERT_TRUE(predict_block_map_workspace_size(f.q, f.k, c, &bytes).ok());
  std::vector<unsigned char> ws(bytes + 1);
  Exec e;
  e.workspace = ws.data();
  e.workspace_bytes = bytes;
  Status s = predict_block_map(f.q, f.k, c, m, e);
  ASSERT_TRUE(s.ok()) << s.message;
  s = invert_block_map(m, Exec{});
  ASSERT_TRUE(s.ok()) << s.message;

  ASSERT_TRUE(forward_workspace_size(f, c, &bytes).ok());
  ws.resize(bytes + 1);
  e.workspace = ws.data();
  e.workspace_bytes = bytes;
  s = forward(f, c, e);
  ASSERT_TRUE(s.ok()) << s.message;
  for (int64_t i = 0; i < L * d; ++i) ASSERT_NEAR(o[i], 1.0f, 1e-5f) << "element " << i;

  BackwardArgs g;
  g.q = f.q;
  g.k = f.k;
  g.v = f.v;
  g.map = m;
  g.o = f.o;
  g.d_o = make_view(d_o.data(), DType::f32, {1, 1, L, d});
  g.lse = f.lse;
  g.o_lin = f.o_lin;
  g.lin_h = f.lin_h;
  g.lin_z = f.lin_z;
  g.dq = make_view(dq.data(), DType::f32, {1, 1, L, d});
  g.dk = make_view(dk.data(), DType::f32, {1, 1, L, d});
  g.dv = make_view(dv.data(), DType::f32, {1, 1, L, d});
  ASSERT_TRUE(backward_workspace_size(g, c, &bytes).ok());
  ws.resize(bytes + 1);
  e.workspace = ws.data();
  e.workspace_bytes = bytes;
  s = backward(g, c, e);
  ASSERT_TRUE(s.ok()) << s.message;
}

// ---- types.h / config.h helpers ----

TEST(ApiTypes, NamesAndSizes) {
  EXPECT_EQ(dtype_size(DType::f16), 2u);
  EXPECT_EQ(dtype_size(DType::bf16), 2u);
  EXPECT_EQ(dtype_size(DType::f32), 4u);
  EXPECT_EQ(dtype_size(DType::f64), 8u);
  EXPECT_EQ(dtype_size(DType::i32), 4u);
  EXPECT_STREQ(dtype_name(DType::bf16), "bf16");
  EXPECT_STREQ(device_name(Device::cuda), "cuda");
  EXPECT_STREQ(status_code_name(StatusCode::workspace_too_small), "workspace_too_small");
  EXPECT_STREQ(variant_name(Variant::complement), "complement");
  EXPECT_STREQ(feature_map_name(FeatureMap::elu), "elu");
}

TEST(ApiTypes, Views) {
  TensorView v = make_view(dummy(), DType::f32, {2, 3, 4});
  EXPECT_EQ(v.ndim, 3);
  EXPECT_EQ(v.stride[0], 12);
  EXPECT_EQ(v.stride[1], 4);
  EXPECT_EQ(v.stride[2], 1);
  EXPECT_EQ(v.numel(), 24);
  EXPECT_TRUE(v.is_contiguous());
  EXPECT_TRUE(v.present());
  EXPECT_FALSE(TensorView{}.present());
  EXPECT_EQ(TensorView{}.numel(), 0);
  TensorView s = make_strided_view(dummy(), DType::f32, {2, 3, 4}, {12, 1, 3});
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(s.numel(), 24);
  // A size-1 dimension's stride never moves the address.
  EXPECT_TRUE(make_strided_view(dummy(), DType::f32, {2, 1, 4}, {4, 99, 1}).is_contiguous());
  EXPECT_EQ(make_strided_view(dummy(), DType::f32, {2, 3}, {3}).ndim, -1);  // stride list of another length
}

// o_sparse (the forward's O_s for the backward's Delta): optional, (B, H, Lq, Dv) in the accumulation dtype.
TEST(ApiValidation, OSparseIsOptionalAndChecked) {
  ForwardArgs f = make_forward(DType::bf16);
  f.o_sparse = view(DType::f32, {B, H, LQ, DV});
  EXPECT_TRUE(fwd(f).ok());
  f.o_sparse = view(DType::bf16, {B, H, LQ, DV});
  EXPECT_TRUE(IsInvalid(fwd(f), "o_sparse"));
  f.o_sparse = view(DType::f32, {B, H, LQ, D});
  EXPECT_TRUE(IsInvalid(fwd(f), "o_sparse: expected shape[3] (Dv) = 16 like v, got 32"));
  BackwardArgs b = make_backward(DType::bf16);
  EXPECT_TRUE(bwd(b).ok());
  b.o_sparse = view(DType::f32, {B, H, LQ, DV});
  EXPECT_TRUE(bwd(b).ok());
  b.o_sparse = view(DType::f32, {B, H, LK, DV});
  EXPECT_TRUE(IsInvalid(bwd(b), "o_sparse: expected shape[2] (Lq) = 100 like q, got 130"));
}

}  // namespace
}  // namespace sla
