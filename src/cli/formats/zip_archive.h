// Read access to the members of a zip archive (the container of NumPy's .npz files and of torch.save files) through
// libzip, which handles stored and deflated members, zip64 and the CRC-32 checks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

struct zip;  // libzip's archive handle

namespace sla_cli {

class ZipArchive {
 public:
  // Opens `path`; throws RunError naming the file when it is not a valid zip archive.
  explicit ZipArchive(const std::string& path);
  ~ZipArchive();
  ZipArchive(const ZipArchive&) = delete;
  ZipArchive& operator=(const ZipArchive&) = delete;

  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const;
  // The member's uncompressed bytes, CRC-checked; throws RunError when it is missing or corrupt. The size its
  // headers claim is checked before anything is allocated (check_claimed_size).
  std::vector<unsigned char> read(const std::string& name) const;

  // Deflate's largest expansion: 258 bytes from each 2-bit code, about 1032:1 (zlib's technical notes).
  static constexpr double kMaxDeflateRatio = 1032.0;

 private:
  // Throws RunError (naming `what`) when a member claims more bytes than the archive can hold: more than the
  // archive's size when stored, more than kMaxDeflateRatio times it when deflated, or more than the host memory;
  // and for any other compression method. Headers are data a file may lie in: a few hundred bytes claiming 4 GiB
  // would otherwise make the reader allocate and fill 4 GiB before the CRC check fails.
  void check_claimed_size(const std::string& what, uint64_t size, uint16_t method) const;

  std::string path_;
  uint64_t archive_bytes_ = 0;
  zip* archive_ = nullptr;
  std::vector<std::string> names_;
};

}  // namespace sla_cli
