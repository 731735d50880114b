#!/usr/bin/env bash
# bench/before-after.sh: one dlmbench against two dlmd binaries, alternately, in one run (issue 11, §5: a single
# dlmd stays within 5 % of its earlier figures). BEFORE and AFTER are the two dlmd executables; BIN holds dlmbench.
# dlmd on CPU 0, dlmbench on CPU 1; ROUNDS rounds, each starting both daemons afresh; per measurement one line:
# which dlmd, the scenario, operations per second, and dlmd's own CPU per request (utime + stime from /proc).
# BENCH_BEFORE is the dlmbench run against BEFORE (default BIN's), for a BEFORE that speaks an earlier client
# protocol version.
set -euo pipefail
BIN=${BIN:-.build/release}
BEFORE=${BEFORE:?the earlier dlmd}
AFTER=${AFTER:-$BIN/dlmd}
BENCH_BEFORE=${BENCH_BEFORE:-$BIN/dlmbench}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-3}
command -v taskset >/dev/null || { echo "before-after: needs taskset (util-linux)" >&2; exit 1; }
dir=$(mktemp -d /tmp/dlmbench-ba.XXXXXX)
. "$(dirname "$0")/dlmd-lib.sh"
trap 'stop_dlmd >/dev/null; rm -rf "$dir"' EXIT
field() { { grep -o "\"$1\": [0-9.]*" || true; } | head -1 | sed 's/.*: //'; }
echo "# before: $BEFORE; after: $AFTER; dlmd on CPU 0, dlmbench on CPU 1; $(date -u '+%F %T UTC'); $(uptime)"
for round in $(seq "$ROUNDS"); do
    for which in before after; do
        daemon=$BEFORE bench=$BENCH_BEFORE
        [ "$which" = after ] && daemon=$AFTER bench=$BIN/dlmbench
        rm -rf "$dir"/*
        BIN_SAVED=$BIN
        BIN=$(dirname "$daemon")
        start_dlmd 0
        BIN=$BIN_SAVED
        for scenario in uncontended-raw pipelined; do
            case $scenario in
            uncontended-raw) arguments=(uncontended --clients 1 --api raw) rate_field=requests_per_sec ;;
            pipelined) arguments=(pipelined --depth 64) rate_field=ops_per_sec ;;
            esac
            out=$(taskset -c 1 "$bench" "${arguments[@]}" --socket "$dir/dlmd.sock" --duration "$DURATION")
            user=$(echo "$out" | field server_user_us_per_op)
            system=$(echo "$out" | field server_sys_us_per_op)
            rate=$(echo "$out" | field "$rate_field")
            echo "round $round $which $scenario requests_per_sec $rate dlmd_cpu_us_per_op $(echo "$user + $system" | bc)"
        done
        stop_dlmd >/dev/null
    done
done
