// The errors of the `sla` program and the exit codes main() maps them to. The CLI is an application, so it uses
// exceptions; the library it calls returns sla::Status instead.
#pragma once

#include <stdexcept>
#include <string>

#include "sla/types.h"

namespace sla_cli {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;  // the library or an input file failed
constexpr int kExitUsage = 2;    // a flag or its value is wrong

// A flag, a flag value or a subcommand the user typed is wrong. The message names it and the expected value.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Something outside the command line failed: an input file, the library, the device.
class RunError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The library reported StatusCode::unsupported: valid, but not built or implemented for this backend, shape or
// dtype. Callers that can fall back (GPU -> CPU, skip a timing) catch this one only.
class UnsupportedError : public RunError {
 public:
  using RunError::RunError;
};

// Turns a failed library Status into a RunError (UnsupportedError for StatusCode::unsupported) that says which call
// failed.
inline void check_status(const sla::Status& status, const std::string& what) {
  if (status.ok()) return;
  const std::string msg = what + " failed (" + sla::status_code_name(status.code) + "): " + status.message;
  if (status.code == sla::StatusCode::unsupported) throw UnsupportedError(msg);
  throw RunError(msg);
}

}  // namespace sla_cli
