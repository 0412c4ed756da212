// The .npy / .npz reader of `sla demo --qkv`: files are written here byte by byte (npy header, zip records,
// raw deflate through zlib), read back through the CLI's reader and compared element by element; malformed
// files must give errors that say what is wrong.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <sys/resource.h>

#include <chrono>

#include "cli_error.h"
#include "device/memory_limits.h"
#include "formats/npy_reader.h"
#include "formats/zip_archive.h"

namespace sla_cli {
namespace {

using Bytes = std::vector<unsigned char>;

void put_le(Bytes& b, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) b.push_back(static_cast<unsigned char>(v >> (8 * i)));
}

// A .npy file: magic, version, header length, the dict padded with spaces to a 64-byte boundary, then the data.
Bytes make_npy(const std::string& descr, const std::string& shape, const void* data, std::size_t bytes, int version = 1,
               const std::string& fortran = "False") {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }";
  const std::size_t prefix = version == 1 ? 10 : 12;
  while ((prefix + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  Bytes b = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<unsigned char>(version), 0};
  put_le(b, dict.size(), version == 1 ? 2 : 4);
  b.insert(b.end(), dict.begin(), dict.end());
  const unsigned char* p = static_cast<const unsigned char*>(data);
  b.insert(b.end(), p, p + bytes);
  return b;
}

Bytes raw_deflate(const Bytes& in) {
  z_stream zs{};
  EXPECT_EQ(deflateInit2(&zs, Z_BEST_COMPRESSION, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
  Bytes out(deflateBound(&zs, in.size()));
  zs.next_in = const_cast<unsigned char*>(in.data());
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

struct Member {
  std::string name;
  Bytes data;
};

// A zip archive as NumPy writes it: local header + data per member, central directory, end record. With `zip64`
// the central directory stores 0xffffffff sizes and offsets and the real values in a zip64 extra field, as
// np.savez does (force_zip64); the end record stays classic.
// `claim`, when not 0, replaces every member's uncompressed size in both headers (a lying archive).
Bytes make_zip(const std::vector<Member>& members, bool deflated, bool zip64 = false, uint32_t claim = 0) {
  Bytes zip, central;
  for (const Member& m : members) {
    const Bytes payload = deflated ? raw_deflate(m.data) : m.data;
    const uint32_t crc = static_cast<uint32_t>(crc32(0L, m.data.data(), static_cast<uInt>(m.data.size())));
    const uint64_t offset = zip.size();
    const uint16_t method = deflated ? 8 : 0;
    put_le(zip, 0x04034b50, 4);
    put_le(zip, 20, 2);
    put_le(zip, 0, 2);
    put_le(zip, method, 2);
    put_le(zip, 0, 4);  // time, date
    put_le(zip, crc, 4);
    put_le(zip, payload.size(), 4);
    put_le(zip, claim ? claim : m.data.size(), 4);
    put_le(zip, m.name.size(), 2);
    put_le(zip, 0, 2);
    zip.insert(zip.end(), m.name.begin(), m.name.end());
    zip.insert(zip.end(), payload.begin(), payload.end());

    put_le(central, 0x02014b50, 4);
    put_le(central, 45, 2);
    put_le(central, 45, 2);
    put_le(central, 0, 2);
    put_le(central, method, 2);
    put_le(central, 0, 4);
    put_le(central, crc, 4);
    put_le(central, zip64 ? 0xffffffffu : payload.size(), 4);
    put_le(central, zip64 ? 0xffffffffu : (claim ? claim : m.data.size()), 4);
    put_le(central, m.name.size(), 2);
    put_le(central, zip64 ? 28 : 0, 2);  // extra length
    put_le(central, 0, 2);               // comment
    put_le(central, 0, 2);               // disk
    put_le(central, 0, 2);               // internal attributes
    put_le(central, 0, 4);               // external attributes
    put_le(central, zip64 ? 0xffffffffu : offset, 4);
    central.insert(central.end(), m.name.begin(), m.name.end());
    if (zip64) {
      put_le(central, 0x0001, 2);
      put_le(central, 24, 2);
      put_le(central, m.data.size(), 8);  // uncompressed first, then compressed, then offset
      put_le(central, payload.size(), 8);
      put_le(central, offset, 8);
    }
  }
  const uint64_t cd_offset = zip.size();
  zip.insert(zip.end(), central.begin(), central.end());
  put_le(zip, 0x06054b50, 4);
  put_le(zip, 0, 4);
  put_le(zip, members.size(), 2);
  put_le(zip, members.size(), 2);
  put_le(zip, central.size(), 4);
  put_le(zip, cd_offset, 4);
  put_le(zip, 0, 2);
  return zip;
}

std::string write_temp(const std::string& name, const Bytes& bytes) {
  const std::string path = ::testing::TempDir() + "/sla_cli_" + name;
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return path;
}

std::string run_error(const std::string& path) {
  try {
    load_qkv(path);
  } catch (const RunError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected RunError for " << path;
  return "";
}

// Distinct values per element so that any index mix-up shows.
std::vector<float> ramp(std::size_t n, float base) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = base + 0.25f * static_cast<float>(i);
  return v;
}

TEST(CliNpy, StackedF32ArrayWithBatch) {
  const std::vector<float> all = ramp(3 * 2 * 3 * 5 * 4, -7.0f);
  const std::string path =
      write_temp("stacked5.npy", make_npy("<f4", "(3, 2, 3, 5, 4)", all.data(), all.size() * sizeof(float)));
  const QkvTensors t = load_qkv(path);
  EXPECT_EQ(t.batch, 2);
  EXPECT_EQ(t.heads, 3);
  EXPECT_EQ(t.lq, 5);
  EXPECT_EQ(t.lk, 5);
  EXPECT_EQ(t.dim, 4);
  EXPECT_EQ(t.dv, 4);
  EXPECT_EQ(t.source_dtype, sla::DType::f32);
  const std::size_t each = all.size() / 3;
  ASSERT_EQ(t.q.size(), each);
  for (std::size_t i = 0; i < each; ++i) {
    EXPECT_EQ(t.q[i], all[i]);
    EXPECT_EQ(t.k[i], all[each + i]);
    EXPECT_EQ(t.v[i], all[2 * each + i]);
  }
}

TEST(CliNpy, StackedF64WithoutBatchAndVersion2Header) {
  std::vector<double> all(3 * 2 * 4 * 2);
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = 1.0 / (1.0 + static_cast<double>(i));
  const std::string path =
      write_temp("stacked4.npy", make_npy("<f8", "(3, 2, 4, 2)", all.data(), all.size() * sizeof(double), 2));
  const QkvTensors t = load_qkv(path);
  EXPECT_EQ(t.batch, 1);
  EXPECT_EQ(t.heads, 2);
  EXPECT_EQ(t.lq, 4);
  EXPECT_EQ(t.dim, 2);
  EXPECT_EQ(t.source_dtype, sla::DType::f64);
  for (std::size_t i = 0; i < t.v.size(); ++i) EXPECT_EQ(t.v[i], static_cast<float>(all[2 * t.q.size() + i]));
}

TEST(CliNpy, F16BitPatterns) {
  // IEEE half bit patterns and the values they encode (independent of the reader's converter).
  const uint16_t bits[] = {0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001, 0x8000};
  const float want[] = {1.0f, -2.0f, 0.5f, 65504.0f, 5.9604644775390625e-8f, -0.0f};
  std::vector<uint16_t> all;
  for (int r = 0; r < 3; ++r) all.insert(all.end(), std::begin(bits), std::end(bits));
  const std::string path = write_temp("half.npy", make_npy("<f2", "(3, 1, 3, 2)", all.data(), all.size() * 2));
  const QkvTensors t = load_qkv(path);
  EXPECT_EQ(t.source_dtype, sla::DType::f16);
  ASSERT_EQ(t.k.size(), 6u);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(t.k[i], want[i]) << i;
    EXPECT_EQ(std::signbit(t.k[i]), std::signbit(want[i])) << i;
  }
}

void check_npz(bool deflated, bool zip64, const std::string& name) {
  const std::vector<float> q = ramp(2 * 3 * 4, 1.0f), k = ramp(2 * 5 * 4, 100.0f), v = ramp(2 * 5 * 6, -50.0f);
  const std::string path = write_temp(name, make_zip({{"q.npy", make_npy("<f4", "(2, 3, 4)", q.data(), q.size() * 4)},
                                                      {"k.npy", make_npy("<f4", "(2, 5, 4)", k.data(), k.size() * 4)},
                                                      {"v.npy", make_npy("<f4", "(2, 5, 6)", v.data(), v.size() * 4)}},
                                                     deflated, zip64));
  const QkvTensors t = load_qkv(path);
  EXPECT_EQ(t.batch, 1);
  EXPECT_EQ(t.heads, 2);
  EXPECT_EQ(t.lq, 3);
  EXPECT_EQ(t.lk, 5);
  EXPECT_EQ(t.dim, 4);
  EXPECT_EQ(t.dv, 6);
  EXPECT_EQ(t.q, q);
  EXPECT_EQ(t.k, k);
  EXPECT_EQ(t.v, v);
}

TEST(CliNpy, NpzStored) { check_npz(false, false, "stored.npz"); }
TEST(CliNpy, NpzDeflated) { check_npz(true, false, "deflated.npz"); }
TEST(CliNpy, NpzDeflatedZip64CentralDirectory) { check_npz(true, true, "zip64.npz"); }

TEST(CliNpy, NpzFourDimensionalArrays) {
  const std::vector<float> x = ramp(2 * 1 * 3 * 4, 0.0f);
  const Bytes arr = make_npy("<f4", "(2, 1, 3, 4)", x.data(), x.size() * 4);
  const QkvTensors t =
      load_qkv(write_temp("bhld.npz", make_zip({{"q.npy", arr}, {"k.npy", arr}, {"v.npy", arr}}, true)));
  EXPECT_EQ(t.batch, 2);
  EXPECT_EQ(t.heads, 1);
  EXPECT_EQ(t.lq, 3);
}

TEST(CliNpy, BadHeadersGiveClearErrors) {
  const std::vector<float> x = ramp(3 * 2 * 2 * 2, 0.0f);
  const std::size_t n = x.size() * 4;
  struct Case {
    Bytes file;
    const char* expect;
  } cases[] = {
      {make_npy(">f4", "(3, 2, 2, 2)", x.data(), n), "big-endian"},
      {make_npy("<i4", "(3, 2, 2, 2)", x.data(), n), "<i4"},
      {make_npy("<f4", "(3, 2, 2, 2)", x.data(), n, 1, "True"), "fortran_order"},
      {make_npy("<f4", "(3, 2, 2, 3)", x.data(), n), "shorter than its shape"},
      {make_npy("<f4", "(2, 2, 2, 3)", x.data(), n), "(3,B,H,L,D)"},
      {make_npy("<f4", "(3, 2, x, 2)", x.data(), n), "bad dimension"},
      {make_npy("<f4", "(3, 2, 2, 2)", x.data(), n, 7), "version 7"},
      {Bytes{'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd'}, "neither a .npy"},
  };
  int i = 0;
  for (const Case& c : cases) {
    const std::string path = write_temp("bad" + std::to_string(i++) + ".npy", c.file);
    const std::string msg = run_error(path);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << "expected '" << c.expect << "' in: " << msg;
    EXPECT_NE(msg.find(path), std::string::npos) << "the message should name the file: " << msg;
  }
  EXPECT_NE(run_error(::testing::TempDir() + "/sla_cli_does_not_exist.npy").find("cannot open"), std::string::npos);
}

TEST(CliNpy, BadNpzGivesClearErrors) {
  const std::vector<float> x = ramp(2 * 3 * 4, 0.0f);
  const Bytes arr = make_npy("<f4", "(2, 3, 4)", x.data(), x.size() * 4);
  std::string msg = run_error(write_temp("nov.npz", make_zip({{"q.npy", arr}, {"k.npy", arr}}, false)));
  EXPECT_NE(msg.find("no array 'v'"), std::string::npos) << msg;

  // Flip one payload byte of a stored member: the CRC check must catch it.
  Bytes zip = make_zip({{"q.npy", arr}, {"k.npy", arr}, {"v.npy", arr}}, false);
  zip[30 + 5 + 200] ^= 0xff;
  msg = run_error(write_temp("crc.npz", zip));
  EXPECT_NE(msg.find("CRC"), std::string::npos) << msg;

  // A truncated file has lost its end record.
  Bytes cut = make_zip({{"q.npy", arr}}, true);
  cut.resize(cut.size() - 5);
  msg = run_error(write_temp("cut.npz", cut));
  EXPECT_NE(msg.find("not a valid .npz"), std::string::npos) << msg;

  // Garbage inside a deflate stream: either inflate fails or the CRC does not match; never silent.
  Bytes garbled = make_zip({{"q.npy", arr}, {"k.npy", arr}, {"v.npy", arr}}, true);
  for (int i = 0; i < 16; ++i) garbled[30 + 5 + 10 + i] ^= 0x5a;
  msg = run_error(write_temp("garbled.npz", garbled));
  EXPECT_TRUE(msg.find("corrupt") != std::string::npos || msg.find("CRC") != std::string::npos) << msg;

  const std::vector<float> y = ramp(2 * 4 * 4, 0.0f);
  const Bytes other = make_npy("<f4", "(2, 4, 4)", y.data(), y.size() * 4);
  msg = run_error(write_temp("mismatch.npz", make_zip({{"q.npy", arr}, {"k.npy", arr}, {"v.npy", other}}, true)));
  EXPECT_NE(msg.find("v must match k"), std::string::npos) << msg;
}

long peak_rss_kib() {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

TEST(CliNpy, MembersClaimingMoreThanTheArchiveHoldsAreRefusedBeforeAllocating) {
  // A few hundred bytes whose headers claim ~4 GiB per member (the hostile file): refused from the headers,
  // quickly, without the reader's peak memory growing by anything near the claim.
  const std::vector<float> x = ramp(2 * 3 * 4, 0.0f);
  const Bytes arr = make_npy("<f4", "(2, 3, 4)", x.data(), x.size() * 4);
  const uint32_t claim = 0xfffffff0u;
  const Bytes deflated = make_zip({{"q.npy", arr}, {"k.npy", arr}, {"v.npy", arr}}, true, false, claim);
  ASSERT_LT(deflated.size(), 1000u);
  const std::string path = write_temp("claims_4gib.npz", deflated);
  const long rss_before = peak_rss_kib();
  const auto start = std::chrono::steady_clock::now();
  const std::string msg = run_error(path);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(msg, path + ": member 'q.npy': claims " + format_bytes(claim) + " uncompressed from an archive of " +
                     format_bytes(static_cast<double>(deflated.size())) +
                     ", more than deflate can expand to (at most 1032:1); the file is corrupt");
  EXPECT_LT(seconds, 1.0);
  EXPECT_LT(peak_rss_kib() - rss_before, 64 * 1024) << "KiB of peak memory added while refusing the file";

  // Stored members cannot be larger than the archive at all.
  const Bytes stored = make_zip({{"q.npy", arr}, {"k.npy", arr}, {"v.npy", arr}}, false, false, 4096);
  const std::string stored_path = write_temp("stored_claims.npz", stored);
  EXPECT_EQ(run_error(stored_path), stored_path + ": member 'q.npy': claims " + format_bytes(4096) +
                                        " stored uncompressed in an archive of " +
                                        format_bytes(static_cast<double>(stored.size())) + "; the file is corrupt");
}

TEST(CliNpy, DirectoryIsNotAFile) {
  const std::string msg = run_error(::testing::TempDir());
  EXPECT_NE(msg.find("is a directory"), std::string::npos) << msg;
}

TEST(CliNpy, TorchFilesAreRecognisedWithAConversionHint) {
  // torch.save (zip serialisation) writes <name>/data.pkl, <name>/version and the storages under <name>/data/.
  const Bytes pickle = {0x80, 0x02, '}', 'q', 0x00, '.'};
  const Bytes version = {'3', '\n'};
  std::string msg = run_error(
      write_temp("captured.pt", make_zip({{"captured/data.pkl", pickle}, {"captured/version", version}}, false)));
  EXPECT_NE(msg.find("PyTorch file"), std::string::npos) << msg;
  EXPECT_NE(msg.find("np.savez"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("no array 'q'"), std::string::npos) << msg;
  // The legacy (pre-zip) torch.save format is a bare pickle.
  msg = run_error(write_temp("legacy.pt", pickle));
  EXPECT_NE(msg.find("pickle"), std::string::npos) << msg;
  EXPECT_NE(msg.find("np.savez"), std::string::npos) << msg;
}

TEST(CliNpy, NonFiniteInputsAreRejectedNamingTheFirst) {
  std::vector<float> x = ramp(2 * 3 * 4, 0.0f);
  const Bytes good = make_npy("<f4", "(2, 3, 4)", x.data(), x.size() * 4);
  x[1 * 12 + 0 * 4 + 3] = std::numeric_limits<float>::quiet_NaN();  // h 1, l 0, d 3
  x[23] = std::numeric_limits<float>::infinity();                   // later: not the one named
  const Bytes bad = make_npy("<f4", "(2, 3, 4)", x.data(), x.size() * 4);
  const std::string msg =
      run_error(write_temp("nan.npz", make_zip({{"q.npy", good}, {"k.npy", bad}, {"v.npy", good}}, true)));
  EXPECT_NE(msg.find("k holds 2 non-finite values"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[0, 1, 0, 3]"), std::string::npos) << msg;
}

TEST(CliNpy, ZipReaderListsMembers) {
  const Bytes a = {1, 2, 3}, b(1000, 7);
  const ZipArchive zip(write_temp("members.zip", make_zip({{"a.bin", a}, {"b.bin", b}}, true)));
  ASSERT_EQ(zip.names().size(), 2u);
  EXPECT_EQ(zip.read("a.bin"), a);
  EXPECT_EQ(zip.read("b.bin"), b);
  EXPECT_FALSE(zip.contains("c.bin"));
  EXPECT_THROW(zip.read("c.bin"), RunError);
}

}  // namespace
}  // namespace sla_cli
