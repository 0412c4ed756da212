// See zip_archive.h.
#include "formats/zip_archive.h"

#include <zip.h>

#include <algorithm>
#include <filesystem>
#include <limits>

#include "cli_error.h"
#include "device/memory_limits.h"

namespace sla_cli {

namespace {

std::string libzip_message(int code) {
  zip_error_t error;
  zip_error_init_with_code(&error, code);
  std::string msg = zip_error_strerror(&error);
  zip_error_fini(&error);
  return msg;
}

}  // namespace

ZipArchive::ZipArchive(const std::string& path) : path_(path) {
  std::error_code ec;
  archive_bytes_ = std::filesystem::file_size(path, ec);
  if (ec) throw RunError(path + ": cannot read its size: " + ec.message());
  int code = 0;
  archive_ = zip_open(path.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &code);
  if (archive_ == nullptr) throw RunError(path + ": not a valid .npz/zip file: " + libzip_message(code));
  const zip_int64_t n = zip_get_num_entries(archive_, 0);
  for (zip_int64_t i = 0; i < n; ++i) {
    const char* name = zip_get_name(archive_, static_cast<zip_uint64_t>(i), 0);
    if (name != nullptr) names_.emplace_back(name);
  }
}

ZipArchive::~ZipArchive() {
  if (archive_ != nullptr) zip_discard(archive_);
}

bool ZipArchive::contains(const std::string& name) const {
  return std::find(names_.begin(), names_.end(), name) != names_.end();
}

void ZipArchive::check_claimed_size(const std::string& what, uint64_t size, uint16_t method) const {
  if (method != ZIP_CM_STORE && method != ZIP_CM_DEFLATE) {
    throw RunError(what + ": compression method " + std::to_string(method) +
                   " is not supported; expected stored or deflated members (np.savez, np.savez_compressed)");
  }
  // The size is what the headers claim; the archive's own size bounds what its data can really hold.
  const double claimed = static_cast<double>(size), archive = static_cast<double>(archive_bytes_);
  if (method == ZIP_CM_STORE && claimed > archive) {
    throw RunError(what + ": claims " + format_bytes(claimed) + " stored uncompressed in an archive of " +
                   format_bytes(archive) + "; the file is corrupt");
  }
  if (method == ZIP_CM_DEFLATE && claimed > archive * kMaxDeflateRatio) {
    throw RunError(what + ": claims " + format_bytes(claimed) + " uncompressed from an archive of " +
                   format_bytes(archive) + ", more than deflate can expand to (at most " +
                   std::to_string(static_cast<int>(kMaxDeflateRatio)) + ":1); the file is corrupt");
  }
  const std::string shortfall = host_memory_shortfall(claimed, what);
  if (!shortfall.empty() || size > std::numeric_limits<std::size_t>::max() / 2) {
    throw RunError(shortfall.empty() ? what + ": too large for this machine" : shortfall);
  }
}

std::vector<unsigned char> ZipArchive::read(const std::string& name) const {
  const std::string what = path_ + ": member '" + name + "'";
  zip_stat_t st;
  zip_stat_init(&st);
  if (zip_stat(archive_, name.c_str(), 0, &st) != 0) throw RunError(what + ": not in the archive");
  if (!(st.valid & ZIP_STAT_SIZE) || !(st.valid & ZIP_STAT_COMP_METHOD)) {
    throw RunError(what + ": the archive does not record its size and compression");
  }
  check_claimed_size(what, st.size, st.comp_method);
  zip_file_t* file = zip_fopen(archive_, name.c_str(), 0);
  if (file == nullptr) throw RunError(what + ": cannot be read: " + zip_strerror(archive_));
  std::vector<unsigned char> out(static_cast<std::size_t>(st.size));
  std::size_t done = 0;
  std::string error;
  // Read until libzip reports the end: it checks the CRC-32 when the stream ends, not when the last byte arrives.
  for (;;) {
    unsigned char spare;
    unsigned char* dst = done < out.size() ? out.data() + done : &spare;
    const zip_uint64_t want = done < out.size() ? out.size() - done : 1;
    const zip_int64_t got = zip_fread(file, dst, want);
    if (got < 0) {
      error = zip_file_strerror(file);
      break;
    }
    if (got == 0) break;
    if (done >= out.size()) {
      error = "holds more data than its recorded size";
      break;
    }
    done += static_cast<std::size_t>(got);
  }
  zip_fclose(file);
  if (error.empty() && done != out.size()) error = "holds less data than its recorded size";
  if (!error.empty()) throw RunError(what + " is corrupt: " + error);
  return out;
}

}  // namespace sla_cli
