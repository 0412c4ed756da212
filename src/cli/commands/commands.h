// The subcommands of `sla`. Each returns the process exit code; errors are thrown as UsageError / RunError
// (cli_error.h) and mapped to exit codes by main().
#pragma once

#include "commands/command_options.h"

namespace sla_cli {

int run_demo(const DemoOptions& options);
int run_bench(const BenchOptions& options);
int run_info();

}  // namespace sla_cli
