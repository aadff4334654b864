# Thin wrapper over CMake. The two commands a new user needs:
#   make run    install what is missing, build, run the main job
#   make test   install what is missing, build, run every test
BUILD      ?= build
PREFIX     ?= /usr/local
APEX_WERROR ?= OFF
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_ARGS ?=

# CMake's generated makefiles recurse; their directory chatter is noise here.
MAKEFLAGS += --no-print-directory

.PHONY: all setup build run test test-mcp test-asan test-tsan bench bench-report install clean

all: build

setup:
	@sh scripts/setup.sh

define configure
	cmake -S . -B $(1) -DCMAKE_BUILD_TYPE=$(2) -DCMAKE_INSTALL_PREFIX=$(PREFIX) \
	  -DAPEX_WERROR=$(APEX_WERROR) -DAPEX_SANITIZE=$(3) $(CMAKE_ARGS) >/dev/null
	cmake --build $(1) -j $(JOBS)
endef

build: setup
	$(call configure,$(BUILD),RelWithDebInfo,)

run: build
	$(BUILD)/bin/apex run example_async.long_task --param sub_tasks=3 --param steps=30

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# `apex mcp` against code nobody here wrote: the official MCP conformance
# suite over HTTP and the official TypeScript SDK client over stdio (npm
# packages pinned in tests/mcp/npm_setup.sh, cached in the build dir;
# skipped only when npm is unreachable).
test-mcp: build
	ctest --test-dir $(BUILD) -L mcp --output-on-failure

test-asan: setup
	$(call configure,build-asan,Debug,address)
	ctest --test-dir build-asan --output-on-failure -j $(JOBS)

test-tsan: setup
	$(call configure,build-tsan,Debug,thread)
	setarch "$$(uname -m)" -R ctest --test-dir build-tsan --output-on-failure -j $(JOBS)

# Every workload on every peer, three interleaved runs (bench/README.md);
# then docs/performance.md from the last run.
bench: build
	python3 bench/run.py --build $(BUILD)

bench-report:
	python3 bench/report.py --in $(BUILD)/bench/results.txt --out docs/performance.md \
	  --analysis bench/analysis.md

install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

clean:
	rm -rf $(BUILD) build-asan build-tsan build-release
