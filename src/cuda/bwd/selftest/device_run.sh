#!/bin/bash
# One device call: build, correctness of both kernel sets, W1 timing, per-kernel durations, sanitizers.
# Usage (repo root, on the GPU machine): bash src/cuda/bwd/selftest/device_run.sh [steps...]
#   steps: test bench ncu memcheck racecheck (default: all)
set -o pipefail
st=/tmp/bwd_st
steps=${*:-test bench ncu memcheck racecheck}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
bash src/cuda/bwd/selftest/build_and_run.sh $st --version >/dev/null 2>&1 || true
[ -x $st/sla_bwd_selftest ] || { echo "BUILD FAILED"; bash src/cuda/bwd/selftest/build_and_run.sh $st 2>&1 | grep -E "error" | head -20; exit 1; }
for s in $steps; do
  echo "=== $s"
  case $s in
    test) timeout 240 $st/sla_bwd_selftest ;;
    bench) timeout 120 $st/sla_bwd_selftest --bench 20 ;;
    bench64) timeout 120 $st/sla_bwd_selftest --bench 20 global 64 64 ;;
    benchnow) timeout 120 $st/sla_bwd_selftest --bench 20 global 128 64 0 ;;
    prof) timeout 300 ncu --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats -k regex:"dkdv_mma|dq_mma|row_stats" -c 3 $st/sla_bwd_selftest --bench 1 2>&1 | grep -vE "^==PROF==|^ *-+ *$|^ *$" | cut -c1-150 ;;
    benchc) timeout 120 $st/sla_bwd_selftest --bench 3 complement ;;
    ncu) timeout 200 ncu --csv --metrics gpu__time_duration.sum $st/sla_bwd_selftest --bench 1 2>/dev/null | python3 src/cuda/bwd/selftest/ncu_times.py ;;
    memcheck) timeout 200 compute-sanitizer --tool memcheck --print-limit 5 $st/sla_bwd_selftest --mma-only 2>&1 | tail -4 ;;
    racecheck) timeout 240 compute-sanitizer --tool racecheck --print-limit 5 $st/sla_bwd_selftest --mma-only 2>&1 | tail -4 ;;
  esac
done
