// A small command-line flag parser: each subcommand declares its flags (name, value, default, help) once, and the
// same table drives parsing, typed access with range checks, and the --help text, so defaults never drift.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sla_cli {

struct FlagSpec {
  std::string name;           // "--topk"
  std::string value_name;     // "FRACTION"; empty for a switch that takes no value
  std::string default_value;  // used when the flag is absent; shown in --help (empty: no default)
  std::string help;           // one sentence
};

// Closed or open bounds of a numeric flag, for range checks and for the message that names them.
struct Range {
  double lo, hi;
  bool lo_open = false, hi_open = false;
};

class ParsedFlags {
 public:
  ParsedFlags(std::vector<FlagSpec> specs, std::map<std::string, std::string> values, std::vector<std::string> pos);

  // True when the user typed the flag (a switch, or a flag with a value).
  bool given(const std::string& name) const;
  // The typed value, or the default. All of these throw UsageError naming the flag and the expected value.
  std::string text(const std::string& name) const;
  bool is_set(const std::string& name) const;  // for switches
  int64_t integer(const std::string& name, int64_t lo, int64_t hi) const;
  double number(const std::string& name, Range range) const;
  std::string choice(const std::string& name, const std::vector<std::string>& allowed) const;
  // A list of exactly `count` positive integers separated by `sep`, e.g. "8x16x24" or "1,12,4096,128".
  std::vector<int64_t> int_list(const std::string& name, char sep, std::size_t count) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  const FlagSpec& spec(const std::string& name) const;

  std::vector<FlagSpec> specs_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

// Parses "--flag value", "--flag=value" and switches. Unknown flags, missing values and values given to switches
// throw UsageError. When `allow_positional` is false, a positional argument is an error too.
ParsedFlags parse_flags(const std::vector<std::string>& args, const std::vector<FlagSpec>& specs,
                        bool allow_positional = false);

// The "Flags:" block of a --help text: one flag per line with its value, default and help.
std::string format_flags_help(const std::vector<FlagSpec>& specs);

// Strict conversions used by the typed accessors (exposed for tests). Return false when `s` is not entirely a
// number, or is out of the representable range / not finite.
bool parse_int64(const std::string& s, int64_t* out);
bool parse_finite_double(const std::string& s, double* out);

}  // namespace sla_cli
