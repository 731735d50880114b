#!/usr/bin/env bash
# make fuzz: builds the fuzzers (Fuzz/README.md) and runs each in turn, FUZZ_SECONDS seconds (default 60) or
# FUZZ_RUNS inputs each, keeping corpora in .build-fuzz/corpus/NAME and crashing inputs in
# .build-fuzz/crashes/NAME/. Exits non-zero if any fuzzer found a crash. FUZZERS chooses (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
SWIFT=${SWIFT:-swift}
SECONDS_EACH=${FUZZ_SECONDS:-60}
RUNS=${FUZZ_RUNS:-}
FUZZERS=${FUZZERS:-"client-frames peer-frames config wal c-wire"}
OUT=.build-fuzz

# -enable-testing: the write-ahead log's fuzzer builds well-formed records with the store's own (internal) coder.
for product in FuzzClientFrames FuzzPeerFrames FuzzConfig FuzzWriteAheadLog; do
	"$SWIFT" build -c release --package-path Fuzz --scratch-path "$OUT" -Xswiftc -sanitize=fuzzer \
		-Xswiftc -enable-testing --product "$product"
done
# The C library's decoder, with AddressSanitizer (lld: gold cannot link the sanitizers' runtime here).
clang -std=c11 -D_GNU_SOURCE -O1 -g -fuse-ld=lld -fsanitize=fuzzer,address -I Sources/CDLM \
	Fuzz/C/wire_fuzz.c Sources/CDLM/wire.c -o "$OUT/fuzz-c-wire"

failed=0
for name in $FUZZERS; do
	case $name in
	client-frames) binary=$OUT/release/FuzzClientFrames ;;
	peer-frames) binary=$OUT/release/FuzzPeerFrames ;;
	config) binary=$OUT/release/FuzzConfig ;;
	wal) binary=$OUT/release/FuzzWriteAheadLog ;;
	c-wire) binary=$OUT/fuzz-c-wire ;;
	*) echo "unknown fuzzer $name" >&2; exit 64 ;;
	esac
	mkdir -p "$OUT/corpus/$name" "$OUT/crashes/$name"
	limit=(-max_total_time="$SECONDS_EACH")
	[ -n "$RUNS" ] && limit=(-runs="$RUNS")
	echo "== $name: ${RUNS:+$RUNS inputs}${RUNS:-$SECONDS_EACH s}"
	# Swift's own backtracer would catch the trap before libFuzzer saves the input.
	if ! SWIFT_BACKTRACE=enable=no "$binary" "${limit[@]}" -print_final_stats=1 \
		-artifact_prefix="$OUT/crashes/$name/" "$OUT/corpus/$name" >"$OUT/$name.log" 2>&1; then
		echo "$name: CRASH, input saved in $OUT/crashes/$name/ (log: $OUT/$name.log)"
		failed=1
	fi
	grep -E 'stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb' "$OUT/$name.log" || true
done
exit $failed
