// See output_checks.h.
#include "commands/output_checks.h"

#include <unistd.h>

#include <filesystem>

#include "cli_error.h"

namespace sla_cli {

namespace fs = std::filesystem;

void check_output_path(const std::string& flag, const std::string& path) {
  if (path.empty()) throw UsageError(flag + ": expected a file path, got ''");
  const std::string what = flag + " " + path;
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw RunError(what + ": is a directory; expected a file path");
  const fs::path folder = fs::path(path).has_parent_path() ? fs::path(path).parent_path() : fs::path(".");
  if (!fs::is_directory(folder, ec)) {
    throw RunError(what + ": cannot write: folder " + folder.string() + " does not exist");
  }
  // The file is written as a new file in the folder and renamed over the old one, so the folder must take new files.
  if (::access(folder.c_str(), W_OK | X_OK) != 0) {
    throw RunError(what + ": cannot write: folder " + folder.string() + " is not writable");
  }
  if (fs::exists(path, ec) && ::access(path.c_str(), W_OK) != 0) {
    throw RunError(what + ": cannot write: the file exists and is not writable");
  }
}

void check_distinct_files(const std::string& flag_a, const std::string& path_a, const std::string& flag_b,
                          const std::string& path_b) {
  std::error_code ec;
  // equivalent() sees through links and other spellings of existing files; a path that does not exist yet can
  // only equal another one textually once both are made absolute and normal.
  bool same = fs::exists(path_a, ec) && fs::exists(path_b, ec) && fs::equivalent(path_a, path_b, ec);
  if (!same) same = fs::weakly_canonical(path_a, ec) == fs::weakly_canonical(path_b, ec) && !ec;
  if (same) {
    throw UsageError(flag_a + " " + path_a + ": is the same file as " + flag_b + " " + path_b +
                     "; expected a different path (writing " + flag_a + " would replace it)");
  }
}

}  // namespace sla_cli
