#!/usr/bin/env bash
# Installs what building and testing SLA needs, and nothing that is already there.
#   scripts/install_deps.sh          C++ build and tests: compiler, CMake, Ninja, GoogleTest, and the libraries of the
#                                    `sla` program: CLI11 (command line), libzip (.npz), libpng and zlib (pictures);
#                                    clang-format for scripts/check_format.sh
#   scripts/install_deps.sh python   the Python test stack: torch, numpy, pytest, scikit-build-core, ruff
# Works as root (CI, fresh machines) or with sudo. Where packages cannot be installed (no apt, or no network, as on
# the GPU machine) it says what is missing and goes on: CMake then builds what it can and names what it lacks
# (without GoogleTest only the C++ unit tests are left out, without CLI11 or libzip the `sla` program, and
# `make test` fails if no test was built at all).
set -euo pipefail

if [ "${1:-}" != "python" ]; then
  need_apt=()
  command -v cmake >/dev/null || need_apt+=(cmake)
  command -v ninja >/dev/null || need_apt+=(ninja-build)
  command -v g++ >/dev/null || need_apt+=(g++)
  for pkg in libgtest-dev libpng-dev zlib1g-dev pkg-config libcli11-dev libzip-dev clang-format; do
    if command -v dpkg >/dev/null; then dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg"); fi
  done
  if [ ${#need_apt[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "[deps] installing: ${need_apt[*]}"
    if ! { command -v apt-get >/dev/null && $sudo apt-get update -qq &&
           DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null; }; then
      echo "[deps] could not install ${need_apt[*]}; building with what is there" >&2
    fi
  fi
  exit 0
fi

py=${PYTHON:-python3}
missing=()
$py -c "import torch" 2>/dev/null || missing+=("torch>=2.4")
$py -c "import numpy" 2>/dev/null || missing+=(numpy)
$py -c "import pytest" 2>/dev/null || missing+=(pytest)
$py -c "import scikit_build_core" 2>/dev/null || missing+=(scikit-build-core)
$py -m ruff --version >/dev/null 2>&1 || missing+=(ruff)  # scripts/check_format.sh
if [ ${#missing[@]} -gt 0 ]; then
  echo "[deps] pip installing: ${missing[*]} (torch is a large download the first time)"
  $py -m pip install -q "${missing[@]}"
fi
