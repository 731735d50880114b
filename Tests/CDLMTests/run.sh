#!/usr/bin/env bash
# The C library's tests (make test-c; make test runs them after the Swift tests).
#
# Builds dlmd (SwiftPM) and the test programs (cc, against Debian's libdlm.h and the libraries that
# `make libdlm` put in .build/release), starts one dlmd on a private socket and data directory, waits for its
# "listening on" line, runs every program and counts their "ok" / "not ok" lines. The last line is
# "N passed, M failed"; the exit status is 1 if anything failed.
#
# Environment: CC (default cc), SWIFT (default swift), DLMD (a dlmd to test against, else one is built), DLM_SCRATCH
# (a SwiftPM --scratch-path for the dlmd built here), CDLM_VALGRIND=0 to skip the run under valgrind.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
LIB=$ROOT/.build/release
TESTS=$ROOT/Tests/CDLMTests
CC=${CC:-cc}
SWIFT=${SWIFT:-swift}
SCRATCH=()
[ -n "${DLM_SCRATCH:-}" ] && SCRATCH=(--scratch-path "$DLM_SCRATCH")
CFLAGS=(-std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Werror -pthread)
WORK=$(mktemp -d /tmp/cdlm-tests.XXXXXX)
# Other users reach the sockets inside (processes.c runs holders as uid 1000 and 1001; the sockets are 0666).
chmod 711 "$WORK"
passed=0
failed=0
DLMD_PID=

cleanup() {
  if [ -n "$DLMD_PID" ]; then
    kill "$DLMD_PID" 2>/dev/null
    wait "$DLMD_PID" 2>/dev/null
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

fail_setup() {
  echo "not ok - setup: $*"
  echo "0 passed, 1 failed"
  exit 1
}

for lib in libdlm.so.3 libdlm_lt.so.3; do
  [ -f "$LIB/$lib" ] || fail_setup "$LIB/$lib is missing (run make libdlm)"
done

# The programs. LINK_* link against our libraries; sysbin links against the system's libdlm.so.3.
OURS=(-L"$LIB" -Wl,-rpath,"$LIB")
build() { # name sources... -- flags...
  local name=$1
  shift
  if ! "$CC" "${CFLAGS[@]}" -o "$WORK/$name" "$@" 2>"$WORK/$name.cc.log"; then
    cat "$WORK/$name.cc.log"
    fail_setup "cannot compile $name"
  fi
}
build vectors "$TESTS/vectors.c" "$ROOT/Sources/CDLM/wire.c"
build robust "$TESTS/robust.c" "$ROOT/Sources/CDLM/wire.c" "${OURS[@]}" -ldlm
build robust_lt -DTEST_LT "$TESTS/robust.c" "$ROOT/Sources/CDLM/wire.c" "${OURS[@]}" -ldlm_lt
build lib_tests "$TESTS/lib_tests.c" "${OURS[@]}" -ldlm
build lib_tests_lt -DTEST_LT "$TESTS/lib_tests.c" "${OURS[@]}" -ldlm_lt
build processes "$TESTS/processes.c" "${OURS[@]}" -ldlm
build processes_lt -DTEST_LT "$TESTS/processes.c" "${OURS[@]}" -ldlm_lt
build threads "$TESTS/threads.c" "${OURS[@]}" -ldlm
build threads_lt -DTEST_LT "$TESTS/threads.c" "${OURS[@]}" -ldlm_lt
# An unmodified program built against the system's libdlm, which swift-dlm's library replaces at run time.
SYSLIB=/usr/lib/$(uname -m)-linux-gnu
build sysbin "$TESTS/sysbin.c" -L"$SYSLIB" -ldlm
if ! readelf -d "$WORK/sysbin" | grep -q 'NEEDED.*libdlm.so.3'; then
  fail_setup "sysbin does not need libdlm.so.3"
fi

# dlmd ($DLMD, else built here), on a private socket; deadlock searches after 0.2 s of waiting.
if [ -z "${DLMD:-}" ]; then
  if ! "$SWIFT" build --product dlmd "${SCRATCH[@]}" >"$WORK/swift-build.log" 2>&1; then
    tail -20 "$WORK/swift-build.log"
    fail_setup "cannot build dlmd"
  fi
  DLMD=$("$SWIFT" build --show-bin-path "${SCRATCH[@]}")/dlmd
fi
[ -x "$DLMD" ] || fail_setup "no dlmd at $DLMD"

# Starts dlmd as NAME (its standard output through the FIFO $WORK/NAME.out, its errors in $WORK/NAME.err) and sets
# STARTED_PID. The FIFO is opened for reading and writing first (opening one only to write waits for a reader, and
# the nodes of a cluster must all start before any says it recovered), then for reading (OUT_FD[NAME]).
declare -A OUT_FD BOTH_FD
launch_dlmd() { # name dlmd-arguments...
  local name=$1 both out
  shift
  mkfifo "$WORK/$name.out"
  exec {both}<>"$WORK/$name.out"
  "$DLMD" --deadlock-wait 0.2 --log-level warning "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  STARTED_PID=$!
  exec {out}<"$WORK/$name.out"
  OUT_FD[$name]=$out
  BOTH_FD[$name]=$both
}
# Waits until dlmd NAME prints a line containing TEXT (a hang detector gives up after 60 s without a line), then
# drains the rest of its output, which ends with it.
await_line() { # name text
  local name=$1 text=$2 out=${OUT_FD[$1]} both=${BOTH_FD[$1]} line seen=
  while IFS= read -r -t 60 line <&"$out"; do
    case "$line" in *"$text"*) seen=1 && break ;; esac
  done
  [ -n "$seen" ] || { cat "$WORK/$name.err"; fail_setup "$name did not say \"$text\""; }
  exec {both}>&-
  cat <&"$out" >/dev/null &
}

