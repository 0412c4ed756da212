// Reads the members of a zip archive held in memory: the container of NumPy's .npz files. Supports stored and
// deflated members and the zip64 extensions NumPy writes (np.savez opens members with force_zip64). Sizes and
// offsets come from the central directory, which is authoritative even when members use data descriptors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sla_cli {

struct ZipEntry {
  std::string name;
  uint16_t method = 0;  // 0 = stored, 8 = deflate
  uint16_t flags = 0;
  uint32_t crc32 = 0;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint64_t local_header_offset = 0;
};

class ZipArchive {
 public:
  // Parses the central directory; throws RunError naming `source` (the file path) when it is not a valid zip.
  ZipArchive(std::vector<unsigned char> bytes, std::string source);

  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(const std::string& name) const;  // nullptr when absent
  // The member's uncompressed bytes; checks the CRC-32.
  std::vector<unsigned char> read(const ZipEntry& entry) const;

 private:
  std::vector<unsigned char> bytes_;
  std::string source_;
  std::vector<ZipEntry> entries_;
};

}  // namespace sla_cli
