#!/usr/bin/env bash
# make bench-stall: the work that is large by nature, against a release dlmd on a temporary socket (neither
# side pinned, as in a plain deployment), while another client does lock+unlock pairs and records the longest:
#   engine-bulk     the engine alone: exits, purges, forced releases of 10k / 100k / 1M locks in slices, and
#                   deadlock passes over 1k / 10k / 100k waiters (time, slices, longest slice);
#   stall-exit      a client with N locks exits; N persistent locks orphaned then purged; a lockspace of N
#                   locks released with force: the time until they are gone, the longest pause another client saw;
#   stall-deadlock  N waiters (each its own transaction) on 1 and 1,000 resources with deadlock passes due:
#                   dlmd's CPU spent searching, the longest pause, and the time to a cycle's victim;
#   restart         a client leaves N persistent locks orphaned, dlmd stops (SIGTERM) and starts again on the
#                   same data directory: the time from its start to its "listening" line (the store loaded, every
#                   lock restored and written back), before it serves anyone.
# dlmd is stopped with SIGTERM. One JSON object per measurement.
#
# Environment: BIN (the directory of dlmd and dlmbench, default .build/release), LOCKS, WAITERS, DURATION.
set -euo pipefail
BIN=${BIN:-.build/release}
LOCKS=${LOCKS:-10000,100000,1000000}
WAITERS=${WAITERS:-1000,10000,100000}
DURATION=${DURATION:-4}

dir=$(mktemp -d /tmp/dlmbench-stall.XXXXXX)
. "$(dirname "$0")/dlmd-lib.sh"
trap 'stop_dlmd; rm -rf "$dir"' EXIT

echo "# engine alone; $(uptime)"
"$BIN/dlmbench" engine-bulk --locks "$LOCKS" --waiters "$WAITERS"

start_dlmd ""
echo "# dlmd (deadlock wait 1 s, durability batch), neither side pinned; $(uptime)"
"$BIN/dlmbench" stall-exit --socket "$dir/dlmd.sock" --locks "$LOCKS"
"$BIN/dlmbench" stall-deadlock --socket "$dir/dlmd.sock" --waiters "$WAITERS" --resources 1,1000 --duration "$DURATION"
stop_dlmd

base=$dir
for count in ${LOCKS//,/ }; do
    dir=$base/restart-$count
    mkdir -p "$dir"
    start_dlmd ""
    "$BIN/dlmbench" stall-exit --socket "$dir/dlmd.sock" --locks "$count" --cases orphan
    stop_dlmd
    started=$(date +%s%N)
    START_WAIT=600 start_dlmd ""
    ready=$(date +%s%N)
    echo "{\"scenario\": \"restart\", \"locks\": $count, \"start_to_listening_ms\": $(((ready - started) / 1000000)), \"what\": \"dlmd start on a store of N orphaned persistent locks until it listens (polled every 0.1 s)\"}"
    stop_dlmd
    rm -rf "$dir"
done
dir=$base
