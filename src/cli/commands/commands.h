// The subcommands of `sla`. Each returns the process exit code; errors are thrown as UsageError / RunError
// (cli_error.h) and mapped to exit codes by main().
//
// A new subcommand: its options struct, a CommandLine::Command value and a flags function (declared with
// add_value_flag / add_switch from flag_checks.h) registered in SlaApp in command_options.{h,cpp}; its run_<name>
// here, in its own commands/<name>.cpp; its case in main.cpp's dispatch.
#pragma once

#include "commands/command_options.h"

namespace sla_cli {

int run_demo(const DemoOptions& options);
int run_bench(const BenchOptions& options);
int run_info();
int run_calibrate(const CalibrateOptions& options);

}  // namespace sla_cli
