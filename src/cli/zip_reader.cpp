// See zip_reader.h. Field layouts follow PKWARE's APPNOTE.TXT (sections 4.3.7, 4.3.12, 4.3.14-16, 4.5.3).
#include "zip_reader.h"

#include <zlib.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "cli_error.h"

namespace sla_cli {

namespace {

constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndOfCentralDirSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr std::size_t kEndRecordSize = 22;
constexpr std::size_t kMaxCommentSize = 0xffff;

// Little-endian reads with bounds checks; a truncated file becomes a RunError, never an out-of-bounds read.
class Reader {
 public:
  Reader(const std::vector<unsigned char>& b, const std::string& source) : b_(b), source_(source) {}

  uint64_t le(uint64_t pos, int nbytes) const {
    need(pos, static_cast<uint64_t>(nbytes));
    uint64_t v = 0;
    for (int i = nbytes - 1; i >= 0; --i) v = (v << 8) | b_[static_cast<std::size_t>(pos) + i];
    return v;
  }
  uint16_t u16(uint64_t pos) const { return static_cast<uint16_t>(le(pos, 2)); }
  uint32_t u32(uint64_t pos) const { return static_cast<uint32_t>(le(pos, 4)); }
  uint64_t u64(uint64_t pos) const { return le(pos, 8); }

  void need(uint64_t pos, uint64_t n) const {
    if (pos > b_.size() || n > b_.size() - pos) fail("truncated or corrupt (a record runs past the end of the file)");
  }
  [[noreturn]] void fail(const std::string& what) const { throw RunError(source_ + ": not a valid .npz/zip file: " + what); }