mkdir -p "$WORK/data"
export DLM_SOCKET=$WORK/s.sock
launch_dlmd dlmd --socket "$DLM_SOCKET" --socket-mode 0666 --data-dir "$WORK/data"
DLMD_PID=$STARTED_PID
await_line dlmd "listening on"

# Runs one program; its "ok" / "not ok" lines count, and a crash or a failing exit status counts once more.
run() { # label command...
  local label=$1
  shift
  local out=$WORK/$label.out status ok notok
  timeout 300 "$@" >"$out" 2>&1
  status=$?
  cat "$out"
  ok=$(grep -c '^ok - ' "$out")
  notok=$(grep -c '^not ok - ' "$out")
  passed=$((passed + ok))
  failed=$((failed + notok))
  if [ "$status" -ne 0 ] && [ "$notok" -eq 0 ]; then
    echo "not ok - $label: exit status $status"
    failed=$((failed + 1))
  fi
}

run vectors "$WORK/vectors" "$ROOT/Protocol/vectors"
run robust "$WORK/robust"
run robust_lt "$WORK/robust_lt"
run lib_tests "$WORK/lib_tests"
run lib_tests_lt "$WORK/lib_tests_lt"
run processes "$WORK/processes"
run processes_lt "$WORK/processes_lt"
run threads "$WORK/threads"
run threads_lt "$WORK/threads_lt"
# The system-linked binary, with our libraries first on the path.
run sysbin env LD_LIBRARY_PATH="$LIB" "$WORK/sysbin" "$LIB"

# One run under valgrind: no leaks, no invalid accesses, in the threaded library.
if [ "${CDLM_VALGRIND:-1}" != 0 ] && command -v valgrind >/dev/null; then
  timeout 600 valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
    "$WORK/lib_tests" >"$WORK/valgrind.out" 2>&1
  status=$?
  if [ "$status" -eq 0 ] && ! grep -q '^not ok' "$WORK/valgrind.out"; then
    echo "ok - valgrind: lib_tests [threaded] without errors or leaks"
    passed=$((passed + 1))
  else
    grep -v '^ok' "$WORK/valgrind.out" | head -60
    echo "not ok - valgrind: lib_tests [threaded] (exit status $status)"
    failed=$((failed + 1))
  fi
else
  echo "# valgrind is not installed (or CDLM_VALGRIND=0): the run under valgrind is skipped"
fi

if ! kill -0 "$DLMD_PID" 2>/dev/null; then
  echo "not ok - dlmd died during the tests"
  cat "$WORK/dlmd.err"
  failed=$((failed + 1))
fi

# The same cases with holders on two nodes: two dlmd of one cluster (loopback, short timeouts), every second handle
# a case opens on node 2 ($DLM_SOCKET_OTHER), the processes it spawns on node 1 ($DLM_SOCKET_NODE names it).
CLUSTER_PIDS=()
cleanup_cluster() {
  for pid in "${CLUSTER_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${CLUSTER_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  CLUSTER_PIDS=()
}
trap 'cleanup_cluster; cleanup' EXIT
port=$((20000 + RANDOM % 20000))
"$(dirname "$DLMD")/dlmtool" keygen "$WORK/authkey" >/dev/null || fail_setup "dlmtool keygen failed"
cat >"$WORK/cluster.toml" <<EOF
[cluster]
name = "cdlm-tests"
key_file = "$WORK/authkey"

[quorum]
expected_votes = 2

[fencing]
command = "/bin/true"

[timeouts]
heartbeat_ms = 100
suspect_ms = 800
view_change_ms = 600
flush_ms = 300

[[node]]
id = 1
address = "127.0.0.1:$port"

[[node]]
id = 2
address = "127.0.0.1:$((port + 1))"
EOF
chmod 600 "$WORK/cluster.toml"
for node in 1 2; do
  mkdir -p "$WORK/node$node"
  launch_dlmd "node$node" --config "$WORK/cluster.toml" --node-id "$node" --socket "$WORK/node$node/s.sock" \
    --socket-mode 0666 --data-dir "$WORK/node$node"
  CLUSTER_PIDS+=("$STARTED_PID")
done
# Each serves once it has recovered the first view of both.
for node in 1 2; do await_line "node$node" "recovery done"; done
export DLM_SOCKET=$WORK/node1/s.sock DLM_SOCKET_OTHER=$WORK/node2/s.sock DLM_SOCKET_NODE=1
for program in lib_tests lib_tests_lt processes processes_lt threads threads_lt; do
  run "$program-2nodes" "$WORK/$program"
done
for node in 1 2; do
  if ! kill -0 "${CLUSTER_PIDS[$((node - 1))]}" 2>/dev/null; then
    echo "not ok - cluster node $node died during the tests"
    cat "$WORK/node$node.err"
    failed=$((failed + 1))
  fi
done
cleanup_cluster

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
