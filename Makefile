SHELL := /bin/bash
# swift-dlm: the commands a person (and CI) uses. See README.md.
SWIFT ?= swift
## Release builds (dlmd, dlmtool, dlmbench, the libraries) optimize across modules: the lock service (DLMCluster)
## calls the engine (DLMCore) and the codec (DLMWire) on every request, and without this those calls stay
## unspecialized (a single dlmd lost 5-10 % of its throughput when the service moved out of DLMNode).
RELEASE ?= -c release -Xswiftc -cross-module-optimization
SEEDS ?= 1000

.PHONY: deps build release run test soak lint bench bench-daemon bench-stall bench-durability bench-membership bench-provider bench-cluster bench-abuse bench-tls sim fuzz clean libdlm install install-libdlm release-daemon install-daemon test-c bench-c

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
	$(SWIFT) build $(RELEASE)

## make test: lint, then scripts/test.sh: one release build of every test target, dlmd and dlmtool with testing enabled (in
## .build-test, warnings are errors for our own code), the randomized tests in parallel (DLM_MODEL_OPS operations of
## the reference model test, default 1.6 million; DLM_SIM_SEEDS seeds of the group services simulation, default 1000),
## every other Swift test one at a time (real dlmd processes), the C library's tests, and a summary.
test: deps lint
	@bash scripts/test.sh

## make test-c: the C library's tests only (Tests/CDLMTests/run.sh): libdlm and libdlm_lt against a real dlmd.
test-c: libdlm
	@bash Tests/CDLMTests/run.sh

## make sim SEEDS=N MODEL_OPS=M: the group services simulation (Tests/GroupServicesTests) and the random lock traffic
## across nodes' lock services (Tests/DLMClusterTests/MasteringRandomTests.swift, RecoveryRandomTests.swift) and the
## random deadlock cycles across nodes (DeadlockAcrossNodesTests.swift) and the random joins and leaves of lockspace
## groups (LockspaceChurnTests.swift) and group services deciding the views of lock services under a lossy
## network with partitions and fences (FullStackTests.swift) over N seeds each, and M random operations
## of the engine against its reference model (Tests/DLMCoreTests/ModelTests.swift, default 20 million), in a release
## build with testing enabled. A failing seed prints the command that replays it.
MODEL_OPS ?= 20000000
sim:
	DLM_SIM_SEEDS=$(SEEDS) DLM_MASTERING_SEEDS=$(SEEDS) DLM_RECOVERY_SEEDS=$(SEEDS) DLM_DEADLOCK_SEEDS=$(SEEDS) \
		DLM_COROSYNC_SEEDS=$(SEEDS) DLM_CHURN_SEEDS=$(SEEDS) DLM_FORCED_SEEDS=$(SEEDS) DLM_TIMEOUT_SEEDS=$(SEEDS) \
		DLM_LARGE_SEEDS=$(SEEDS) DLM_STACK_SEEDS=$(SEEDS) \
		DLM_MODEL_OPS=$(MODEL_OPS) $(SWIFT) test -c release -Xswiftc -enable-testing --scratch-path .build-test \
		--filter 'DLMCoreTests.ModelTests|GroupServicesTests.SimulationTests|GroupServicesTests.CorosyncMemberRandomTests|DLMClusterTests.MasteringRandomTests|DLMClusterTests.RecoveryRandomTests|DLMClusterTests.DeadlockAcrossNodesTests|DLMClusterTests.LockspaceChurnTests|DLMClusterTests.FullStackTests'

