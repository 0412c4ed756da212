// The `sla` program: the command line (CLI11, commands/command_options.h), the subcommand it names, and the mapping
// of errors to exit codes (0 ok, 1 failure, 2 usage).
#include <exception>
#include <iostream>
#include <new>
#include <string>
#include <vector>

#include "cli_error.h"
#include "commands/command_options.h"
#include "commands/commands.h"

namespace {

int dispatch(const std::vector<std::string>& args) {
  using namespace sla_cli;
  const CommandLine cl = parse_command_line(args);
  switch (cl.command) {
    case CommandLine::Command::help:
    case CommandLine::Command::version:
      std::cout << cl.text << (cl.text.empty() || cl.text.back() != '\n' ? "\n" : "");
      return kExitOk;
    case CommandLine::Command::demo: return run_demo(cl.demo);
    case CommandLine::Command::bench: return run_bench(cl.bench);
    case CommandLine::Command::info: return run_info();
    case CommandLine::Command::calibrate: return run_calibrate(cl.calibrate);
  }
  return kExitFailure;
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
  } catch (const std::bad_alloc&) {
    // The commands check their sizes against the memory limits before allocating (device/memory_limits.h); this is
    // the last line for what those estimates miss.
    std::cerr << "sla: error: out of memory (an allocation failed); try a smaller problem\n";
    return sla_cli::kExitFailure;
  } catch (const std::exception& e) {
    std::cerr << "sla: internal error: " << e.what() << "\n";
    return sla_cli::kExitFailure;
  }
}
