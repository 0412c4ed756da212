// Flag parsing of the `sla` subcommands: defaults, both "--flag value" and "--flag=value", range checks, and that
// every error names the flag and the expected value (the CLI maps these errors to exit code 2).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cli_error.h"
#include "commands/command_options.h"
#include "number_text.h"

namespace sla_cli {
namespace {

using Args = std::vector<std::string>;

// The message of the UsageError `f` throws; fails the test when it throws nothing or something else.
template <typename F>
std::string usage_error(F&& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected UsageError, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected UsageError, nothing was thrown";
  return "";
}

TEST(CliArgs, DemoDefaults) {
  const DemoOptions o = parse_demo_options({});
  EXPECT_FALSE(o.help);
  EXPECT_EQ(o.frames, 8);
  EXPECT_EQ(o.height, 16);
  EXPECT_EQ(o.width, 24);
  EXPECT_EQ(o.heads, 6);
  EXPECT_EQ(o.dim, 64);
  EXPECT_EQ(o.cfg.block_q, 64);
  EXPECT_EQ(o.cfg.block_k, 64);
  EXPECT_DOUBLE_EQ(o.cfg.topk, 0.1);
  EXPECT_DOUBLE_EQ(o.cfg.negligible, 0.0);
  EXPECT_EQ(o.cfg.variant, sla::Variant::global);
  EXPECT_EQ(o.cfg.feature_map, sla::FeatureMap::softmax);
  EXPECT_EQ(o.png_path, "sla_blockmap.png");
  EXPECT_TRUE(o.qkv_path.empty());
  EXPECT_EQ(o.backend, BackendChoice::automatic);
}

TEST(CliArgs, DemoValuesInBothSpellings) {
  const DemoOptions o = parse_demo_options({"--grid",
                                            "2x3x4",
                                            "--topk=0.25",
                                            "--variant",
                                            "complement",
                                            "--negligible",
                                            "0.5",
                                            "--feature-map=elu",
                                            "--block-q",
                                            "128",
                                            "--block-k=128",
                                            "--seed",
                                            "7",
                                            "--png",
                                            "x.png",
                                            "--backend",
                                            "cpu",
                                            "--heads",
                                            "3",
                                            "--dim",
                                            "32",
                                            "--ref-rows",
                                            "100"});
  EXPECT_EQ(o.frames, 2);
  EXPECT_EQ(o.height, 3);
  EXPECT_EQ(o.width, 4);
  EXPECT_DOUBLE_EQ(o.cfg.topk, 0.25);
  EXPECT_EQ(o.cfg.variant, sla::Variant::complement);
  EXPECT_DOUBLE_EQ(o.cfg.negligible, 0.5);
  EXPECT_EQ(o.cfg.feature_map, sla::FeatureMap::elu);
  EXPECT_EQ(o.cfg.block_q, 128);
  EXPECT_EQ(o.cfg.block_k, 128);
  EXPECT_EQ(o.seed, 7u);
  EXPECT_EQ(o.png_path, "x.png");
  EXPECT_EQ(o.backend, BackendChoice::cpu);
  EXPECT_EQ(o.heads, 3);
  EXPECT_EQ(o.dim, 32);
  EXPECT_EQ(o.ref_rows, 100);
  EXPECT_TRUE(o.qkv_path.empty());
}

TEST(CliArgs, HelpIsRecognised) {
  EXPECT_TRUE(parse_demo_options({"--help"}).help);
  EXPECT_TRUE(parse_bench_options({"--help"}).help);
}

TEST(CliArgs, TopkOutOfRangeNamesFlagAndRange) {
  for (const std::string bad : {"0", "2.5", "-0.1", "abc", "", "nan", "inf", "0.1x", " 0.1"}) {
    const std::string msg = usage_error([&] {
      parse_demo_options({"--topk", bad});
    });
    EXPECT_NE(msg.find("--topk"), std::string::npos) << msg;
    EXPECT_NE(msg.find("(0, 1]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'" + bad + "'"), std::string::npos) << msg;
  }
  EXPECT_DOUBLE_EQ(parse_demo_options({"--topk", "1"}).cfg.topk, 1.0);
}

TEST(CliArgs, UnknownFlagAndMissingValue) {
  std::string msg = usage_error([] {
    parse_demo_options({"--topp", "0.1"});
  });
  EXPECT_NE(msg.find("--topp"), std::string::npos) << msg;
  msg = usage_error([] {
    parse_demo_options({"--topk"});
  });
  EXPECT_NE(msg.find("--topk"), std::string::npos) << msg;
  EXPECT_NE(msg.find("FRACTION"), std::string::npos) << msg;
  // A flag where the value belongs: the value is missing, not the flag after it stray.
  msg = usage_error([] {
    parse_demo_options({"--topk", "--heads", "2"});
  });
  EXPECT_NE(msg.find("--topk: missing its value (FRACTION)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'--heads'"), std::string::npos) << msg;
  msg = usage_error([] {
    parse_demo_options({"stray"});
  });
  EXPECT_NE(msg.find("stray"), std::string::npos) << msg;
  msg = usage_error([] {
    parse_bench_options({"--json=yes"});
  });
  EXPECT_NE(msg.find("--json"), std::string::npos) << msg;
}

TEST(CliArgs, GridNeedsThreePositiveIntegers) {
  for (const std::string bad : {"8x16", "8x16x24x2", "8x0x24", "8x-1x24", "8x16x", "axbxc", "8,16,24"}) {
    const std::string msg = usage_error([&] {
      parse_demo_options({"--grid", bad});
    });
    EXPECT_NE(msg.find("--grid"), std::string::npos) << msg;
    EXPECT_NE(msg.find("TxHxW"), std::string::npos) << msg;
  }
}

TEST(CliArgs, ChoicesListTheAllowedValues) {
  std::string msg = usage_error([] {
    parse_demo_options({"--block-q", "96"});
  });
  EXPECT_NE(msg.find("--block-q"), std::string::npos) << msg;
  EXPECT_NE(msg.find("64|128"), std::string::npos) << msg;
  msg = usage_error([] {
    parse_demo_options({"--variant", "local"});
  });
  EXPECT_NE(msg.find("global|complement"), std::string::npos) << msg;
  msg = usage_error([] {
    parse_bench_options({"--dtype", "f8"});
  });
  EXPECT_NE(msg.find("--dtype"), std::string::npos) << msg;
  EXPECT_NE(msg.find("bf16"), std::string::npos) << msg;
  msg = usage_error([] {
    parse_bench_options({"--backend", "gpu"});
  });
  EXPECT_NE(msg.find("auto|cpu|cuda"), std::string::npos) << msg;
}

TEST(CliArgs, NegligibleOnlyWithComplementAndWithinRange) {
  std::string msg = usage_error([] {
    parse_demo_options({"--negligible", "0.3"});
  });
  EXPECT_NE(msg.find("--negligible"), std::string::npos) << msg;
  EXPECT_NE(msg.find("complement"), std::string::npos) << msg;
  // k_l must lie in [0, 1 - topk].
  msg = usage_error([] {
    parse_demo_options({"--variant", "complement", "--topk", "0.5", "--negligible", "0.6"});
  });
  EXPECT_NE(msg.find("--negligible"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[0, 0.5]"), std::string::npos) << msg;
  EXPECT_DOUBLE_EQ(
      parse_demo_options({"--variant", "complement", "--topk", "0.5", "--negligible", "0.5"}).cfg.negligible, 0.5);
}

TEST(CliArgs, BenchShapeAndOverrides) {
  BenchOptions o = parse_bench_options({"--shape", "2,3,1000,128"});
  EXPECT_EQ(o.batch, 2);
  EXPECT_EQ(o.heads, 3);
  EXPECT_EQ(o.lq, 1000);
  EXPECT_EQ(o.lk, 1000);  // defaults to the query length
  EXPECT_EQ(o.dim, 128);
  EXPECT_EQ(o.cfg.block_q, 128);  // benchmarks default to 128/64 (docs/SPEC.md section 6)
  EXPECT_EQ(o.cfg.block_k, 64);
  EXPECT_DOUBLE_EQ(o.cfg.topk, 0.05);
  EXPECT_FALSE(o.backward);
  EXPECT_FALSE(o.json);

  o = parse_bench_options(
      {"--shape", "2,3,1000,128", "--l",        "500",    "--lk",    "700", "--h",      "5", "--b",     "1",
       "--d",     "64",           "--backward", "--json", "--iters", "3",   "--warmup", "0", "--dtype", "f16"});
  EXPECT_EQ(o.batch, 1);
  EXPECT_EQ(o.heads, 5);
  EXPECT_EQ(o.lq, 500);
  EXPECT_EQ(o.lk, 700);
  EXPECT_EQ(o.dim, 64);
  EXPECT_TRUE(o.backward);
  EXPECT_TRUE(o.json);
  EXPECT_EQ(o.iters, 3);
  EXPECT_EQ(o.warmup, 0);
  EXPECT_EQ(o.dtype, "f16");

  const std::string msg = usage_error([] {
    parse_bench_options({"--shape", "1,2,3"});
  });
  EXPECT_NE(msg.find("--shape"), std::string::npos) << msg;
  EXPECT_NE(msg.find("B,H,L,D"), std::string::npos) << msg;
  EXPECT_NE(usage_error([] {
              parse_bench_options({"--iters", "0"});
            }).find("--iters"),
            std::string::npos);
}

TEST(CliArgs, HelpListsEveryFlagWithItsDefault) {
  const std::string demo = demo_help();
  for (const char* flag : {"--grid", "--heads", "--dim", "--seed", "--qkv", "--png", "--backend", "--variant",
                           "--feature-map", "--topk", "--block-q", "--block-k", "--negligible", "--help"}) {
    EXPECT_NE(demo.find(flag), std::string::npos) << flag;
  }
  EXPECT_NE(demo.find("(default: 0.1)"), std::string::npos);
  EXPECT_NE(demo.find("Example"), std::string::npos);
  const std::string bench = bench_help();
  for (const char* flag : {"--shape", "--b", "--h", "--l", "--d", "--lk", "--dtype", "--backend", "--warmup", "--iters",
                           "--backward", "--json", "--topk", "--block-q", "--block-k"}) {
    EXPECT_NE(bench.find(flag), std::string::npos) << flag;
  }
}

TEST(CliArgs, CommandLineDispatchAndVersion) {
  EXPECT_EQ(parse_command_line({}).command, CommandLine::Command::demo);
  EXPECT_EQ(parse_command_line({"--topk", "0.2"}).demo.cfg.topk, 0.2);  // no command: demo
  EXPECT_EQ(parse_command_line({"bench", "--iters", "2"}).bench.iters, 2);
  EXPECT_EQ(parse_command_line({"info"}).command, CommandLine::Command::info);
  const CommandLine v = parse_command_line({"--version"});
  EXPECT_EQ(v.command, CommandLine::Command::version);
  EXPECT_EQ(v.text.rfind("sla ", 0), 0u) << v.text;
  EXPECT_NE(main_help().find("bench"), std::string::npos);
  EXPECT_EQ(parse_command_line({"help"}).command, CommandLine::Command::help);
  EXPECT_NE(usage_error([] {
              parse_command_line({"frob"});
            }).find("unknown command 'frob'"),
            std::string::npos);
  EXPECT_NE(usage_error([] {
              parse_command_line({"info", "--x"});
            }).find("--x"),
            std::string::npos);
}

TEST(CliArgs, StrictNumberParsing) {
  int64_t i = 0;
  EXPECT_TRUE(parse_int64("-12", &i));
  EXPECT_EQ(i, -12);
  EXPECT_FALSE(parse_int64("12abc", &i));
  EXPECT_FALSE(parse_int64(" 1", &i));
  EXPECT_FALSE(parse_int64("", &i));
  EXPECT_FALSE(parse_int64("9223372036854775808", &i));
  double d = 0;
  EXPECT_TRUE(parse_finite_double("1e-3", &d));
  EXPECT_DOUBLE_EQ(d, 1e-3);
  EXPECT_FALSE(parse_finite_double("1e999", &d));
  EXPECT_FALSE(parse_finite_double("nan", &d));
  EXPECT_FALSE(parse_finite_double("0.5 ", &d));
}

}  // namespace
}  // namespace sla_cli

namespace sla_cli {
namespace {

TEST(CliArgs, SyntheticFlagsConflictWithQkv) {
  for (const char* flag : {"--grid", "--heads", "--dim", "--seed"}) {
    const std::string value = std::string(flag) == "--grid" ? "2x2x2" : "2";
    const std::string msg = usage_error([&] {
      parse_demo_options({"--qkv", "x.npz", flag, value});
    });
    EXPECT_NE(msg.find(flag), std::string::npos) << msg;
    EXPECT_NE(msg.find("--qkv"), std::string::npos) << msg;
  }
  EXPECT_EQ(parse_demo_options({"--qkv", "x.npz", "--topk", "0.2"}).qkv_path, "x.npz");
}

}  // namespace
}  // namespace sla_cli
