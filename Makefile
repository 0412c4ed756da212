# Two commands do everything (README.md):
#   make demo   builds what the demo runs (the CUDA backend for this machine's GPU, or the CPU backend alone when
#               there is no usable GPU) and runs `sla demo`
#   make test   builds everything (every CUDA kernel too, when nvcc is found), runs the C++ tests (CTest), installs
#               the Python package into a virtual environment and runs its tests
# Knobs: BUILD=dir  BUILD_DEMO=dir  JOBS=n  CMAKE_ARGS="-DSLA_CUDA=OFF ..."  SLA_CUDA=ON|OFF|AUTO (demo)
#        VENV=dir (the Python environment `make test` creates and uses; default .venv; an active virtual environment
#        is used as it is)  PYTHON=python (use that interpreter instead, no environment created)
BUILD ?= build
BUILD_DEMO ?= build-demo
JOBS ?= $(shell nproc)
CMAKE_ARGS ?=
VENV ?= .venv
PYTHON ?= $(if $(VIRTUAL_ENV),python3,$(VENV)/bin/python)

.PHONY: all deps build demo bench test test-cpp test-python python-env python-install clean

all: build

deps:
	@scripts/install_deps.sh

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja $(CMAKE_ARGS)

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

# The demo's own build: scripts/demo_cmake_args.sh picks the CUDA architecture of the GPU present, or none.
demo:
	@scripts/install_deps.sh demo
	@args=$$(scripts/demo_cmake_args.sh) && cmake -S . -B $(BUILD_DEMO) -G Ninja $$args $(CMAKE_ARGS) >/dev/null
	cmake --build $(BUILD_DEMO) -j $(JOBS)
	./$(BUILD_DEMO)/src/cli/sla demo

bench: build
	./$(BUILD)/src/cli/sla bench

test: test-cpp test-python

test-cpp: build
	ctest --test-dir $(BUILD) --output-on-failure --no-tests=error -j $(JOBS)

# A virtual environment of the project's own (no system site packages), so that the tests see only what the
# install steps put there; system Pythons that refuse pip installs (PEP 668) are never touched.
python-env:
	@if [ "$(PYTHON)" = "$(VENV)/bin/python" ] && [ ! -x "$(VENV)/bin/python" ]; then \
	  echo "[python] creating the virtual environment $(VENV)"; python3 -m venv "$(VENV)"; fi

# The Python package is built CPU-only unless SLA_PY_CUDA=1: compiling every CUDA kernel a second time is slow on
# small machines, and CI has no GPU to run them.
python-install: python-env
	@PYTHON="$(PYTHON)" scripts/install_deps.sh python
	$(PYTHON) -m pip install -q --no-build-isolation --no-deps $(if $(SLA_PY_CUDA),,-C cmake.define.SLA_CUDA=OFF) .

test-python: python-install
	$(PYTHON) -m pytest -q tests/python

clean:
	rm -rf $(BUILD) $(BUILD_DEMO)
