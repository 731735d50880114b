#!/usr/bin/env bash
# make test: builds every test target (and dlmd and dlmtool) once, in release with testing enabled, and runs the
# tests in three phases so that no test waits on a CPU that another test holds:
#   1. the randomized tests (the reference model, the group services simulation, the decoder fuzzing, random
#      lock traffic across several nodes' lock services): CPU-bound and deterministic by seed, in parallel;
#   2. every other Swift test, one at a time: real dlmd processes, clusters and their timeouts get the machine
#      to themselves, and each test's time is its own;
#   3. the C library's tests (Tests/CDLMTests/run.sh) against the same dlmd, then with holders on two nodes.
# Then a summary: Swift tests passed / failed / skipped, C checks passed / failed, the ten slowest tests.
#
# Environment: DLM_MODEL_OPS (default 1.6 million), DLM_SIM_SEEDS (default 1000), DLM_MASTERING_SEEDS (default
# 800), DLM_RECOVERY_SEEDS (default 800), DLM_DEADLOCK_SEEDS (default 200), DLM_CHURN_SEEDS (default 600),
# DLM_COROSYNC_SEEDS (default 300), DLM_FORCED_SEEDS (default 400), DLM_TIMEOUT_SEEDS (default 400),
# DLM_LARGE_SEEDS (default 400: crashes and restarts on six or seven nodes), DLM_STACK_SEEDS (default 200: group
# services and lock services in one simulation),
# SWIFT, and TEST_SCRATCH (the build folder, default .build-test: a release build of its own, so that `make
# bench`'s .build/release is not rebuilt with other flags).
set -uo pipefail
cd "$(dirname "$0")/.."
SWIFT=${SWIFT:-swift}
SCRATCH=${TEST_SCRATCH:-.build-test}
# -num-threads 2: each module's LLVM code generation on two threads (the optimizer's SIL passes stay whole-module).
# SwiftPM compiles the test modules one after another, so this is where the second CPU helps: a fresh build took
# 508 s instead of 538 s.
FLAGS=(-c release -Xswiftc -enable-testing -Xswiftc -num-threads -Xswiftc 2 --scratch-path "$SCRATCH")
RESULTS=$SCRATCH/test-results
export DLM_MODEL_OPS=${DLM_MODEL_OPS:-1600000}
export DLM_SIM_SEEDS=${DLM_SIM_SEEDS:-1000}
export DLM_MASTERING_SEEDS=${DLM_MASTERING_SEEDS:-800}
export DLM_RECOVERY_SEEDS=${DLM_RECOVERY_SEEDS:-800}
export DLM_DEADLOCK_SEEDS=${DLM_DEADLOCK_SEEDS:-200}
export DLM_CHURN_SEEDS=${DLM_CHURN_SEEDS:-600}
export DLM_FORCED_SEEDS=${DLM_FORCED_SEEDS:-400}
export DLM_TIMEOUT_SEEDS=${DLM_TIMEOUT_SEEDS:-400}
export DLM_LARGE_SEEDS=${DLM_LARGE_SEEDS:-400}
export DLM_STACK_SEEDS=${DLM_STACK_SEEDS:-400}
RANDOMIZED='DLMCoreTests\.ModelTests|GroupServicesTests\.SimulationTests|GroupServicesTests\.CorosyncMemberRandomTests|DLMWireTests\.DecoderFuzzTests|DLMClusterTests\.MasteringRandomTests|DLMClusterTests\.RecoveryRandomTests|DLMClusterTests\.DeadlockAcrossNodesTests|DLMClusterTests\.LockspaceChurnTests|DLMClusterTests\.FullStackTests'
started=$SECONDS

mkdir -p "$SCRATCH"
rm -rf "$RESULTS"
mkdir -p "$RESULTS"

echo "== build (release, testing enabled, $SCRATCH)"
# The tests and the programs they run (dlmd, dlmtool), in one build of everything (dlmbench too, which no test
# runs, for little more): SwiftPM then compiles the modules that only dlmd needs (its HTTP, metrics, lifecycle and
# argument modules, DLMNode) beside the test modules on the second CPU. Built one product after another, they took
# about 90 s more after the tests' 480 s.
"$SWIFT" build --build-tests "${FLAGS[@]}" 2>&1 | tee -a "$RESULTS/build.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
if grep -E '^/.*/(Sources|Tests|bench|Tools)/.*: warning:' "$RESULTS/build.log"; then
  echo "error: the build has warnings (see above); warnings are bugs here"
  exit 1
fi
BIN=$("$SWIFT" build "${FLAGS[@]}" --show-bin-path)
# Each part's wall time, so that a slow run shows where its minutes went.
part_started=$started
part_done() {
  echo "== $1: $((SECONDS - part_started)) s"
  part_started=$SECONDS
}
part_done "build"

# A test that ran past its time limit cannot stop the dlmd processes it started: they are killed after each phase
# (and named), so that they load neither the phases after it nor the machine.
stop_leftover_daemons() {
  local left
  left=$(pgrep -f "^$BIN/dlmd " || true)
  [ -z "$left" ] && return
  echo "warning: dlmd processes left running by the tests above (killed): $(echo $left)"
  kill -KILL $left 2>/dev/null || true
}

# The tests' folders (dlmd's data and sockets, stores, certificates, corosync's folders) go under one folder of this
# run: removed at the end when everything passed, kept (and named) otherwise.
# Mode 1777 as /tmp's: tests run clients as other users, which reach dlmd's sockets through it.
TEST_TMP=$(mktemp -d /tmp/dlm-make-test.XXXXXX)
chmod 1777 "$TEST_TMP"
export TMPDIR=$TEST_TMP

status=0
echo "== phase 1: randomized tests, in parallel (DLM_MODEL_OPS=$DLM_MODEL_OPS DLM_SIM_SEEDS=$DLM_SIM_SEEDS" \
  "DLM_MASTERING_SEEDS=$DLM_MASTERING_SEEDS DLM_RECOVERY_SEEDS=$DLM_RECOVERY_SEEDS DLM_DEADLOCK_SEEDS=$DLM_DEADLOCK_SEEDS DLM_CHURN_SEEDS=$DLM_CHURN_SEEDS DLM_FORCED_SEEDS=$DLM_FORCED_SEEDS DLM_TIMEOUT_SEEDS=$DLM_TIMEOUT_SEEDS DLM_LARGE_SEEDS=$DLM_LARGE_SEEDS DLM_STACK_SEEDS=$DLM_STACK_SEEDS)"
"$SWIFT" test --skip-build "${FLAGS[@]}" --filter "$RANDOMIZED" --xunit-output "$RESULTS/randomized.xml" \
  2>&1 | tee "$RESULTS/randomized.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
stop_leftover_daemons
part_done "phase 1"

echo "== phase 2: every other Swift test, one at a time"
"$SWIFT" test --skip-build "${FLAGS[@]}" --skip "$RANDOMIZED" --no-parallel --xunit-output "$RESULTS/serial.xml" \
  2>&1 | tee "$RESULTS/serial.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
stop_leftover_daemons
part_done "phase 2"

echo "== phase 3: the C library's tests"
make --no-print-directory libdlm || status=1
DLMD=$BIN/dlmd bash Tests/CDLMTests/run.sh 2>&1 | tee "$RESULTS/c.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
part_done "phase 3"

python3 scripts/test-summary.py "$RESULTS" $((SECONDS - started)) || status=1
stop_leftover_daemons
if [ "$status" -eq 0 ]; then
  rm -rf "$TEST_TMP"
else
  echo "the tests' folders are kept in $TEST_TMP"
fi
exit $status
