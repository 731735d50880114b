#!/usr/bin/env bash
# make bench-c: the C library's flood benchmark (bench/cflood.c) against a release dlmd of its own.
#
# For each placement (REFERENCE.md §10) -- "same": dlmd and the client on CPU 0; "split": dlmd on CPU 0, the
# client on CPU 1 -- starts dlmd, waits for its "listening on" line, and runs cflood linked with libdlm
# (ASTs on the library's thread) and with libdlm_lt (poll + dlm_dispatch). Each run prints one JSON object.
#
# Environment: CFLOOD_ARGS (default "-n 200000 -o 64 -r 5"), DLMD (default: the release build's dlmd),
# CC (default cc).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LIB=$ROOT/.build/release
CC=${CC:-cc}
DLMD=${DLMD:-$(swift build -c release --show-bin-path)/dlmd}
read -r -a ARGS <<<"${CFLOOD_ARGS:--n 200000 -o 64 -r 5}"
WORK=$(mktemp -d /tmp/cflood.XXXXXX)
DLMD_PID=
cleanup() {
  if [ -n "$DLMD_PID" ]; then
    kill "$DLMD_PID" 2>/dev/null || true
    wait "$DLMD_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

FLAGS=(-std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -pthread)
"$CC" "${FLAGS[@]}" -o "$WORK/cflood" bench/cflood.c -L"$LIB" -Wl,-rpath,"$LIB" -ldlm
"$CC" "${FLAGS[@]}" -DFLOOD_LT -o "$WORK/cflood_lt" bench/cflood.c -L"$LIB" -Wl,-rpath,"$LIB" -ldlm_lt

if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  placements=(same split)
else
  placements=(unpinned)
fi

for placement in "${placements[@]}"; do
  case $placement in
    same) server=(taskset -c 0) client=(taskset -c 0) ;;
    split) server=(taskset -c 0) client=(taskset -c 1) ;;
    *) server=() client=() ;;
  esac
  rm -rf "$WORK/data" "$WORK/out"
  mkdir -p "$WORK/data"
  mkfifo "$WORK/out"
  "${server[@]}" "$DLMD" --socket "$WORK/s.sock" --data-dir "$WORK/data" --log-level warning >"$WORK/out" \
    2>"$WORK/err" &
  DLMD_PID=$!
  exec 3<"$WORK/out"
  while IFS= read -r line <&3; do
    case "$line" in *"listening on"*) break ;; esac
  done
  cat <&3 >/dev/null &
  for flavour in cflood cflood_lt; do
    DLM_SOCKET=$WORK/s.sock "${client[@]}" "$WORK/$flavour" "${ARGS[@]}" -p "$placement"
  done
  kill "$DLMD_PID"
  wait "$DLMD_PID" || true
  DLMD_PID=
  exec 3<&-
done
