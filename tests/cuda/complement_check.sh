#!/usr/bin/env bash
# One device call for the complement variant's kernels (docs/KERNELS.md, 'Complement variant'): builds
# (tests/cuda/device_build.sh), runs the complement cases of the forward and backward grids on both mainloops and
# with one head per chunk (SLA_CUDA_HEADS_PER_CHUNK=1), the W1 benchmark of both variants at k_l 0 / 0.2 / 0.5 alone on
# the GPU, then the random fuzz on both mainloops (CPU-bound: the fp64 oracle) with, when QUALITY=1 and .whl holds
# diffusers, bench/quality.py beside it. Keeps at most 8 files in $OUT (the device tool's limit); logs in /tmp/logs.
# Usage: tests/cuda/complement_check.sh   (FILTER, FUZZ_COUNT, FUZZ_TIMEOUT, NEGLIGIBLE, PROFILE, QUALITY, QUALITY_ARGS,
#        QUALITY_TIMEOUT). FILTER (default complement) picks the grid cases; FILTER= runs the whole grids. PROFILE=1
#        adds bench/profile_sla.py's per-kernel table of W1 (profile.md), memcheck of the complement backward always.
set -o pipefail
OUT=${OUT:-/tmp/sla-out}
LOGS=/tmp/logs
mkdir -p "$OUT" "$LOGS"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
OUT=$LOGS tests/cuda/device_build.sh || exit 1
T=build-dev-fwd/tests/cuda/test_backend_ops
F=${FILTER-complement}
rc=0
for m in auto mma; do
  for mode in fwd bwd; do
    echo "== $mode, mainloop $m" | tee -a "$OUT/grids.log"
    SLA_CUDA_MAINLOOP=$m $T --mode $mode ${F:+--filter "$F"} >>"$OUT/grids.log" 2>&1 || rc=1
    tail -1 "$OUT/grids.log"
  done
done
echo "== bwd, one head per chunk" | tee -a "$OUT/grids.log"
SLA_CUDA_HEADS_PER_CHUNK=1 $T --mode bwd --filter complement >>"$OUT/grids.log" 2>&1 || rc=1
tail -1 "$OUT/grids.log"
echo "== memcheck, complement backward" | tee -a "$OUT/grids.log"
timeout 60 compute-sanitizer --tool memcheck --error-exitcode 3 $T --mode bwd --filter "bwd/f16/d64/bq64/bk128/complement" \
  >>"$OUT/grids.log" 2>&1 || rc=1
tail -1 "$OUT/grids.log"
for tool in racecheck synccheck; do  # the per-CTA batching of the complement kernels (grid case batched-ctas)
  echo "== $tool, batched-ctas backward" | tee -a "$OUT/grids.log"
  timeout 120 compute-sanitizer --tool $tool --error-exitcode 3 $T --mode bwd --filter "bk64/complement/softmax/batched-ctas" \
    >>"$OUT/grids.log" 2>&1 || rc=1
  tail -1 "$OUT/grids.log"
done
echo "== the H100 fuzz case of issue 18 (one key, f16 d128 complement)"
$T --mode fuzz --seed 11361526181690020066 --case 259 2>&1 | tail -2
echo "== the global-variant fuzz case of docs/KERNELS_NEXT.md 1.9 (fails until Delta is consistent)"
$T --mode fuzz --seed 17031791371020627165 --case 67 2>&1 | grep -E "FAIL|passed"
grep -E "FAIL|NaN" "$OUT/grids.log" | head -20
echo "== bench (W1)"
timeout 240 python3 bench/bench_sla.py --shapes W1 --no-sweep --variants complement,global --negligible ${NEGLIGIBLE:-0,0.2,0.5} \
  2>"$LOGS/bench.err" | tee "$OUT/bench.md" | tail -12 || { rc=1; tail -5 "$LOGS/bench.err"; }
if [ "${PROFILE:-0}" = 1 ]; then
  timeout 90 python3 bench/profile_sla.py --variants complement,global --negligible 0,0.5 >"$OUT/profile.md" \
    2>"$LOGS/profile.err" || { rc=1; tail -5 "$LOGS/profile.err"; }
fi
qpid=
if [ "${QUALITY:-0}" = 1 ] && ls .whl/diffusers-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  mkdir -p "$LOGS/q"
  (PYTHONPATH=/tmp/site timeout ${QUALITY_TIMEOUT:-300} python3 bench/quality.py --out "$LOGS/q" ${QUALITY_ARGS:-} \
    >"$LOGS/q/table.txt" 2>"$LOGS/q/log.txt"; echo "quality rc $?" >>"$LOGS/q/table.txt") &
  qpid=$!
fi
for m in auto mma; do
  echo "== fuzz, mainloop $m" | tee -a "$OUT/fuzz.log"
  SLA_CUDA_MAINLOOP=$m timeout ${FUZZ_TIMEOUT:-150} $T --mode fuzz --count ${FUZZ_COUNT:-300} >>"$OUT/fuzz.log" 2>&1 || rc=1
  tail -3 "$OUT/fuzz.log"
done
if [ -n "$qpid" ]; then
  wait $qpid
  tail -25 "$LOGS/q/table.txt"
  tail -c 1500 "$LOGS/q/log.txt" | tr '\r' '\n' | tail -4
  for f in quality.json samples.png losses.png dense.safetensors; do [ -f "$LOGS/q/$f" ] && cp "$LOGS/q/$f" "$OUT/"; done
fi
exit $rc
