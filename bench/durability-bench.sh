#!/usr/bin/env bash
# The store's benchmark (issue: recoverable lock state): the raw LMDB commit rate on this disk, then the
# durable-grant scenario (and, with `batch`, lock+unlock pairs on a resource held by many persistent locks)
# against a release dlmd in each durability mode, same placement for all (dlmd on
# CPU 0, clients on CPU 1). Prints one JSON object a line. Usage: [BIN=DIR] bench/durability-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# BIN: a folder holding release builds of dlmd and dlmbench (default: build them here).
if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  swift build -c release --product dlmd >/dev/null
  swift build -c release --product dlmbench >/dev/null
  bin=$(swift build -c release --show-bin-path)
fi
work=$(mktemp -d /tmp/dlm-durability.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "{\"machine\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\", \"cpus\": $(nproc), \"date\": \"$(date -u +%FT%TZ)\", \"load\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"placement\": \"dlmd taskset -c 0, clients taskset -c 1\"}"
taskset -c 1 "$bin/dlmbench" lmdb --dir "$work" --seconds 2
for mode in none batch sync; do
  dir="$work/$mode"
  mkdir -p "$dir"
  taskset -c 0 "$bin/dlmd" --socket "$dir/s.sock" --data-dir "$dir" --durability "$mode" --log-level error \
    > "$dir/out" 2>&1 &
  pid=$!
  timeout 60 grep -q -m1 "listening on" <(tail -F "$dir/out" 2>/dev/null) || { cat "$dir/out"; exit 1; }
  echo "{\"durability\": \"$mode\"}"
  taskset -c 1 "$bin/dlmbench" durable --socket "$dir/s.sock" --clients 1,50,64 --seconds 3
  taskset -c 1 "$bin/dlmbench" durable --socket "$dir/s.sock" --clients 64 --seconds 3 --release no
  # A change to one of many persistent locks on a resource writes one lock record (store schema 3).
  if [ "$mode" = batch ]; then
    taskset -c 1 "$bin/dlmbench" durable-shared --socket "$dir/s.sock" --holders 0,1000,10000,100000 --seconds 3
  fi
  kill -TERM "$pid"
  wait "$pid" || true
done
