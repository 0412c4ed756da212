#!/usr/bin/env bash
# Installs what building and testing SLA needs, and nothing that is already there.
#   scripts/install_deps.sh          C++ build and tests: compiler, CMake, Ninja, GoogleTest, and the libraries of the
#                                    `sla` program: CLI11 (command line), libzip (.npz), libpng and zlib (pictures),
#                                    nlohmann/json (the calibration file)
#   scripts/install_deps.sh demo     the same without GoogleTest: what `make demo` builds
#   scripts/install_deps.sh format   clang-format, for scripts/check_format.sh (CI)
#   scripts/install_deps.sh python   the Python test stack: torch, scikit-build-core, tests/python/requirements.txt
#                                    (numpy, pytest, diffusers, ruff)
# Works as root (CI, fresh machines) or with sudo. Where packages cannot be installed (no apt, or no network, as on
# the GPU machine) it says what is missing and goes on: CMake then builds what it can and names what it lacks
# (without GoogleTest only the C++ unit tests are left out, without CLI11, libzip or nlohmann/json the `sla` program,
# and `make test` fails if no test was built at all).
set -euo pipefail

mode=${1:-build}
if [ "$mode" != "python" ]; then
  need_apt=()
  pkgs=()
  case "$mode" in
    build | demo)
      command -v cmake >/dev/null || need_apt+=(cmake)
      command -v ninja >/dev/null || need_apt+=(ninja-build)
      command -v g++ >/dev/null || need_apt+=(g++)
      pkgs=(libpng-dev zlib1g-dev pkg-config libcli11-dev libzip-dev nlohmann-json3-dev)
      if [ "$mode" = build ]; then
        pkgs+=(libgtest-dev)
        # `make test` makes a virtual environment; Debian's python3 needs python3-venv (ensurepip) for that.
        if command -v python3 >/dev/null && ! python3 -c "import ensurepip" 2>/dev/null; then need_apt+=(python3-venv); fi
      fi ;;
    format) pkgs=(clang-format) ;;
    *) echo "install_deps.sh: unknown mode '$mode' (expected nothing, demo, format or python)" >&2; exit 2 ;;
  esac
  for pkg in "${pkgs[@]}"; do
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
# torch's range is pyproject.toml's dependency (the extension's CMake refuses older ones); scikit-build-core is the
# build backend (`pip install --no-build-isolation` needs it installed); tests/python/requirements.txt is the rest.
# pip leaves what is already satisfied alone, so a second run downloads nothing.
here=$(cd "$(dirname "$0")/.." && pwd)
echo "[deps] pip: torch>=2.4, scikit-build-core and tests/python/requirements.txt into $($py -c 'import sys; print(sys.prefix)')"
if ! $py -m pip install -q "torch>=2.4" "scikit-build-core>=0.10" -r "$here/tests/python/requirements.txt"; then
  echo "[deps] pip could not install the Python packages (no network?); building with what is there" >&2
fi