## make soak ROUNDS=N SEED=S NODES=M: the real-process kill rounds (Tests/IntegrationTests/KillRoundsTests.swift:
## clients of the Swift client and of the C library on M dlmd nodes (default 3), one node killed with kill -9 and
## restarted each round (on 5 nodes or more, two at once in half of the rounds), an independent checker over every
## hold) for N rounds (default 100; make test runs 10 on 3 nodes), the victims drawn from seed S (default 2026). A
## failure names the seed and saves every node's log. PROVIDER=corosync runs them on three nodes in network
## namespaces with a corosync each (root; make test runs 3 rounds).
ROUNDS ?= 100
SEED ?= 2026
NODES ?= 3
PROVIDER ?= builtin
BUILTIN_SOAK := killAndRestartRounds[(]
SOAK_TEST = $(if $(filter corosync,$(PROVIDER)),killAndRestartRoundsOnCorosync,$(BUILTIN_SOAK))
soak: deps
	DLM_KILL_ROUNDS=$(ROUNDS) DLM_KILL_SEED=$(SEED) DLM_KILL_NODES=$(NODES) $(SWIFT) test \
		--filter 'IntegrationTests.KillRoundsTests/$(SOAK_TEST)'

## make fuzz FUZZ_SECONDS=N (or FUZZ_RUNS=N): coverage-guided fuzzers (libFuzzer) of the client frame decoder, the
## peer port's frames before and after authentication, the cluster config file, the write-ahead log's recovery and
## the C library's decoder, each for N seconds (default 60)
## or N inputs; corpora and crashing inputs under .build-fuzz/ (Fuzz/README.md).
fuzz:
	@bash Fuzz/run.sh

lint:
	$(SWIFT) format lint --strict --recursive Package.swift Sources Tests Tools bench Fuzz

## make bench: release build, then the engine benchmarks (see bench/RESULTS.md), pinned to CPU 0 when taskset
## exists (the engine is single-threaded). Each prints one JSON object.
TASKSET ?= $(shell command -v taskset >/dev/null 2>&1 && echo taskset -c 0)
bench:
	$(SWIFT) build $(RELEASE) --product dlmbench
	$(TASKSET) .build/release/dlmbench core
	$(TASKSET) .build/release/dlmbench contended

## make bench-daemon: release build, then a release dlmd on a temporary socket and the scenarios against it
## (rtt, uncontended, pipelined, handoff, mixed) with dlmd on CPU 0 and dlmbench on CPU 0 ("same"), on CPU 1
## ("split"), and with neither pinned ("free"); then again in split and free with both sides busy-polling
## for 200 us after their I/O (dlmd --busy-poll 200, dlmbench --busy-poll 200). dlmd is stopped with
## SIGTERM. One JSON object per measurement (bench/RESULTS.md). BUILD_FLAGS (e.g. --scratch-path .build-x),
## DURATION, PLACEMENTS and SCENARIOS are passed on; BENCH_BUSY_POLL sets the second pass's window.
BUILD_FLAGS ?=
BENCH_BUSY_POLL ?= 200
bench-daemon:
	$(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --product dlmd
	$(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --product dlmbench
	BIN=$$($(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --show-bin-path) PLACEMENTS="$${PLACEMENTS:-same split free}" \
		bench/daemon-bench.sh
	BIN=$$($(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --show-bin-path) PLACEMENTS="$${PLACEMENTS:-split free}" \
		BUSY_POLL=$(BENCH_BUSY_POLL) bench/daemon-bench.sh

## make bench-stall: the work that is large by nature (bench/stall-bench.sh): exits, purges and forced releases
## of up to 1M locks and deadlock passes over up to 100k waiters, in the engine and against a release dlmd, with
## the longest pause another client saw (figures in bench/RESULTS.md).
bench-stall:
	$(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --product dlmd
	$(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --product dlmbench
	BIN=$$($(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --show-bin-path) bench/stall-bench.sh

## make bench-abuse: one client abusing a release dlmd (flooding without reading, 10,000 idle connections,
## lockspaces created in a loop) while another does lock+unlock pairs: its p50 / p99 / max (bench/abuse-bench.sh).
bench-abuse:
	$(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --product dlmd
	$(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --product dlmbench
	BIN=$$($(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --show-bin-path) bench/abuse-bench.sh

## make bench-durability: the raw LMDB commit rate, then durable grants against a release dlmd in each
## --durability mode (bench/durability-bench.sh; figures in bench/RESULTS.md).
bench-durability:
	bench/durability-bench.sh

## make bench-membership: group services' figures (bench/RESULTS.md): view formation and failover of 3, 5 and 9
## in-process nodes over loopback TCP, ordered messages per second of 3 nodes, and kill -9 of a real dlmd member
## to the survivors' new view.
bench-membership:
	$(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --product dlmd
	$(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --product dlmbench
	BIN=$$($(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --show-bin-path); \
	  $$BIN/dlmbench membership && $$BIN/dlmbench membership-kill --dlmd $$BIN/dlmd --rounds 20

## make bench-provider: a node failing to the survivors' primary view and to the end of its recovery, on the built-in
## provider and on corosync with its default token and a tuned one, three nodes in network namespaces (root, ip
## netns, corosync; bench/dlmbench/ProviderFailover.swift, figures in bench/RESULTS.md).
bench-provider:
	$(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --product dlmd
	$(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --product dlmbench
	BIN=$$($(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --show-bin-path); \
	  $$BIN/dlmbench provider-failover --dlmd $$BIN/dlmd --rounds 5

## make bench-cluster: the lock space across 3 real dlmd nodes on loopback (bench/dlmbench/ClusterScenarios.swift):
## lock+unlock on a remote master against a local one and the raw TCP round trip, a 3-node cluster's throughput
## against one node's, and recovery after kill -9 of the master of 10k, 100k and 1M locks held by survivors, with
## the longest pause of a client on untouched resources, and with --scenarios deadlock what deadlock detection across
## nodes costs and how soon a cycle's victim comes (figures in bench/RESULTS.md). CLUSTER_ARGS are passed on
## (e.g. CLUSTER_ARGS="--scenarios recovery --locks 10000").
CLUSTER_ARGS ?=
bench-cluster:
	$(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --product dlmd
	$(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --product dlmbench
	BIN=$$($(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --show-bin-path); \
	  $$BIN/dlmbench cluster --dlmd $$BIN/dlmd $(CLUSTER_ARGS)

## make bench-tls: what TLS costs a TCP client (bench/dlmbench/TLSScenario.swift): one client's lock+unlock pairs
## over a dlmd's Unix socket, plain TCP and TLS with a client certificate, side by side (bench/RESULTS.md).
bench-tls:
	$(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --product dlmd
	$(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --product dlmbench
	BIN=$$($(SWIFT) build $(RELEASE) $(BUILD_FLAGS) --show-bin-path); \
	  $$BIN/dlmbench tls --dlmd $$BIN/dlmd

## make libdlm: the libdlm-compatible C library (Sources/CDLM), threaded and _lt, with the upstream sonames,
## into .build/release. Plain C11 and pthreads, built by $(CC) alone (no SwiftPM, no Swift runtime).
CC ?= cc
CDLM_DIR := Sources/CDLM
CDLM_SRC := $(CDLM_DIR)/libdlm.c $(CDLM_DIR)/wire.c
CDLM_DEPS := $(CDLM_SRC) $(CDLM_DIR)/wire.h Makefile
CDLM_CFLAGS ?= -O2 -g
CDLM_FLAGS := -std=c11 -D_GNU_SOURCE -fPIC -fvisibility=hidden -Wall -Wextra -Werror -pthread
CDLM_OUT := .build/release
TRIPLE := $(shell uname -m)-unknown-linux-gnu

libdlm: deps $(CDLM_OUT)/libdlm.so $(CDLM_OUT)/libdlm_lt.so

# SwiftPM's layout: .build/release is a link to .build/<triple>/release; make it the same way if missing.
$(CDLM_OUT):
	@mkdir -p .build/$(TRIPLE)/release && ln -sfn $(TRIPLE)/release $(CDLM_OUT)

$(CDLM_OUT)/libdlm.so.3: $(CDLM_DEPS) $(CDLM_DIR)/libdlm.map | $(CDLM_OUT)
	$(CC) $(CDLM_CFLAGS) $(CDLM_FLAGS) -DDLM_THREADED=1 -shared -Wl,-soname,libdlm.so.3 \
		-Wl,--version-script=$(CDLM_DIR)/libdlm.map -Wl,-z,defs -o $@ $(CDLM_SRC)

$(CDLM_OUT)/libdlm_lt.so.3: $(CDLM_DEPS) $(CDLM_DIR)/libdlm_lt.map | $(CDLM_OUT)
	$(CC) $(CDLM_CFLAGS) $(CDLM_FLAGS) -DDLM_THREADED=0 -shared -Wl,-soname,libdlm_lt.so.3 \
		-Wl,--version-script=$(CDLM_DIR)/libdlm_lt.map -Wl,-z,defs -o $@ $(CDLM_SRC)

$(CDLM_OUT)/%.so: $(CDLM_OUT)/%.so.3
	ln -sfn $(notdir $<) $@

## make install PREFIX=/usr/local [DESTDIR=...]: the C libraries and their pkg-config files (libdlm.pc, libdlm_lt.pc;
## the header is Debian's libdlm.h, package libdlm-dev), then dlmd and dlmtool built in release ($(RELEASE)): dlmd
## in $(SBINDIR), dlmtool in $(BINDIR) (as dlm_controld and dlm_tool are packaged), the systemd unit in
## $(SYSTEMDUNITDIR) with ExecStart naming the installed dlmd, the tmpfiles entry for /run/dlm and /var/lib/dlm in
## $(TMPFILESDIR), and the OCF resource agent as $(OCFDIR)/swift-dlm/dlmd (ocf:swift-dlm:dlmd). Each directory can
## be overridden, e.g. SYSTEMDUNITDIR=/etc/systemd/system OCFDIR=/usr/lib/ocf/resource.d. docs/OPERATIONS.md,
## "Running under systemd and Pacemaker". make install-daemon installs the daemon's part from binaries already built
## in DAEMON_BIN (default: the release build's folder), with no build.
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
INCLUDEDIR ?= /usr/include
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
OCFDIR ?= $(PREFIX)/lib/ocf/resource.d
DAEMON_BIN ?= .build/release
install: install-libdlm release-daemon
	$(MAKE) --no-print-directory install-daemon

install-libdlm: libdlm
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PKGCONFIGDIR)
	for lib in libdlm libdlm_lt; do \
		install -m 0755 $(CDLM_OUT)/$$lib.so.3 $(DESTDIR)$(LIBDIR)/$$lib.so.3 && \
		ln -sfn $$lib.so.3 $(DESTDIR)$(LIBDIR)/$$lib.so && \
		sed -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' $(CDLM_DIR)/$$lib.pc.in \
			> $(DESTDIR)$(PKGCONFIGDIR)/$$lib.pc || exit 1; \
	done

release-daemon: deps
	$(SWIFT) build $(RELEASE) --product dlmd
	$(SWIFT) build $(RELEASE) --product dlmtool

# The unit names /usr/sbin/dlmd and the agent /usr/sbin/dlmd and /usr/bin/dlmtool by default: both are rewritten to
# the installed paths.
install-daemon:
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(SYSTEMDUNITDIR) $(DESTDIR)$(TMPFILESDIR) \
		$(DESTDIR)$(OCFDIR)/swift-dlm
	install -m 0755 $(DAEMON_BIN)/dlmd $(DESTDIR)$(SBINDIR)/dlmd
	install -m 0755 $(DAEMON_BIN)/dlmtool $(DESTDIR)$(BINDIR)/dlmtool
	sed -e 's|^ExecStart=/usr/sbin/dlmd |ExecStart=$(SBINDIR)/dlmd |' dist/systemd/dlmd.service \
		> $(DESTDIR)$(SYSTEMDUNITDIR)/dlmd.service
	chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/dlmd.service
	install -m 0644 dist/systemd/dlmd.tmpfiles.conf $(DESTDIR)$(TMPFILESDIR)/dlmd.conf
	sed -e 's|^OCF_RESKEY_binary_default=/usr/sbin/dlmd$$|OCF_RESKEY_binary_default=$(SBINDIR)/dlmd|' \
		-e 's|^OCF_RESKEY_dlmtool_default=/usr/bin/dlmtool$$|OCF_RESKEY_dlmtool_default=$(BINDIR)/dlmtool|' \
		dist/ocf/dlmd > $(DESTDIR)$(OCFDIR)/swift-dlm/dlmd
	chmod 0755 $(DESTDIR)$(OCFDIR)/swift-dlm/dlmd

## make bench-c: the C library's flood benchmark (bench/cflood.c) against a fresh release dlmd; prints JSON.
bench-c: libdlm
	$(SWIFT) build $(RELEASE) --product dlmd
	@bash bench/cflood.sh

clean:
	rm -rf .build .build-test .dlm
