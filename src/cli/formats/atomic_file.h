// Every file the `sla` program writes goes through AtomicFile: the bytes go to a temporary file in the destination's
// folder, which is renamed over the destination only once it is complete and flushed. A run that fails or is
// interrupted half-way leaves the previous file (a good rules file, a picture) exactly as it was, and a reader never
// sees a half-written file. rename() within one folder is atomic on POSIX file systems.
#pragma once

#include <cstdio>
#include <string>

namespace sla_cli {

class AtomicFile {
 public:
  // Creates the temporary file next to `path`. `what` names the file in errors (e.g. "--out rules.json").
  // Throws RunError when the folder does not take a new file.
  AtomicFile(const std::string& path, const std::string& what);
  // Without commit(): removes the temporary file; the destination is untouched.
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // The temporary file, open for binary writing.
  FILE* stream() { return stream_; }
  // Flushes and closes the temporary file and renames it over the destination. Throws RunError naming `what` when
  // any of it fails (a full disk shows here); the destination is then untouched.
  void commit();

 private:
  std::string path_, temp_, what_;
  FILE* stream_ = nullptr;
  bool committed_ = false;
};

// `contents` into `path` through an AtomicFile.
void write_file_atomically(const std::string& path, const std::string& contents, const std::string& what);

}  // namespace sla_cli
