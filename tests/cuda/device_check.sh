#!/usr/bin/env bash
# One device call: build the CUDA test binary, run the forward grid, compute-sanitizer on a small case, then the
# W1 timing against cuDNN on the same card. Usage: tests/cuda/device_check.sh [fwd-filter] ; logs go to $OUT.
# Environment: SKIP_TESTS, SKIP_SANITIZER, BWD (run --mode bwd too), PROFILE / PROFILE2 (ncu per-kernel times /
# stall reasons of the main kernels).
set -o pipefail
OUT=${OUT:-/tmp/sla-out}
mkdir -p "$OUT"
B=build-dev-fwd
cmake -S . -B $B -G Ninja -DSLA_CUDA=ON -DSLA_BUILD_CLI=OFF -DSLA_CUDA_ARCHS=90a \
  -DCMAKE_CUDA_COMPILER="$(which nvcc)" >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
ninja -C $B -j16 test_backend_ops >"$OUT/build.log" 2>&1 || { grep -E "error|FAILED" "$OUT/build.log" | head -40; exit 1; }
T=$B/tests/cuda/test_backend_ops
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
if [ -z "$SKIP_TESTS" ]; then
  $T --mode fwd ${1:+--filter "$1"} 2>&1 | tee "$OUT/fwd.log" | grep -v "^OK" | tail -60
  echo "fwd exit: $?"
fi
if [ -n "$BWD" ]; then
  $T --mode bwd 2>&1 | tee "$OUT/bwd.log" | grep -v "^OK" | tail -40
fi
if [ -z "$SKIP_SANITIZER$SKIP_TESTS" ]; then
  compute-sanitizer --tool memcheck --error-exitcode 3 $T --mode fwd --filter "bf16/d128/bq128/bk64/global" 2>&1 | tail -4
  compute-sanitizer --tool racecheck --error-exitcode 3 $T --mode fwd --filter "bf16/d64/bq64/bk128" 2>&1 | tail -4
fi
$T --mode perf 2>&1 | tail -3
python3 tests/cuda/cudnn_baseline.py 2>&1 | tail -2
if [ -n "$PROFILE" ]; then
  ncu --clock-control none --launch-count 9 --metrics gpu__time_duration.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__registers_per_thread $T --mode perf 2>&1 \
    | grep -E "^  [a-zA-Z_:<>]+.*\(|gpu__time|sm__thr|dram__|registers" | sed -E 's/\(ForwardParams\).*|\(.*Params\).*//' | cut -c1-120
fi
if [ -n "$PROFILE2" ]; then
  M=smsp__inst_executed.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum,gpu__time_duration.sum
  for r in barrier long_scoreboard short_scoreboard mio_throttle math_pipe_throttle wait not_selected selected lg_throttle dispatch_stall no_instructions branch_resolving tex_throttle imc_miss misc; do M=$M,smsp__pcsamp_warps_issue_stalled_$r; done
  for k in forward_kernel key_state_kernel; do
    echo "== $k"
    ncu --clock-control none -k regex:$k --launch-count 1 --metrics $M $T --mode perf 2>&1 | grep -E "^\s+(smsp|sm__|l1tex|gpu__)" | sed -E 's/smsp__pcsamp_warps_issue_stalled_//' | awk '{print $1, $NF}' | head -30
  done
fi
