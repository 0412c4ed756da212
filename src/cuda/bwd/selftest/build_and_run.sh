#!/bin/bash
# Builds sla_bwd_selftest with nvcc alone (no CMake, so it does not depend on the rest of the CUDA backend being
# complete) and runs it. Usage: build_and_run.sh <build dir> [selftest args...]
set -e
out=${1:?build dir}; shift
mkdir -p "$out"
root=$(cd "$(dirname "$0")/../../../.." && pwd)
flags="-std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -lineinfo -I$root/include -I$root/src \
  -DSLA_CUDA_HDIM_64 -DSLA_CUDA_HDIM_128 -DSLA_CUDA_DTYPE_BF16 -DSLA_CUDA_DTYPE_F16"
srcs="$root/src/core/types.cpp $(ls $root/src/cuda/bwd/*.cu) $root/src/cuda/bwd/selftest/bwd_selftest.cu"
pids=()
objs=()
for s in $srcs; do
  o="$out/$(basename $s).o"
  objs+=("$o")
  if [[ $s == *.cpp ]]; then g++ -std=c++17 -O2 -I$root/include -I$root/src -c $s -o $o & else nvcc $flags -c $s -o $o & fi
  pids+=($!)
done
for p in "${pids[@]}"; do wait $p; done
nvcc -gencode=arch=compute_90a,code=sm_90a "${objs[@]}" -o "$out/sla_bwd_selftest"
[ "$#" -gt 0 ] && [ "$1" = "--version" ] && exit 0
"$out/sla_bwd_selftest" "$@"
