#!/usr/bin/env bash
# Builds, in parallel on the device machine, what a device call runs: test_backend_ops (sm_90a, CLI off) in
# build-dev-fwd and the Python package with its CUDA kernels (sm_90a) into the machine's python3. Prints the time of
# each; logs go to $OUT. Usage: tests/cuda/device_build.sh   (then BIN=build-dev-fwd/tests/cuda/test_backend_ops)
set -o pipefail
OUT=${OUT:-/tmp/sla-out}
mkdir -p "$OUT"
jobs=$(( $(nproc) / 2 ))
(
  s=$SECONDS
  cmake -S . -B build-dev-fwd -G Ninja -DSLA_CUDA=ON -DSLA_BUILD_CLI=OFF -DSLA_CUDA_ARCHS=90a \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$(which nvcc)" >"$OUT/configure.log" 2>&1 &&
    ninja -C build-dev-fwd -j"$jobs" test_backend_ops >"$OUT/build.log" 2>&1 &&
    echo "test_backend_ops built in $((SECONDS - s)) s" || { grep -E "error|FAILED" "$OUT/build.log" | head -20; exit 1; }
) &
b1=$!
(
  s=$SECONDS
  CMAKE_BUILD_PARALLEL_LEVEL=$jobs SLA_CUDA=ON SLA_CUDA_ARCHS=90a \
    python3 -m pip install -q --no-build-isolation --no-deps . >"$OUT/pip.log" 2>&1 &&
    echo "python package built in $((SECONDS - s)) s" || { grep -iE "error" "$OUT/pip.log" | head -20; exit 1; }
) &
b2=$!
rc=0
wait $b1 || rc=1
wait $b2 || rc=1
exit $rc
