SHELL := /bin/bash
# swift-dlm: the commands a person (and CI) uses. See README.md.
SWIFT ?= swift
SEEDS ?= 1000

.PHONY: deps build release run test lint bench bench-daemon bench-durability sim clean

## make deps: install the system packages the build needs (liblmdb-dev), if missing.
deps:
	@bash scripts/install-deps.sh

## make run: build and start a single-node dlmd with its socket and data under ./.dlm/ (Ctrl-C stops it cleanly).
RUN_DIR ?= $(CURDIR)/.dlm
run: deps
	$(SWIFT) build --product dlmd
	@mkdir -p $(RUN_DIR)
	@echo "dlmd: clients connect with DLM_SOCKET=$(RUN_DIR)/dlmd.sock (e.g. DLM_SOCKET=$(RUN_DIR)/dlmd.sock dlmtool status)"
	$$($(SWIFT) build --show-bin-path)/dlmd --socket $(RUN_DIR)/dlmd.sock --data-dir $(RUN_DIR)

build:
	$(SWIFT) build

release:
	$(SWIFT) build -c release

## make test: build (warnings are errors for our own code), lint, and run every test; the randomized model test
## runs DLM_MODEL_OPS operations (default 2 million), the group services simulation DLM_SIM_SEEDS seeds (1500).
test: deps lint
	@$(SWIFT) build --build-tests 2>&1 | tee .build-test.log; test $${PIPESTATUS[0]} -eq 0
	@if grep -E '^/.*/(Sources|Tests|bench|Tools)/.*: warning:' .build-test.log; then \
		echo "error: the build has warnings (see above); warnings are bugs here"; exit 1; fi
	DLM_MODEL_OPS=$${DLM_MODEL_OPS:-2000000} DLM_SIM_SEEDS=$${DLM_SIM_SEEDS:-1500} $(SWIFT) test --skip-build

## make sim SEEDS=N: the group services simulation (Tests/GroupServicesTests) over N seeds, in a release build
## with testing enabled. A failing seed prints the command that replays it.
sim:
	DLM_SIM_SEEDS=$(SEEDS) $(SWIFT) test -c release -Xswiftc -enable-testing --filter GroupServicesTests.SimulationTests

lint:
	$(SWIFT) format lint --strict --recursive Package.swift Sources Tests Tools bench

## make bench: release build, then the engine benchmarks (see bench/RESULTS.md), pinned to CPU 0 when taskset
## exists (the engine is single-threaded). Each prints one JSON object.
TASKSET ?= $(shell command -v taskset >/dev/null 2>&1 && echo taskset -c 0)
bench:
	$(SWIFT) build -c release --product dlmbench
	$(TASKSET) .build/release/dlmbench core
	$(TASKSET) .build/release/dlmbench contended

## make bench-daemon: release build, then a release dlmd on a temporary socket pinned to CPU 0 and the
## scenarios against it (rtt, uncontended, pipelined, handoff, mixed) with dlmbench on CPU 0 ("same") and on
## CPU 1 ("split"); dlmd is stopped with SIGTERM. One JSON object per measurement (bench/RESULTS.md).
## BUILD_FLAGS (e.g. --scratch-path .build-x), DURATION, PLACEMENTS and SCENARIOS are passed on.
BUILD_FLAGS ?=
bench-daemon:
	$(SWIFT) build -c release $(BUILD_FLAGS) --product dlmd
	$(SWIFT) build -c release $(BUILD_FLAGS) --product dlmbench
	BIN=$$($(SWIFT) build -c release $(BUILD_FLAGS) --show-bin-path) bench/daemon-bench.sh

## make bench-durability: the raw LMDB commit rate, then durable grants against a release dlmd in each
## --durability mode (bench/durability-bench.sh; figures in bench/RESULTS.md).
bench-durability:
	bench/durability-bench.sh

clean:
	rm -rf .build .build-test.log .dlm
