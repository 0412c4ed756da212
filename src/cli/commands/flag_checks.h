// The value checks of the `sla` flags, as CLI11 validators, and helpers that declare a flag with its value name,
// default and help text in one call. CLI11 parses the command line, dispatches the subcommands and formats --help;
// these checks give its errors the project's shape: "--topk: expected a number in (0, 1], got '2.5'" (the flag,
// the expected value, what was typed).
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace sla_cli {

// Closed or open bounds of a numeric flag, for the check and for the message that names them.
struct Range {
  double lo, hi;
  bool lo_open = false, hi_open = false;
};
std::string describe_range(const Range& r);  // "(0, 1]"

CLI::Validator number_in(const Range& r);
CLI::Validator integer_in(int64_t lo, int64_t hi);
CLI::Validator one_of(const std::vector<std::string>& allowed);
// Exactly `count` positive integers separated by `sep`, e.g. "8x16x24" or "1,12,4096,128".
CLI::Validator int_list(char sep, std::size_t count, const std::string& value_name);

// `--name VALUE_NAME`: bound to *target (any type CLI11 converts to; the check runs on the typed text first).
// The help line ends with "(default: <default_text>)" when default_text is not empty. A value that is itself a flag
// ("--topk --heads 2") is reported as the missing value of `name`.
template <typename T>
CLI::Option* add_value_flag(CLI::App& app, const std::string& name, const std::string& value_name, T* target,
                            const std::string& default_text, const std::string& help,
                            const CLI::Validator& check = CLI::Validator());
// A switch (`--backward`); "--backward=yes" is an error, not a silent true.
CLI::Option* add_switch(CLI::App& app, const std::string& name, bool* target, const std::string& help);

// The help text of a flag, wrapped so that lines stay within the terminal width CLI11's column layout leaves.
std::string wrap_help(const std::string& text, std::size_t width);

// Checks shared by every value flag: the value must not be another flag (see add_value_flag).
CLI::Validator value_present(const std::string& value_name);

// The column where the help texts of the flags start, and the width they wrap at.
constexpr std::size_t kHelpColumn = 34;
constexpr std::size_t kHelpWidth = 112 - kHelpColumn;

template <typename T>
CLI::Option* add_value_flag(CLI::App& app, const std::string& name, const std::string& value_name, T* target,
                            const std::string& default_text, const std::string& help, const CLI::Validator& check) {
  const std::string text = default_text.empty() ? help : help + " (default: " + default_text + ")";
  CLI::Option* opt = app.add_option(name, *target, wrap_help(text, kHelpWidth));
  opt->type_name(value_name);
  opt->check(value_present(value_name));
  if (check.get_active()) opt->check(check);
  return opt;
}

}  // namespace sla_cli
