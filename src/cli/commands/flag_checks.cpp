// See flag_checks.h.
#include "commands/flag_checks.h"

#include <sstream>

#include "number_text.h"

namespace sla_cli {

namespace {

std::string format_number(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

std::string in_quotes(const std::string& s) { return "'" + s + "'"; }

}  // namespace

std::string describe_range(const Range& r) {
  return std::string(r.lo_open ? "(" : "[") + format_number(r.lo) + ", " + format_number(r.hi) +
         (r.hi_open ? ")" : "]");
}

// The validators have empty descriptions: CLI11 would append them to the value name in --help.
CLI::Validator number_in(const Range& r) {
  return CLI::Validator(
      [r](std::string& s) -> std::string {
        double v = 0;
        bool ok = parse_finite_double(s, &v);
        if (ok) ok = (r.lo_open ? v > r.lo : v >= r.lo) && (r.hi_open ? v < r.hi : v <= r.hi);
        return ok ? std::string() : "expected a number in " + describe_range(r) + ", got " + in_quotes(s);
      },
      "");
}

CLI::Validator integer_in(int64_t lo, int64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& s) -> std::string {
        int64_t v = 0;
        if (parse_int64(s, &v) && v >= lo && v <= hi) return std::string();
        return "expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + in_quotes(s);
      },
      "");
}

CLI::Validator one_of(const std::vector<std::string>& allowed) {
  return CLI::Validator(
      [allowed](std::string& s) -> std::string {
        std::string list;
        for (const std::string& a : allowed) {
          if (a == s) return std::string();
          list += (list.empty() ? "" : "|") + a;
        }
        return "expected one of " + list + ", got " + in_quotes(s);
      },
      "");
}

CLI::Validator int_list(char sep, std::size_t count, const std::string& value_name) {
  return CLI::Validator(
      [sep, count, value_name](std::string& s) -> std::string {
        std::size_t n = 0;
        bool ok = !s.empty() && s.back() != sep;
        std::istringstream is(s);
        std::string item;
        while (ok && std::getline(is, item, sep)) {
          int64_t v = 0;
          ok = parse_int64(item, &v) && v >= 1;
          ++n;
        }
        if (ok && n == count) return std::string();
        return "expected " + std::to_string(count) + " positive integers separated by '" + std::string(1, sep) + "' (" +
               value_name + "), got " + in_quotes(s);
      },
      "");
}

CLI::Validator value_present(const std::string& value_name) {
  return CLI::Validator(
      [value_name](std::string& s) -> std::string {
        // CLI11 takes the next argument as the value whatever it looks like; a flag there means the value was left
        // out (`--topk --heads 2` would otherwise end as "unexpected argument '2'").
        if (s.rfind("--", 0) == 0 && s.size() > 2) {
          return "missing its value (" + value_name + "): the next argument " + in_quotes(s) + " is a flag";
        }
        return std::string();
      },
      "");
}

CLI::Option* add_switch(CLI::App& app, const std::string& name, bool* target, const std::string& help) {
  CLI::Option* opt = app.add_flag(name, *target, wrap_help(help, kHelpWidth));
  // A plain switch stores "true"; anything else came from "--name=value".
  opt->check(CLI::Validator(
      [](std::string& s) -> std::string {
        return s == "true" ? std::string() : "is a switch and takes no value, got " + in_quotes(s);
      },
      ""));
  return opt;
}

std::string wrap_help(const std::string& text, std::size_t width) {
  std::istringstream words(text);
  std::string out, line, word;
  while (words >> word) {
    if (!line.empty() && line.size() + 1 + word.size() > width) {
      out += line + "\n";
      line.clear();
    }
    line += (line.empty() ? "" : " ") + word;
  }
  return out + line;
}

}  // namespace sla_cli
