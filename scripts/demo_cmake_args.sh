#!/usr/bin/env bash
# Prints the CMake arguments `make demo` builds with, and one line on stderr saying what it chose.
#   SLA_CUDA unset or AUTO: the CUDA backend only when nvcc is found and a GPU is visible (nvidia-smi), built for that
#                           GPU's architecture alone; otherwise the CPU backend only (the CPU demo needs no kernels).
#   SLA_CUDA=ON / OFF:      as asked (ON builds every architecture in SLA_CUDA_ARCHS, default 80;90a).
# The demo needs neither the C++ tests nor GoogleTest, so they are left out of its build.
set -euo pipefail

args=(-DSLA_BUILD_TESTS=OFF)
mode=${SLA_CUDA:-AUTO}
mode=${mode^^}

# The architecture SLA builds for a compute capability "M.m", or nothing when it has no kernels for it.
arch_for() {
  case "$1" in
    9.0) echo 90a ;;        # H100 / H200: the wgmma + TMA kernels
    8.*) echo 80 ;;         # A100 (8.0) and the 8.x cards, which run sm_80 code: the mma.sync kernels
    *) echo "" ;;
  esac
}

case "$mode" in
  OFF)
    echo "[demo] SLA_CUDA=OFF: building the CPU backend only" >&2
    args+=(-DSLA_CUDA=OFF) ;;
  ON)
    echo "[demo] SLA_CUDA=ON: building the CUDA backend for ${SLA_CUDA_ARCHS:-80;90a}" >&2
    args+=(-DSLA_CUDA=ON)
    [ -n "${SLA_CUDA_ARCHS:-}" ] && args+=("-DSLA_CUDA_ARCHS=${SLA_CUDA_ARCHS}") ;;
  AUTO)
    cap=""
    if command -v nvidia-smi >/dev/null 2>&1; then
      cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' ' || true)
    fi
    arch=""
    [ -n "$cap" ] && arch=$(arch_for "$cap")
    if [ -z "$cap" ]; then
      echo "[demo] no GPU visible: building the CPU backend only, no CUDA kernels (make demo SLA_CUDA=ON builds them)" >&2
      args+=(-DSLA_CUDA=OFF)
    elif ! command -v nvcc >/dev/null 2>&1; then
      echo "[demo] a GPU (compute capability $cap) but no nvcc on PATH: building the CPU backend only" >&2
      args+=(-DSLA_CUDA=OFF)
    elif [ -z "$arch" ]; then
      echo "[demo] SLA has no kernels for this GPU (compute capability $cap; it builds sm_80 and sm_90a):" \
           "building the CPU backend only" >&2
      args+=(-DSLA_CUDA=OFF)
    else
      echo "[demo] GPU with compute capability $cap: building the CUDA backend for sm_$arch only" >&2
      args+=(-DSLA_CUDA=ON "-DSLA_CUDA_ARCHS=$arch")
    fi ;;
  *)
    echo "[demo] SLA_CUDA: '$mode'; expected ON, OFF or AUTO" >&2
    exit 2 ;;
esac
echo "${args[@]}"
