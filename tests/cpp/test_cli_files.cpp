// What the `sla` program writes and reads besides Q/K/V: every output goes through a temporary file renamed into
// place (AtomicFile), output paths are checked before any work (a directory, a missing folder, an input given as
// the output), the calibration file's JSON is read with errors naming the file, and `sla calibrate` adds its layer
// to an existing file. Each refusal asserts the exact message and that the files already there are unchanged.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cli_error.h"
#include "commands/commands.h"
#include "commands/output_checks.h"
#include "formats/atomic_file.h"
#include "formats/json_text.h"
#include "formats/png_writer.h"
#include "workload/calibration_file.h"
#include "workload/synthetic_video.h"

namespace sla_cli {
namespace {

namespace fs = std::filesystem;

// A fresh folder per test.
std::string scratch(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("sla_cli_files_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// Files in `dir` (to see that no temporary file is left behind).
std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// The message of the UsageError or RunError `f` throws ("" and a failure when it throws none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return std::string("usage: ") + e.what();
  } catch (const RunError& e) {
    return std::string("run: ") + e.what();
  }
  ADD_FAILURE() << "expected an error";
  return "";
}

// A .npy of shape (3, H, L, D) (q, k, v stacked) from the synthetic video workload.
std::string write_qkv_npy(const std::string& path, int64_t heads, uint64_t seed) {
  const VideoWorkload w = make_video_workload(VideoGrid{2, 8, 16}, heads, 16, seed);
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, " + std::to_string(heads) + ", " +
                     std::to_string(w.tokens) + ", 16), }";
  while ((10 + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::string bytes = "\x93NUMPY";
  bytes += '\x01';
  bytes += '\x00';
  bytes += static_cast<char>(dict.size() & 0xff);
  bytes += static_cast<char>(dict.size() >> 8);
  bytes += dict;
  for (const std::vector<float>* x : {&w.q, &w.k, &w.v}) {
    bytes.append(reinterpret_cast<const char*>(x->data()), x->size() * sizeof(float));
  }
  write_bytes(path, bytes);
  return path;
}

CalibrateOptions calibrate_options(const std::string& dir, const std::string& qkv, const std::string& layer) {
  CalibrateOptions o;
  o.qkv_path = qkv;
  o.out_path = dir + "/rules.json";
  o.png_path = dir + "/rules.png";
  o.layer = layer;
  o.rows = 64;
  return o;
}

// ---- AtomicFile ----

TEST(CliFiles, AtomicFileReplacesOnlyOnCommit) {
  const std::string dir = scratch("atomic");
  const std::string path = dir + "/out.json";
  write_bytes(path, "good contents");
  {
    AtomicFile f(path, "--out " + path);
    std::fputs("half of a new fi", f.stream());
    // No commit: an error in the middle of writing.
  }
  EXPECT_EQ(read_bytes(path), "good contents");
  EXPECT_EQ(listing(dir), std::vector<std::string>{"out.json"}) << "the temporary file is removed";

  write_file_atomically(path, "new contents", "--out " + path);
  EXPECT_EQ(read_bytes(path), "new contents");
  EXPECT_EQ(listing(dir), std::vector<std::string>{"out.json"});
}

TEST(CliFiles, AtomicFileGivesANewFileTheUsualPermissions) {
  const std::string dir = scratch("mode");
  const mode_t old_mask = ::umask(022);
  write_file_atomically(dir + "/new.json", "{}", "--out new.json");
  ::umask(old_mask);
  struct stat st;
  ASSERT_EQ(::stat((dir + "/new.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u) << "not mkstemp's private 0600";
}

TEST(CliFiles, PngIntoAMissingFolderFailsNamingTheFlag) {
  const std::string dir = scratch("png");
  const std::string path = dir + "/missing/map.png";
  EXPECT_EQ(error_of([&] {
              write_png(RgbImage(4, 4, Rgb{}), path, "--png " + path);
            }),
            "run: --png " + path + ": cannot create a file in " + dir + "/missing: No such file or directory");
}

// ---- output paths ----

TEST(CliFiles, OutputPathsAreCheckedBeforeAnyWork) {
  const std::string dir = scratch("paths");
  EXPECT_EQ(error_of([&] {
              check_output_path("--out", dir);
            }),
            "run: --out " + dir + ": is a directory; expected a file path");
  EXPECT_EQ(error_of([&] {
              check_output_path("--png", dir + "/no/such/map.png");
            }),
            "run: --png " + dir + "/no/such/map.png: cannot write: folder " + dir + "/no/such does not exist");
  EXPECT_EQ(error_of([&] {
              check_output_path("--out", "");
            }),
            "usage: --out: expected a file path, got ''");
  check_output_path("--out", dir + "/fine.json");  // a new file in a writable folder
  EXPECT_FALSE(fs::exists(dir + "/fine.json")) << "the check creates nothing";
}

TEST(CliFiles, ReadOnlyFolderIsRefused) {
  if (::geteuid() == 0) GTEST_SKIP() << "root writes into read-only folders";
  const std::string dir = scratch("readonly");
  fs::permissions(dir, fs::perms::owner_read | fs::perms::owner_exec);
  const std::string msg = error_of([&] {
    check_output_path("--out", dir + "/rules.json");
  });
  fs::permissions(dir, fs::perms::owner_all);
  EXPECT_EQ(msg, "run: --out " + dir + "/rules.json: cannot write: folder " + dir + " is not writable");
}

TEST(CliFiles, AnInputGivenAsTheOutputIsRefused) {
  const std::string dir = scratch("same");
  write_bytes(dir + "/qkv.npz", "captured tensors");
  fs::create_symlink(dir + "/qkv.npz", dir + "/link.npz");
  for (const std::string& out : {dir + "/qkv.npz", dir + "/./qkv.npz", dir + "/link.npz"}) {
    EXPECT_EQ(error_of([&] {
                check_distinct_files("--out", out, "--qkv", dir + "/qkv.npz");
              }),
              "usage: --out " + out + ": is the same file as --qkv " + dir +
                  "/qkv.npz; expected a different path (writing --out would replace it)");
  }
  check_distinct_files("--out", dir + "/rules.json", "--qkv", dir + "/qkv.npz");
}

// ---- JSON ----

TEST(CliFiles, JsonErrorsNameTheFileAndPosition) {
  const auto parse_error = [](const std::string& text) {
    return error_of([&] {
      parse_json(text, "--out r.json");
    });
  };
  const std::string head = "run: --out r.json: not valid JSON: ";
  EXPECT_EQ(parse_error("{\"a\": 1,\n \"b\": }"),
            head +
                "line 2, column 7: syntax error while parsing value - unexpected '}'; expected '[', '{', or a "
                "literal");
  EXPECT_EQ(parse_error("{\"a\": 1} x"),
            head +
                "line 1, column 10: syntax error while parsing value - invalid literal; last read: '1} x'; "
                "expected end of input");
  EXPECT_EQ(parse_error(""),
            head +
                "line 1, column 1: syntax error while parsing value - unexpected end of input; expected '[', '{', "
                "or a literal");
  // The end of the text: the column just after its last byte.
  EXPECT_EQ(parse_error("[1,\n \"abc"),
            head +
                "line 2, column 6: syntax error while parsing value - invalid string: missing closing quote; last "
                "read: '\"abc'");
  EXPECT_EQ(parse_error("[1, 2]\r\n// note"),
            head +
                "line 2, column 1: syntax error while parsing value - invalid literal; last read: "
                "'2]<U+000D><U+000A>/'; expected end of input")
      << "no comments";
  EXPECT_EQ(parse_error("{\"s\": \"a\tb\"}"),
            head +
                "line 1, column 9: syntax error while parsing value - invalid string: control character U+0009 (HT) "
                "must be escaped to \\u0009 or \\t; last read: '\"a<U+0009>'");
  EXPECT_EQ(parse_error("{\"s\": \"\xff\"}"),
            head +
                "line 1, column 8: syntax error while parsing value - invalid string: ill-formed UTF-8 byte; last "
                "read: '\"\xff'");
  EXPECT_EQ(parse_error("{\"x\": [1e400]}"), head + "line 1, column 13: number overflow parsing '1e400'");
  // Checked here, not by nlohmann: a member name twice in one object (at the end of its second name), and nesting.
  EXPECT_EQ(parse_error("{\"a\": 1, \"a\": 2}"), head + "line 1, column 12: member 'a' appears twice");
  EXPECT_EQ(parse_error("{\"layers\": {\"a\": {\"a\": 1},\n  \"b\": {},\n  \"a\": {}}}"),
            head + "line 3, column 5: member 'a' appears twice");
  EXPECT_EQ(parse_error(std::string(100, '[')), head + "line 1, column 66: nested more than 64 levels deep");
  EXPECT_EQ(parse_json(std::string(65, '[') + std::string(65, ']'), "t").dump(),
            std::string(65, '[') + std::string(65, ']'))
      << "64 levels inside the outermost are allowed";
  EXPECT_EQ(parse_json("{\"a\": {\"a\": 1}, \"b\": {\"a\": 2}}", "t").dump(), "{\"a\":{\"a\":1},\"b\":{\"a\":2}}")
      << "one name in different objects";
}

TEST(CliFiles, JsonKeepsValuesOrderAndStrings) {
  const std::string text =
      "{\"z\": 0.90000000000000002, \"a\": [1e-7, -0, 3, -0.0], \"s\": \"tab\\t \\u00e9 \\ud83d\\ude00 \\\"q\\\"\"}";
  const Json v = parse_json(text, "t");
  EXPECT_EQ(v.begin().key(), "z") << "objects keep their order";
  EXPECT_EQ(v.at("z").get<double>(), 0.9) << "0.90000000000000002 is the double nearest 0.9";
  EXPECT_EQ(v.at("s").get<std::string>(), "tab\t \xc3\xa9 \xf0\x9f\x98\x80 \"q\"");
  const std::string again = write_json(v);
  EXPECT_EQ(again, "{\"z\": 0.9, \"a\": [1e-07, 0, 3, -0.0], \"s\": \"tab\\t \xc3\xa9 \xf0\x9f\x98\x80 \\\"q\\\"\"}\n");
  EXPECT_EQ(write_json(parse_json(again, "t")), again);

  // Doubles are written as the shortest text that reads back as the same double, bit for bit.
  EXPECT_EQ(write_json(Json(0.1)), "0.1\n");
  EXPECT_EQ(write_json(Json(1.0 / 3.0)), "0.3333333333333333\n");
  EXPECT_EQ(write_json(Json(0.1 + 0.2)), "0.30000000000000004\n");
  EXPECT_EQ(write_json(Json(1.0)), "1.0\n") << "a double stays a double";
  EXPECT_EQ(write_json(Json(std::nan(""))), "null\n") << "JSON has no NaN";
  for (const double x : {0.1 + 0.2, 1.0 / 3.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -0.0, 1e21,
                         123456789.12345679, 0.9}) {
    const Json back = parse_json(write_json(Json(x)), "t");
    ASSERT_TRUE(back.is_number_float()) << x;
    const double y = back.get<double>();
    EXPECT_EQ(std::memcmp(&x, &y, sizeof x), 0) << write_json(Json(x));
  }
  // Integers of 64 bits stay integers, exactly (2^53 + 1 is no double).
  const std::string integers = "[-9223372036854775808, 9223372036854775807, 18446744073709551615, 9007199254740993]\n";
  EXPECT_EQ(write_json(parse_json(integers, "t")), integers);

  // The layout: one line for scalars and arrays of scalars, one member per line around them.
  EXPECT_EQ(write_json(parse_json("{\"a\": [{\"b\": 1, \"c\": [2, 3]}, {}], \"d\": {}, \"e\": []}", "t")),
            "{\n \"a\": [\n  {\"b\": 1, \"c\": [2, 3]},\n  {}\n ],\n \"d\": {},\n \"e\": []\n}\n");
  EXPECT_TRUE(is_utf8("\xc3\xa9"));
  EXPECT_FALSE(is_utf8("\xff"));
}

// ---- sla calibrate and its file ----

TEST(CliFiles, CalibrateAddsLayersToOneFile) {
  const std::string dir = scratch("merge");
  const std::string qkv = write_qkv_npy(dir + "/qkv.npy", 2, 1);
  ASSERT_EQ(run_calibrate(calibrate_options(dir, qkv, "blocks.0.attn1")), 0);
  ASSERT_EQ(run_calibrate(calibrate_options(dir, qkv, "blocks.1.attn1")), 0);
  Json file = parse_json(read_bytes(dir + "/rules.json"), "rules.json");
  ASSERT_EQ(file.at("layers").size(), 2u);
  EXPECT_EQ(file.at("layers").begin().key(), "blocks.0.attn1");
  EXPECT_EQ(std::next(file.at("layers").begin()).key(), "blocks.1.attn1");
  const std::string layer1 = write_json(file.at("layers").at("blocks.1.attn1"));

  // The same layer again, on other inputs: replaced where it is; the other layer is kept byte for byte.
  const std::string other = write_qkv_npy(dir + "/other.npy", 2, 99);
  ASSERT_EQ(run_calibrate(calibrate_options(dir, other, "blocks.0.attn1")), 0);
  file = parse_json(read_bytes(dir + "/rules.json"), "rules.json");
  const Json& layers = file.at("layers");
  ASSERT_EQ(layers.size(), 2u);
  EXPECT_EQ(layers.begin().key(), "blocks.0.attn1");
  EXPECT_EQ(write_json(layers.at("blocks.1.attn1")), layer1);
  // The file's average density is over both layers (equal shapes: the mean of every head).
  double sum = 0;
  for (const Json& layer : layers) {
    for (const Json& h : layer.at("heads")) sum += h.at("density").get<double>();
  }
  EXPECT_NEAR(file.at("settings").at("average_density").get<double>(), sum / 4, 1e-15);
  EXPECT_EQ(listing(dir), (std::vector<std::string>{"other.npy", "qkv.npy", "rules.json", "rules.png"}));
}

TEST(CliFiles, CalibrateKeepsWhatAnotherWriterRecorded) {
  // A file as python's Calibration.save writes it (other keys, other layout): its layer and extra settings stay.
  const std::string dir = scratch("python_file");
  const std::string qkv = write_qkv_npy(dir + "/qkv.npy", 2, 1);
  write_bytes(dir + "/rules.json",
              "{\n \"format\": \"sla-calibration\",\n \"version\": 1,\n \"settings\": {\n  \"target\": \"mass\",\n"
              "  \"quality\": 0.9,\n  \"rule\": \"top_p\",\n  \"budget\": null,\n  \"block_q\": 64,\n"
              "  \"block_k\": 64,\n  \"rows_per_head\": 64,\n  \"seed\": 0,\n  \"p_grid\": [\n   0.5,\n   1.0\n  ]\n"
              " },\n \"layers\": {\n  \"py.layer\": {\n   \"rule\": {\n    \"top_p\": [\n     0.5\n    ]\n   }\n"
              "  }\n }\n}\n");
  ASSERT_EQ(run_calibrate(calibrate_options(dir, qkv, "cli.layer")), 0);
  const Json file = parse_json(read_bytes(dir + "/rules.json"), "rules.json");
  EXPECT_EQ(write_json(file.at("layers").at("py.layer")), "{\n \"rule\": {\"top_p\": [0.5]}\n}\n");
  EXPECT_TRUE(file.at("layers").contains("cli.layer"));
  EXPECT_EQ(write_json(file.at("settings").at("seed")), "0\n");
  EXPECT_EQ(write_json(file.at("settings").at("p_grid")), "[0.5, 1.0]\n");
}

TEST(CliFiles, RefusedCalibrateRunsLeaveTheFilesAsTheyWere) {
  const std::string dir = scratch("refused");
  const std::string qkv = write_qkv_npy(dir + "/qkv.npy", 2, 1);
  CalibrateOptions o = calibrate_options(dir, qkv, "a");
  ASSERT_EQ(run_calibrate(o), 0);
  const std::string good_rules = read_bytes(o.out_path), good_png = read_bytes(o.png_path), captured = read_bytes(qkv);
  const std::vector<std::string> files = listing(dir);
  const auto expect_unchanged = [&](const std::string& what) {
    EXPECT_EQ(read_bytes(o.out_path), good_rules) << what;
    EXPECT_EQ(read_bytes(o.png_path), good_png) << what;
    EXPECT_EQ(read_bytes(qkv), captured) << what;
    EXPECT_EQ(listing(dir), files) << what;
  };

  CalibrateOptions same = calibrate_options(dir, qkv, "b");
  same.out_path = qkv;
  EXPECT_EQ(error_of([&] {
              run_calibrate(same);
            }),
            "usage: --out " + qkv + ": is the same file as --qkv " + qkv +
                "; expected a different path (writing --out would replace it)");
  expect_unchanged("--out equal to --qkv");

  CalibrateOptions png_is_out = calibrate_options(dir, qkv, "b");
  png_is_out.png_path = png_is_out.out_path;
  EXPECT_EQ(error_of([&] {
              run_calibrate(png_is_out);
            }),
            "usage: --out " + o.out_path + ": is the same file as --png " + o.out_path +
                "; expected a different path (writing --out would replace it)");
  expect_unchanged("--png equal to --out");

  CalibrateOptions other_blocks = calibrate_options(dir, qkv, "b");
  other_blocks.cfg.block_k = 128;
  EXPECT_EQ(error_of([&] {
              run_calibrate(other_blocks);
            }),
            "usage: --block-k 128: --out " + o.out_path +
                " holds layers calibrated with block_k 64; the file's settings describe every layer, so expected "
                "the same value (or another --out)");
  expect_unchanged("other block size");

  CalibrateOptions other_target = calibrate_options(dir, qkv, "b");
  other_target.target = "error";
  EXPECT_EQ(error_of([&] {
              run_calibrate(other_target);
            }),
            "usage: --target 'error': --out " + o.out_path +
                " holds layers calibrated with target 'mass'; the file's settings describe every layer, so expected "
                "the same value (or another --out)");
  expect_unchanged("other target");

  // The layer's name goes into the JSON file, which holds UTF-8 text only.
  EXPECT_EQ(error_of([&] {
              run_calibrate(calibrate_options(dir, qkv, "blocks.\xff"));
            }),
            "usage: --layer: is not UTF-8 text; expected a name in UTF-8 (the file is JSON)");
  expect_unchanged("a --layer that is not UTF-8");

  // A run that fails after the checks (its input holds a NaN) writes nothing.
  std::string bad = captured;
  const float nan = std::nanf("");
  std::memcpy(&bad[bad.size() - 4], &nan, 4);
  write_bytes(dir + "/bad.npy", bad);
  const std::string bad_npy = dir + "/bad.npy";
  const std::vector<std::string> with_bad = listing(dir);
  const std::string msg = error_of([&] {
    run_calibrate(calibrate_options(dir, bad_npy, "b"));
  });
  EXPECT_EQ(msg.rfind("run: " + bad_npy + ": v holds 1 non-finite values", 0), 0u) << msg;
  EXPECT_EQ(read_bytes(o.out_path), good_rules);
  EXPECT_EQ(read_bytes(o.png_path), good_png);
  EXPECT_EQ(listing(dir), with_bad);
}

TEST(CliFiles, AnOutFileThatIsNotACalibrationIsNeverReplaced) {
  const std::string dir = scratch("foreign");
  const std::string qkv = write_qkv_npy(dir + "/qkv.npy", 2, 1);
  const CalibrateOptions o = calibrate_options(dir, qkv, "a");
  const std::string path = o.out_path;
  struct Case {
    std::string contents, error;
  };
  const Case cases[] = {
      {"{\"format\": \"sla-calibration\", \"version\": 1, \"layers\": {\"a\": {}},",
       "run: --out " + path +
           ": not valid JSON: line 1, column 65: syntax error while parsing object key - unexpected end of input; "
           "expected string literal"},
      {"{\"format\": \"sla-calibration\", \"version\": 1, \"layers\": {\"a\": {}, \"a\": {}}}",
       "run: --out " + path + ": not valid JSON: line 1, column 67: member 'a' appears twice"},
      {"{\"model\": \"weights\"}", "run: --out " + path +
                                       ": is not a calibration file (no \"format\": \"sla-calibration\"); refusing to "
                                       "replace it (choose another --out, or remove the file)"},
      {"{\"format\": \"sla-calibration\", \"version\": 2, \"layers\": {}}",
       "run: --out " + path + ": is a calibration file of version 2; expected version 1"},
      {"", "run: --out " + path +
               ": not valid JSON: line 1, column 1: syntax error while parsing value - unexpected end of input; "
               "expected '[', '{', or a literal"},
  };
  for (const Case& c : cases) {
    write_bytes(path, c.contents);
    EXPECT_EQ(error_of([&] {
                run_calibrate(o);
              }),
              c.error);
    EXPECT_EQ(read_bytes(path), c.contents);
    EXPECT_FALSE(fs::exists(o.png_path)) << "refused before any work";
  }
}

}  // namespace
}  // namespace sla_cli
