#!/usr/bin/env bash
# Nsight Compute profile of the W1 kernels (one launch of each, real clocks) from `test_backend_ops --mode perf`:
# duration, speed of light, pipe utilisation, warp stall reasons, occupancy. Appends to $OUT/ncu.txt and prints a
# short digest. Usage: BIN=path/to/test_backend_ops tests/cuda/profile_w1.sh [kernel-regex ...]
# Default kernels: the forward main kernel (W and b, then the sparse branch alone), the key-state and block-map
# kernels, and the three largest backward kernels.
set -o pipefail
OUT=${OUT:-/tmp/sla-out}
mkdir -p "$OUT"
T=${BIN:-build-dev-fwd/tests/cuda/test_backend_ops}
METRICS="regex:smsp__warp_issue_stalled_.*_per_warp_active.pct,regex:sm__pipe_.*_cycles_active.avg.pct_of_peak_sustained_active,regex:sm__inst_executed_pipe_.*.avg.pct_of_peak_sustained_active"
prof() {  # name, then ncu filter arguments
  local name=$1
  shift
  echo "######## $name ($*)" >>"$OUT/ncu.txt"
  ncu --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis --metrics "$METRICS" "$@" "$T" --mode perf >>"$OUT/ncu.txt" 2>&1
  echo "== $name"
  awk -v n="$name" '/######## /{p = ($0 ~ "######## " n " ")} p' "$OUT/ncu.txt" |
    grep -E "^  [a-z_]+.*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|Registers Per|Achieved Occupancy|Dynamic Shared|Warp Cycles Per Issued|stalled_(long_scoreboard|barrier|wait|math_pipe_throttle|short_scoreboard|mio_throttle|no_instruction|dispatch_stall|lg_throttle|membar|sleeping|selected|not_selected)_per|pipe_(tensor|fma|alu|xu|fmaheavy|lsu|uniform).*cycles_active" |
    awk '{ if ($NF ~ /^[0-9.,]+$/ && $(NF-1) !~ /^[0-9.,]+$/) print "  " $1, $(NF-1), $NF; else print "  " $0 }' | head -60
}
if [ $# -gt 0 ]; then
  for k in "$@"; do prof "$k" -k "regex:$k" -c 1; done
  exit 0
fi
prof forward_w -k regex:forward_kernel -c 1
prof forward_sparse -k regex:forward_kernel --launch-skip 2 -c 1
prof key_state -k regex:key_state -c 1
prof block_map -k "regex:pool|select|mean|invert" -c 4
prof backward -k "regex:dq_mma|dkdv_mma|row_prep" -c 3
