# Two commands do everything (README.md):
#   make demo   builds SLA (with the CUDA backend when nvcc is found) and runs `sla demo`
#   make test   builds, runs the C++ tests (CTest), installs the Python package and runs its tests
# Knobs: BUILD=dir  JOBS=n  CMAKE_ARGS="-DSLA_CUDA=OFF ..."  PYTHON=python3
BUILD ?= build
JOBS ?= $(shell nproc)
PYTHON ?= python3
CMAKE_ARGS ?=

.PHONY: all deps build demo bench test test-cpp test-python python-install clean

all: build

deps:
	@scripts/install_deps.sh

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja $(CMAKE_ARGS)

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	./$(BUILD)/src/cli/sla demo

bench: build
	./$(BUILD)/src/cli/sla bench

test: test-cpp test-python

test-cpp: build
	ctest --test-dir $(BUILD) --output-on-failure --no-tests=error -j $(JOBS)

# The Python package is built CPU-only unless SLA_PY_CUDA=1: compiling every CUDA kernel a second time is slow on
# small machines, and CI has no GPU to run them.
python-install:
	@scripts/install_deps.sh python
	$(PYTHON) -m pip install -q --no-build-isolation --no-deps $(if $(SLA_PY_CUDA),,-C cmake.define.SLA_CUDA=OFF) .

test-python: python-install
	cd tests/python && $(PYTHON) -m pytest -q

clean:
	rm -rf $(BUILD)
