#!/usr/bin/env bash
# Installs what building and testing SLA needs, and nothing that is already there.
#   scripts/install_deps.sh          C++ build: compiler, CMake, Ninja, GoogleTest, libpng, zlib
#   scripts/install_deps.sh python   also the Python test stack: torch, numpy, pytest, scikit-build-core, pybind11
# Works as root (CI, fresh machines) or with sudo; on a machine without network (the GPU machine) it only
# reports what is missing.
set -euo pipefail

want_python=0
[ "${1:-}" = "python" ] && want_python=1

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v ninja >/dev/null || need_apt+=(ninja-build)
command -v g++ >/dev/null || need_apt+=(g++)
for pkg in libgtest-dev libpng-dev zlib1g-dev pkg-config; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done

if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "[deps] installing: ${need_apt[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "[deps] missing and no apt-get to install them: ${need_apt[*]}" >&2
    exit 1
  fi
fi

if [ $want_python -eq 1 ]; then
  py=${PYTHON:-python3}
  missing=()
  $py -c "import torch" 2>/dev/null || missing+=("torch>=2.4")
  $py -c "import numpy" 2>/dev/null || missing+=(numpy)
  $py -c "import pytest" 2>/dev/null || missing+=(pytest)
  $py -c "import scikit_build_core" 2>/dev/null || missing+=(scikit-build-core)
  $py -c "import pybind11" 2>/dev/null || missing+=(pybind11)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "[deps] pip installing: ${missing[*]} (torch is a large download the first time)"
    $py -m pip install -q "${missing[@]}"
  fi
fi
