// An exclusive advisory lock (flock) on the folder of a file, held for a read-modify-write of that file: two
// `sla calibrate` runs adding their layers to one --out at the same time then both land, one after the other. (A lock
// on the file itself would not do: the atomic write replaces the file, and the lock stays with the old one.)
#pragma once

#include <string>

namespace sla_cli {

class FolderLock {
 public:
  // Blocks until the lock on the folder of `path` is held. Without a lock (a file system that has none) it goes on
  // unlocked: the write itself stays atomic.
  explicit FolderLock(const std::string& path);
  ~FolderLock();
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace sla_cli