 private:
  const std::vector<unsigned char>& b_;
  const std::string& source_;
};

}  // namespace

ZipArchive::ZipArchive(std::vector<unsigned char> bytes, std::string source)
    : bytes_(std::move(bytes)), source_(std::move(source)) {
  const Reader r(bytes_, source_);
  if (bytes_.size() < kEndRecordSize) r.fail("too short to hold a zip end record");

  // The end record is the last thing in the file, followed only by an optional comment of up to 64 KiB.
  uint64_t eocd = std::numeric_limits<uint64_t>::max();
  const uint64_t last = bytes_.size() - kEndRecordSize;
  const uint64_t first = last > kMaxCommentSize ? last - kMaxCommentSize : 0;
  for (uint64_t p = last + 1; p-- > first;) {
    if (r.u32(p) == kEndOfCentralDirSig) {
      eocd = p;
      break;
    }
  }
  if (eocd == std::numeric_limits<uint64_t>::max()) r.fail("no end-of-central-directory record");

  uint64_t count = r.u16(eocd + 10);
  uint64_t cd_size = r.u32(eocd + 12);
  uint64_t cd_offset = r.u32(eocd + 16);
  if (count == 0xffff || cd_size == 0xffffffffu || cd_offset == 0xffffffffu) {
    if (eocd < 20 || r.u32(eocd - 20) != kZip64LocatorSig) r.fail("zip64 fields without a zip64 locator");
    const uint64_t z64 = r.u64(eocd - 20 + 8);
    if (r.u32(z64) != kZip64EndSig) r.fail("bad zip64 end record");
    count = r.u64(z64 + 32);
    cd_size = r.u64(z64 + 40);
    cd_offset = r.u64(z64 + 48);
  }
  r.need(cd_offset, cd_size);

  uint64_t p = cd_offset;
  for (uint64_t e = 0; e < count; ++e) {
    if (r.u32(p) != kCentralHeaderSig) r.fail("bad central directory entry " + std::to_string(e));
    ZipEntry z;
    z.flags = r.u16(p + 8);
    z.method = r.u16(p + 10);
    z.crc32 = r.u32(p + 16);
    z.compressed_size = r.u32(p + 20);
    z.uncompressed_size = r.u32(p + 24);
    const uint16_t name_len = r.u16(p + 28), extra_len = r.u16(p + 30), comment_len = r.u16(p + 32);
    z.local_header_offset = r.u32(p + 42);
    r.need(p + 46, name_len);
    z.name.assign(reinterpret_cast<const char*>(bytes_.data() + p + 46), name_len);
    // Zip64 extra field: 8-byte values for exactly those fields that hold 0xffffffff, in this order.
    uint64_t x = p + 46 + name_len;
    const uint64_t x_end = x + extra_len;
    while (x + 4 <= x_end) {
      const uint16_t id = r.u16(x), size = r.u16(x + 2);
      if (id == kZip64ExtraId) {
        uint64_t f = x + 4;
        if (z.uncompressed_size == 0xffffffffu) { z.uncompressed_size = r.u64(f); f += 8; }
        if (z.compressed_size == 0xffffffffu) { z.compressed_size = r.u64(f); f += 8; }
        if (z.local_header_offset == 0xffffffffu) { z.local_header_offset = r.u64(f); f += 8; }
        if (f > x + 4 + size) r.fail("zip64 extra field of member '" + z.name + "' is too short");
      }
      x += 4 + static_cast<uint64_t>(size);
    }
    entries_.push_back(std::move(z));
    p += 46 + static_cast<uint64_t>(name_len) + extra_len + comment_len;
  }
}

const ZipEntry* ZipArchive::find(const std::string& name) const {
  for (const ZipEntry& e : entries_) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

std::vector<unsigned char> ZipArchive::read(const ZipEntry& entry) const {
  const Reader r(bytes_, source_);
  const std::string what = "member '" + entry.name + "'";
  if (entry.flags & 1u) r.fail(what + " is encrypted");
  const uint64_t h = entry.local_header_offset;
  if (r.u32(h) != kLocalHeaderSig) r.fail(what + ": bad local header");
  const uint64_t data = h + 30 + r.u16(h + 26) + r.u16(h + 28);
  r.need(data, entry.compressed_size);
  if (entry.uncompressed_size > std::numeric_limits<std::size_t>::max() / 2) r.fail(what + " is too large");

  std::vector<unsigned char> out(static_cast<std::size_t>(entry.uncompressed_size));
  const unsigned char* src = bytes_.data() + data;
  if (entry.method == 0) {
    if (entry.compressed_size != entry.uncompressed_size) r.fail(what + ": stored sizes differ");
    std::copy(src, src + out.size(), out.begin());
  } else if (entry.method == 8) {
    z_stream zs{};
    // Negative window bits: a raw deflate stream, as zip stores it (no zlib header or trailer).
    if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) throw RunError(source_ + ": zlib inflateInit2 failed");
    uint64_t in_left = entry.compressed_size, out_done = 0;
    int rc = Z_OK;
    const uint64_t kChunk = std::numeric_limits<uInt>::max();
    zs.next_in = const_cast<unsigned char*>(src);
    while (rc == Z_OK) {
      if (zs.avail_in == 0 && in_left > 0) {
        zs.avail_in = static_cast<uInt>(std::min(in_left, kChunk));
        in_left -= zs.avail_in;
      }
      if (zs.avail_out == 0) {
        zs.next_out = out.data() + out_done;
        zs.avail_out = static_cast<uInt>(std::min<uint64_t>(out.size() - out_done, kChunk));
        out_done += zs.avail_out;
      }
      rc = inflate(&zs, Z_NO_FLUSH);
      if (rc == Z_BUF_ERROR && zs.avail_in == 0 && in_left == 0) break;  // input exhausted before the end
      if (rc == Z_BUF_ERROR && zs.avail_out == 0 && out_done == out.size()) break;  // more data than declared
    }
    const bool complete = rc == Z_STREAM_END && zs.total_out == out.size();
    inflateEnd(&zs);
    if (!complete) r.fail(what + ": deflate data is corrupt or does not match its declared size");
  } else {
    r.fail(what + " uses compression method " + std::to_string(entry.method) + "; expected 0 (stored) or 8 (deflate)");
  }
  const uLong crc = crc32_z(crc32(0L, Z_NULL, 0), out.data(), out.size());
  if (crc != entry.crc32) r.fail(what + ": CRC-32 mismatch (the file is corrupt)");
  return out;
}

}  // namespace sla_cli
