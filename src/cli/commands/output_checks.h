// Checks of the output paths a command was given, run when it starts: a path that cannot be written, or that names
// one of the command's inputs, is an error before any work (not after minutes of computing, and never a replaced
// input). The messages name the flag and the path.
#pragma once

#include <string>

namespace sla_cli {

// Throws RunError "<flag> <path>: ..." when `path` is empty or a directory, its folder does not exist or is not
// writable, or it exists and is not writable. The file itself is not created (AtomicFile writes it at the end).
void check_output_path(const std::string& flag, const std::string& path);

// Throws UsageError when `path_a` and `path_b` are the same file: the same path in another spelling, or links to
// one file.
void check_distinct_files(const std::string& flag_a, const std::string& path_a, const std::string& flag_b,
                          const std::string& path_b);

}  // namespace sla_cli
