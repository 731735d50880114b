#!/usr/bin/env bash
# make bench-abuse: a release dlmd on a temporary socket (neither side pinned, as in a plain deployment) and one
# client abusing it while another does lock+unlock pairs: the pairs' p50 / p99 / max latency, with nobody else
# (baseline), with a client that floods PINGs without reading the replies, with 10,000 idle connections, and with
# a client that creates and releases lockspaces in a loop (dlmbench stall-abuse). One JSON object per case.
#
# Environment: BIN (the directory of dlmd and dlmbench, default .build/release), DURATION (seconds a case, 5),
# IDLE (idle connections, 10000).
set -euo pipefail
BIN=${BIN:-.build/release}
DURATION=${DURATION:-5}
IDLE=${IDLE:-10000}

dir=$(mktemp -d /tmp/dlmbench-abuse.XXXXXX)
. "$(dirname "$0")/dlmd-lib.sh"
trap 'stop_dlmd; rm -rf "$dir"' EXIT

# Room for the idle connections, the prober and the abuser (each connection is a file descriptor on both sides).
ulimit -n $((IDLE + 1024)) 2>/dev/null || true
start_dlmd "" --max-connections $((IDLE + 100))
echo "# dlmd (output pause 1024 KiB), neither side pinned; $(nproc) CPUs; $(uptime)"
"$BIN/dlmbench" stall-abuse --socket "$dir/dlmd.sock" --duration "$DURATION" --idle "$IDLE"
