// The dispatch macros (core/static_switch.h, cpu/dispatch.h): each runtime value reaches the lambda as the matching
// compile-time constant or type, and a dtype the CPU kernels do not take returns a Status instead of calling it.
#include <gtest/gtest.h>

#include <string>
#include <type_traits>

#include "core/static_switch.h"
#include "cpu/dispatch.h"

namespace sla {
namespace {

template <bool B>
int bool_value() {
  return B ? 1 : 0;
}

TEST(StaticSwitch, BoolReachesTheLambdaAsAConstant) {
  for (const bool cond : {false, true}) {
    const int got = SLA_BOOL_SWITCH(cond, kCond, [&] {
      return bool_value<kCond>();
    });
    EXPECT_EQ(got, cond ? 1 : 0);
  }
}

template <FeatureMap F>
FeatureMap echo() {
  return F;
}

TEST(StaticSwitch, FeatureMapReachesTheLambdaAsAConstant) {
  for (const FeatureMap fm : {FeatureMap::softmax, FeatureMap::elu, FeatureMap::relu}) {
    const FeatureMap got = SLA_FEATURE_MAP_SWITCH(fm, kFm, [&] {
      return echo<kFm>();
    });
    EXPECT_EQ(got, fm);
  }
}

template <class In, class Acc>
Status describe(std::string* out) {
  *out = std::string(std::is_same<In, double>::value      ? "f64"
                     : std::is_same<In, float>::value     ? "f32"
                     : std::is_same<In, cpu::bf16>::value ? "bf16"
                     : std::is_same<In, cpu::f16>::value  ? "f16"
                                                          : "?") +
         (std::is_same<Acc, double>::value  ? "/f64"
          : std::is_same<Acc, float>::value ? "/f32"
                                            : "/?");
  return Status::Ok();
}

TEST(StaticSwitch, CpuDtypePairs) {
  const std::pair<DType, const char*> cases[] = {
      {DType::f64, "f64/f64"}, {DType::f32, "f32/f32"}, {DType::bf16, "bf16/f32"}, {DType::f16, "f16/f32"}};
  for (const auto& c : cases) {
    std::string got;
    const Status st = SLA_CPU_DTYPE_SWITCH(c.first, In, Acc, [&] {
      return describe<In, Acc>(&got);
    });
    EXPECT_TRUE(st.ok()) << st.message;
    EXPECT_EQ(got, c.second);
  }
  bool called = false;
  const Status st = SLA_CPU_DTYPE_SWITCH(DType::i32, In, Acc, [&] {
    called = true;
    return Status::Ok();
  });
  EXPECT_FALSE(called);
  EXPECT_EQ(st.code, StatusCode::unsupported);
  EXPECT_NE(st.message.find("i32"), std::string::npos) << st.message;
}

}  // namespace
}  // namespace sla
