// Flag parsing for the `sla` subcommands. See args.h.
#include "args.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <utility>

#include "cli_error.h"

namespace sla_cli {

bool parse_int64(const std::string& s, int64_t* out) {
  if (s.empty() || std::isspace(static_cast<unsigned char>(s[0]))) return false;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno == ERANGE || end != s.c_str() + s.size()) return false;
  *out = static_cast<int64_t>(v);
  return true;
}

bool parse_finite_double(const std::string& s, double* out) {
  if (s.empty() || std::isspace(static_cast<unsigned char>(s[0]))) return false;
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (errno == ERANGE || end != s.c_str() + s.size() || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

namespace {

std::string format_number(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

std::string describe(const Range& r) {
  return std::string(r.lo_open ? "(" : "[") + format_number(r.lo) + ", " + format_number(r.hi) +
         (r.hi_open ? ")" : "]");
}

const FlagSpec* find_spec(const std::vector<FlagSpec>& specs, const std::string& name) {
  for (const FlagSpec& s : specs) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

}  // namespace

ParsedFlags::ParsedFlags(std::vector<FlagSpec> specs, std::map<std::string, std::string> values,
                         std::vector<std::string> pos)
    : specs_(std::move(specs)), values_(std::move(values)), positional_(std::move(pos)) {}

const FlagSpec& ParsedFlags::spec(const std::string& name) const {
  const FlagSpec* s = find_spec(specs_, name);
  // Asking for an undeclared flag is a bug in the CLI itself, not a user error.
  if (s == nullptr) throw std::logic_error("flag " + name + " is not declared");
  return *s;
}

bool ParsedFlags::given(const std::string& name) const {
  spec(name);
  return values_.count(name) != 0;
}

std::string ParsedFlags::text(const std::string& name) const {
  const FlagSpec& s = spec(name);
  auto it = values_.find(name);
  return it != values_.end() ? it->second : s.default_value;
}

bool ParsedFlags::is_set(const std::string& name) const {
  const FlagSpec& s = spec(name);
  if (!s.value_name.empty()) throw std::logic_error("flag " + name + " takes a value; it is not a switch");
  return values_.count(name) != 0;
}

int64_t ParsedFlags::integer(const std::string& name, int64_t lo, int64_t hi) const {
  const std::string t = text(name);
  int64_t v = 0;
  if (!parse_int64(t, &v) || v < lo || v > hi) {
    throw UsageError(name + ": expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                     "], got '" + t + "'");
  }
  return v;
}

double ParsedFlags::number(const std::string& name, Range r) const {
  const std::string t = text(name);
  double v = 0;
  bool ok = parse_finite_double(t, &v);
  if (ok) {
    ok = (r.lo_open ? v > r.lo : v >= r.lo) && (r.hi_open ? v < r.hi : v <= r.hi);
  }
  if (!ok) throw UsageError(name + ": expected a number in " + describe(r) + ", got '" + t + "'");
  return v;
}

std::string ParsedFlags::choice(const std::string& name, const std::vector<std::string>& allowed) const {
  const std::string t = text(name);
  std::string list;
  for (const std::string& a : allowed) {
    if (a == t) return t;
    list += (list.empty() ? "" : "|") + a;
  }
  throw UsageError(name + ": expected one of " + list + ", got '" + t + "'");
}

std::vector<int64_t> ParsedFlags::int_list(const std::string& name, char sep, std::size_t count) const {
  const std::string t = text(name);
  std::vector<int64_t> out;
  std::string item;
  std::istringstream is(t);
  bool ok = true;
  while (std::getline(is, item, sep)) {
    int64_t v = 0;
    if (!parse_int64(item, &v) || v < 1) {
      ok = false;
      break;
    }
    out.push_back(v);
  }
  // getline drops a trailing empty item ("8x16x"), so also reject a trailing separator explicitly.
  if (!ok || out.size() != count || (!t.empty() && t.back() == sep)) {
    const FlagSpec& s = spec(name);
    throw UsageError(name + ": expected " + std::to_string(count) + " positive integers separated by '" +
                     std::string(1, sep) + "' (" + s.value_name + "), got '" + t + "'");
  }
  return out;
}

ParsedFlags parse_flags(const std::vector<std::string>& args, const std::vector<FlagSpec>& specs,
                        bool allow_positional) {
  std::map<std::string, std::string> values;
  std::vector<std::string> positional;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.size() < 2 || a[0] != '-') {
      if (!allow_positional) throw UsageError("unexpected argument '" + a + "' (flags start with --; see --help)");
      positional.push_back(a);
      continue;
    }
    std::string name = a;
    std::string value;
    bool inline_value = false;
    const std::size_t eq = a.find('=');
    if (eq != std::string::npos) {
      name = a.substr(0, eq);
      value = a.substr(eq + 1);
      inline_value = true;
    }
    const FlagSpec* s = find_spec(specs, name);
    if (s == nullptr) throw UsageError("unknown flag '" + name + "' (see --help for the flags of this command)");
    if (s->value_name.empty()) {
      if (inline_value) throw UsageError(name + ": is a switch and takes no value, got '" + value + "'");
      values[name] = "1";
      continue;
    }
    if (!inline_value) {
      if (i + 1 >= args.size()) throw UsageError(name + ": expected a value (" + s->value_name + ")");
      value = args[++i];
    }
    values[name] = value;
  }
  return ParsedFlags(specs, std::move(values), std::move(positional));
}

std::string format_flags_help(const std::vector<FlagSpec>& specs) {
  // Help text wraps at this column, continuing under the start of the help column.
  constexpr std::size_t kLineWidth = 110;
  std::size_t width = 0;
  std::vector<std::string> heads;
  for (const FlagSpec& s : specs) {
    heads.push_back(s.name + (s.value_name.empty() ? "" : " " + s.value_name));
    width = std::max(width, heads.back().size());
  }
  const std::size_t indent = 2 + width + 2;
  std::ostringstream os;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    std::string text = specs[i].help;
    if (!specs[i].default_value.empty()) text += " (default: " + specs[i].default_value + ")";
    std::string line = "  " + heads[i] + std::string(width - heads[i].size() + 2, ' ');
    std::istringstream words(text);
    std::string word;
    bool first = true;
    while (words >> word) {
      if (!first && line.size() + 1 + word.size() > kLineWidth) {
        os << line << "\n";
        line = std::string(indent, ' ');
        first = true;
      }
      line += (first ? "" : " ") + word;
      first = false;
    }
    os << line << "\n";
  }
  return os.str();
}

}  // namespace sla_cli
