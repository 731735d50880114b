#!/usr/bin/env bash
# make bench-daemon: starts a release dlmd on a temporary socket, pinned to CPU $SERVER_CPU, runs the
# dlmbench scenarios against it in up to three placements, and stops it cleanly (SIGTERM):
#   same:  dlmbench on CPU $SERVER_CPU too (client and server share one vCPU)
#   split: dlmbench on CPU $CLIENT_CPU (client and server on different vCPUs)
#   free:  neither dlmd nor dlmbench pinned (the kernel places them; dlmd is started unpinned for this one)
# Each scenario prints one JSON object per measurement; `rtt` (the raw socket round trip) runs first in each
# placement, with its echo thread on the server's CPU, so that lock+unlock compares with it in the same run.
# Scenarios: rtt (rtt-process: the echo server in a child process); uncontended (1 and 50 clients, one
# connection each, callback API); uncontended-raw (1 client without DLMClient: a blocking socket);
# uncontended-async / -pool (1 client, the async API in a task on the connection's event loop / on the
# cooperative pool); uncontended-shared (50 clients on one connection); pipelined (256 in flight on one
# connection); handoff (8 clients, EX on one resource); mixed (50 clients, Zipf, 90 % PR / 10 % EX).
#
# Environment: BIN (the directory of dlmd and dlmbench, default .build/release), SERVER_CPU (0), CLIENT_CPU
# (1), DURATION (seconds per measurement, 3), PLACEMENTS ("same split"; also "free"), SCENARIOS (default:
# all), BUSY_POLL (microseconds; dlmd --busy-poll and dlmbench --busy-poll for every scenario, rtt included:
# both sides poll after their I/O; default 0, off).
set -euo pipefail
BIN=${BIN:-.build/release}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
DURATION=${DURATION:-3}
PLACEMENTS=${PLACEMENTS:-same split}
BUSY_POLL=${BUSY_POLL:-0}
SCENARIOS=${SCENARIOS:-rtt uncontended uncontended-raw uncontended-async uncontended-pool uncontended-shared pipelined handoff mixed}
command -v taskset >/dev/null || { echo "bench-daemon: needs taskset (util-linux)" >&2; exit 1; }

dir=$(mktemp -d /tmp/dlmbench.XXXXXX)
socket=$dir/dlmd.sock
. "$(dirname "$0")/dlmd-lib.sh"
trap 'stop_dlmd; rm -rf "$dir"' EXIT
# Starts dlmd pinned to $1 (a CPU list, or "" for unpinned).
start() { start_dlmd "$1" --busy-poll "$BUSY_POLL"; }
stop() { stop_dlmd; }

pinned=
common=(--socket "$socket" --duration "$DURATION" --busy-poll "$BUSY_POLL")
for placement in $PLACEMENTS; do
    case $placement in
    same) cpu=$SERVER_CPU server=$SERVER_CPU ;;
    split) cpu=$CLIENT_CPU server=$SERVER_CPU ;;
    free) cpu= server= ;;
    *) echo "bench-daemon: unknown placement $placement" >&2; exit 1 ;;
    esac
    # dlmd is restarted only when its pinning changes (free after same or split).
    if [ -z "$dlmd" ] || [ "${server:-any}" != "$pinned" ]; then
        stop
        start "$server"
        pinned=${server:-any}
    fi
    echo "# placement $placement: dlmd on CPU ${server:-any}, dlmbench on CPU ${cpu:-any}, busy poll $BUSY_POLL us; $(uptime)"
    run() { if [ -n "$cpu" ]; then taskset -c "$cpu" "$BIN/dlmbench" "$@"; else "$BIN/dlmbench" "$@"; fi; }
    echo_cpu=()
    [ -n "$server" ] && echo_cpu=(--echo-cpu "$server")
    for scenario in $SCENARIOS; do
        case $scenario in
        rtt) run rtt "${echo_cpu[@]}" --duration "$DURATION" --busy-poll "$BUSY_POLL" ;;
        rtt-process) run rtt "${echo_cpu[@]}" --duration "$DURATION" --busy-poll "$BUSY_POLL" --echo process ;;
        uncontended) run uncontended "${common[@]}" --clients 1,50 ;;
        uncontended-shared) run uncontended "${common[@]}" --clients 50 --connections 1 ;;
        uncontended-raw) run uncontended "${common[@]}" --clients 1 --api raw ;;
        uncontended-async) run uncontended "${common[@]}" --clients 1 --api async ;;
        uncontended-pool) run uncontended "${common[@]}" --clients 1 --api pool ;;
        pipelined) run pipelined "${common[@]}" --depth 256 ;;
        handoff) run handoff "${common[@]}" --clients 8 ;;
        mixed) run mixed "${common[@]}" --clients 50 ;;
        *) echo "bench-daemon: unknown scenario $scenario" >&2; exit 1 ;;
        esac
    done
done
