// Read access to the members of a zip archive (the container of NumPy's .npz files and of torch.save files) through
// libzip, which handles stored and deflated members, zip64 and the CRC-32 checks.
#pragma once

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
  // The member's uncompressed bytes, CRC-checked; throws RunError when it is missing or corrupt.
  std::vector<unsigned char> read(const std::string& name) const;

 private:
  std::string path_;
  zip* archive_ = nullptr;
  std::vector<std::string> names_;
};

}  // namespace sla_cli
