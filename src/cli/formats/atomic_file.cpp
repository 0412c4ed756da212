// See atomic_file.h.
#include "formats/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "cli_error.h"

namespace sla_cli {

namespace {

// The permissions a new file would get (0666 less the umask), or the existing destination's: mkstemp creates 0600,
// which would otherwise make a replaced rules file private.
mode_t destination_mode(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) return st.st_mode & 07777;
  const mode_t mask = ::umask(0);
  ::umask(mask);
  return 0666 & ~mask;
}

}  // namespace

AtomicFile::AtomicFile(const std::string& path, const std::string& what) : what_(what) {
  namespace fs = std::filesystem;
  // A symbolic link is replaced through its target, not turned into a regular file.
  std::error_code ec;
  const fs::path resolved = fs::is_symlink(path, ec) ? fs::weakly_canonical(path, ec) : fs::path(path);
  path_ = ec ? path : resolved.string();
  const fs::path dest(path_);
  const fs::path dir = dest.has_parent_path() ? dest.parent_path() : fs::path(".");
  // A hidden name in the same folder (a rename across file systems would not be atomic).
  std::string tmpl = (dir / ("." + dest.filename().string() + ".XXXXXX")).string();
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  const int fd = ::mkstemp(name.data());
  if (fd < 0) throw RunError(what_ + ": cannot create a file in " + dir.string() + ": " + std::strerror(errno));
  temp_ = name.data();
  ::fchmod(fd, destination_mode(path_));
  stream_ = ::fdopen(fd, "wb");
  if (stream_ == nullptr) {
    const int err = errno;
    ::close(fd);
    ::unlink(temp_.c_str());
    throw RunError(what_ + ": cannot write " + temp_ + ": " + std::strerror(err));
  }
}

AtomicFile::~AtomicFile() {
  if (committed_) return;
  if (stream_ != nullptr) std::fclose(stream_);
  ::unlink(temp_.c_str());
}

void AtomicFile::commit() {
  const bool written = std::fflush(stream_) == 0 && ::fsync(::fileno(stream_)) == 0;
  const int write_errno = errno;
  const bool closed = std::fclose(stream_) == 0;
  stream_ = nullptr;
  if (!written || !closed) {
    ::unlink(temp_.c_str());
    committed_ = true;  // nothing left to clean up
    throw RunError(what_ + ": writing " + path_ + " failed: " + std::strerror(written ? errno : write_errno));
  }
  if (std::rename(temp_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp_.c_str());
    committed_ = true;
    throw RunError(what_ + ": cannot replace " + path_ + ": " + std::strerror(err));
  }
  committed_ = true;
}

void write_file_atomically(const std::string& path, const std::string& contents, const std::string& what) {
  AtomicFile f(path, what);
  if (std::fwrite(contents.data(), 1, contents.size(), f.stream()) != contents.size()) {
    throw RunError(what + ": writing " + path + " failed: " + std::strerror(errno));
  }
  f.commit();
}

}  // namespace sla_cli
