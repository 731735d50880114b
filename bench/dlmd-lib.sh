# Sourced by the benchmark scripts: one release dlmd at a time, on a private socket and data directory in $dir.
#   start_dlmd [taskset cpu list] [dlmd options...]   start it and wait for its "listening" line; $dlmd is its pid
#                                                     (at most START_WAIT tenths of a second, default 100)
#   stop_dlmd                                         SIGTERM, wait, and print its exit status
# Needs BIN (where dlmd is) and dir (a temporary directory); the socket is $dir/dlmd.sock.
dlmd=
stop_dlmd() {
    if [ -n "$dlmd" ] && kill -0 "$dlmd" 2>/dev/null; then
        kill -TERM "$dlmd"
        local status=0
        wait "$dlmd" || status=$?
        echo "# dlmd stopped by SIGTERM, exit status $status"
    fi
    dlmd=
}

start_dlmd() {
    local pin=()
    [ -n "${1:-}" ] && pin=(taskset -c "$1")
    shift || true
    rm -f "$dir/dlmd.log"
    "${pin[@]}" "$BIN/dlmd" --socket "$dir/dlmd.sock" --data-dir "$dir" --log-level warning "$@" \
        >"$dir/dlmd.log" 2>&1 &
    dlmd=$!
    for _ in $(seq "${START_WAIT:-100}"); do
        grep -q "listening" "$dir/dlmd.log" 2>/dev/null && break
        sleep 0.1
    done
    grep -q "listening" "$dir/dlmd.log" || { cat "$dir/dlmd.log" >&2; exit 1; }
}
