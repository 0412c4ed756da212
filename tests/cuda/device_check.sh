#!/usr/bin/env bash
# One device call: the forward and backward grids of test_backend_ops, the random-configuration fuzz (2000 cases per
# mainloop, FUZZ_COUNT to change), compute-sanitizer on a small forward and backward, then the W1 timing (inference
# forward and one training step) against cuDNN on the same card.
# (cuDNN through bench/bench_sla.py --cudnn-only).
# Usage: tests/cuda/device_check.sh [filter] ; logs go to $OUT.
# Environment: BIN (a test_backend_ops built elsewhere, e.g. carried; built here when absent or when it cannot
# run on this machine), SKIP_TESTS, SKIP_SANITIZER. The forward grid and the W1 timing also run with
# SLA_CUDA_MAINLOOP=mma, so that a Hopper card checks both mainloops (wgmma + TMA and mma.sync) of the forward and
# dQ kernels.
set -o pipefail
OUT=${OUT:-/tmp/sla-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,driver_version --format=csv,noheader
T=${BIN:-}
# `--mode fwd --filter none` touches the CUDA runtime without running a case: a carried binary that needs a newer
# driver fails here and is rebuilt.
if [ -z "$T" ] || ! "$T" --mode fwd --filter no-such-case >/dev/null 2>&1; then
  echo "building test_backend_ops on the device (BIN='$T' absent or not runnable)"
  B=build-dev-fwd
  cmake -S . -B $B -G Ninja -DSLA_CUDA=ON -DSLA_BUILD_CLI=OFF -DSLA_CUDA_ARCHS=90a -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_COMPILER="$(which nvcc)" >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
  ninja -C $B -j16 test_backend_ops >"$OUT/build.log" 2>&1 || { grep -E "error|FAILED" "$OUT/build.log" | head -40; exit 1; }
  T=$B/tests/cuda/test_backend_ops
fi
rc=0
if [ -z "$SKIP_TESTS" ]; then
  $T --mode fwd ${1:+--filter "$1"} 2>&1 | tee "$OUT/fwd.log" | grep -v "^OK" | tail -40 || rc=1
  $T --mode bwd ${1:+--filter "$1"} 2>&1 | tee "$OUT/bwd.log" | grep -v "^OK" | tail -40 || rc=1
  # On Hopper the default mainloops are wgmma: run both grids once more on the sm_80 (mma.sync) path.
  echo "== forward and backward grids with SLA_CUDA_MAINLOOP=mma"
  SLA_CUDA_MAINLOOP=mma $T --mode fwd ${1:+--filter "$1"} 2>&1 | tee "$OUT/fwd_mma.log" | grep -v "^OK" | tail -10 || rc=1
  SLA_CUDA_MAINLOOP=mma $T --mode bwd ${1:+--filter "$1"} 2>&1 | tee "$OUT/bwd_mma.log" | grep -v "^OK" | tail -10 || rc=1
  # Random configurations over the whole option space, the adaptive block-map rules included, against the fp64 CPU
  # oracle (fresh seed, printed with the replay command): O and every gradient under the 2x rule, bitwise reruns on
  # every 8th case, the oracle against the exact reference on every 8th. Both mainloops.
  echo "== fuzz (default mainloops)"
  $T --mode fuzz --count ${FUZZ_COUNT:-2000} 2>&1 | tee "$OUT/fuzz.log" | tail -25 || rc=1
  echo "== fuzz with SLA_CUDA_MAINLOOP=mma"
  SLA_CUDA_MAINLOOP=mma $T --mode fuzz --count ${FUZZ_COUNT:-2000} 2>&1 | tee "$OUT/fuzz_mma.log" | tail -25 || rc=1
fi
if [ -z "$SKIP_SANITIZER$SKIP_TESTS" ]; then
  # Full reports go to $OUT/sanitizer.log; the summary lines are printed.
  for tool in memcheck racecheck synccheck; do
    for f in "fwd/bf16/d128/bq128/bk64/global" "bwd/bf16/d128/bq128/bk64/global" "bwd/f16/d64/bq64/bk128/complement"; do
      mode=${f%%/*}
      echo "== $tool $f" | tee -a "$OUT/sanitizer.log"
      compute-sanitizer --tool $tool --error-exitcode 3 --print-limit 20 $T --mode $mode --filter "$f" \
        >>"$OUT/sanitizer.log" 2>&1 || rc=1
      tail -1 "$OUT/sanitizer.log"
    done
  done
fi
echo "== perf, mma.sync mainloops (SLA_CUDA_MAINLOOP=mma)"
SLA_CUDA_MAINLOOP=mma $T --mode perf 2>&1 | tail -6
echo "== perf, default mainloops"
$T --mode perf 2>&1 | tail -6
# The dense baseline in the same call on the same card, through the PyTorch-side benchmark (needs only torch).
python3 bench/bench_sla.py --cudnn-only --shapes W1 2>&1 | grep "^CUDNN_"
exit $rc
