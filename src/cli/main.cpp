// The `sla` program: subcommand dispatch and the mapping of errors to exit codes (0 ok, 1 failure, 2 usage).
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "cli_error.h"
#include "command_options.h"
#include "commands.h"

namespace {

int dispatch(const std::vector<std::string>& args) {
  using namespace sla_cli;
  std::string command = "demo";
  std::vector<std::string> rest = args;
  if (!args.empty() && (args[0] == "--help" || args[0] == "-h" || args[0] == "help")) {
    std::cout << main_help();
    return kExitOk;
  }
  if (!args.empty() && args[0].rfind("-", 0) != 0) {
    command = args[0];
    rest.erase(rest.begin());
  }
  for (std::string& a : rest) {
    if (a == "-h") a = "--help";
  }
  if (command == "demo") {
    const DemoOptions o = parse_demo_options(rest);
    if (o.help) {
      std::cout << demo_help();
      return kExitOk;
    }
    return run_demo(o);
  }
  if (command == "bench") {
    const BenchOptions o = parse_bench_options(rest);
    if (o.help) {
      std::cout << bench_help();
      return kExitOk;
    }
    return run_bench(o);
  }
  if (command == "info") {
    if (rest.size() == 1 && rest[0] == "--help") {
      std::cout << info_help();
      return kExitOk;
    }
    if (!rest.empty()) throw UsageError("info: takes no flags, got '" + rest[0] + "'");
    return run_info();
  }
  throw UsageError("unknown command '" + command + "'; expected demo, bench or info (see sla --help)");
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  try {
    return dispatch(args);
  } catch (const sla_cli::UsageError& e) {
    std::cerr << "sla: error: " << e.what() << "\n";
    return sla_cli::kExitUsage;
  } catch (const sla_cli::RunError& e) {
    std::cerr << "sla: error: " << e.what() << "\n";
    return sla_cli::kExitFailure;
  } catch (const std::exception& e) {
    std::cerr << "sla: internal error: " << e.what() << "\n";
    return sla_cli::kExitFailure;
  }
}
