#!/usr/bin/env bash
# tests/fuzz/run.sh [SECONDS] [-- LIBFUZZER ARGS...] -- build the libFuzzer
# harness tests/fuzz/fuzz_ops.c and run it for a bounded time.
#
# Build: build-fuzz/ (CMake, clang, TRIMALLOC_SANITIZE=address plus
# -fsanitize=fuzzer-no-link and asserts on, target trimalloc_prefixed),
# then the harness is linked with -fsanitize=fuzzer,address,undefined into
# build-fuzz/fuzz_ops. Incremental: a second run rebuilds only what changed.
#
# Run: first every seed of tests/fuzz/corpus/ alone in a fresh process
# (some are regressions that need a fresh heap), then
# -max_total_time=SECONDS (default 20) over a working corpus in
# build-fuzz/corpus/ seeded from tests/fuzz/corpus/ (which is never
# written); crash inputs go to build-fuzz/artifacts/. Exits non-zero if the
# build fails or the fuzzer finds a crash (libFuzzer's exit status).
# Arguments after -- go to libFuzzer (e.g. -jobs=2 -workers=2).
# Environment: FUZZ_CC (default clang), BUILD_FUZZ (default build-fuzz),
# ASAN_OPTIONS/UBSAN_OPTIONS appended to the defaults below.
#
# Reproduce a crash:  build-fuzz/fuzz_ops build-fuzz/artifacts/crash-<sha1>

set -u -o pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SECONDS_ARG=20
if [ $# -gt 0 ] && [ "$1" != -- ]; then SECONDS_ARG=$1; shift; fi
[ $# -gt 0 ] && [ "$1" = -- ] && shift
CC=${FUZZ_CC:-clang}
OUT=${BUILD_FUZZ:-$ROOT/build-fuzz}
JOBS=${TRIMALLOC_JOBS:-2}

case $SECONDS_ARG in
'' | *[!0-9]*) echo "usage: $0 [seconds] [-- libfuzzer args]" >&2; exit 2 ;;
esac
if ! command -v "$CC" >/dev/null 2>&1; then
    echo "FAIL: $CC not found (libFuzzer comes with clang: apt-get install clang libclang-rt-dev)"
    exit 1
fi

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
echo "building the fuzzer in $OUT with $CC"
cmake -S "$ROOT" -B "$OUT" -DCMAKE_C_COMPILER="$CC" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DTRIMALLOC_SANITIZE=address -DTRIMALLOC_BUILD_TESTS=OFF -DTRIMALLOC_BUILD_BENCH=OFF \
    -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link -DTM_DEBUG=1" >"$OUT.cmake.log" 2>&1 ||
    { cat "$OUT.cmake.log"; echo "FAIL: cmake configure"; exit 1; }
rm -f "$OUT.cmake.log"
cmake --build "$OUT" --target trimalloc_prefixed -j"$JOBS" >"$OUT/build.log" 2>&1 ||
    { tail -n 40 "$OUT/build.log"; echo "FAIL: building trimalloc_prefixed"; exit 1; }
# The harness: relinked when it or the library changed.
if [ ! -x "$OUT/fuzz_ops" ] || [ "$HERE/fuzz_ops.c" -nt "$OUT/fuzz_ops" ] ||
    [ "$OUT/libtrimalloc_prefixed.a" -nt "$OUT/fuzz_ops" ]; then
    # shellcheck disable=SC2086 # SAN is a list of flags
    "$CC" -g -O1 -Wall -Wextra -DTRIMALLOC_PREFIX=1 -I"$ROOT/include" -fsanitize=fuzzer $SAN \
        "$HERE/fuzz_ops.c" "$OUT/libtrimalloc_prefixed.a" -pthread -o "$OUT/fuzz_ops" ||
        { echo "FAIL: building the harness"; exit 1; }
fi

mkdir -p "$OUT/corpus" "$OUT/artifacts"
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
# Each seed first on its own, in a fresh process: the seeds include
# regressions that need a fresh heap to show deterministically.
for seed in "$HERE"/corpus/*; do
    if ! "$OUT/fuzz_ops" "$seed" >"$OUT/seed.log" 2>&1; then
        grep -A3 'CHECK FAILED' "$OUT/seed.log" || tail -n 30 "$OUT/seed.log"
        echo "FAIL: seed $(basename "$seed") fails on its own: $OUT/fuzz_ops $seed"
        exit 1
    fi
done
echo "seeds: $(find "$HERE/corpus" -type f | wc -l) pass one by one"
echo "fuzzing for ${SECONDS_ARG}s: $OUT/fuzz_ops $OUT/corpus $HERE/corpus"
"$OUT/fuzz_ops" -max_total_time="$SECONDS_ARG" -timeout=120 -max_len=4096 \
    -print_final_stats=1 -artifact_prefix="$OUT/artifacts/" "$@" \
    "$OUT/corpus" "$HERE/corpus" >"$OUT/fuzz.log" 2>&1
rc=$?
# Progress lines are many; show the start, the end and any report.
if [ $rc -eq 0 ]; then
    grep -E '^(INFO: Seed|INFO: Loaded|#[0-9]+ +(INITED|DONE))|^Done|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb|new_units_added)' "$OUT/fuzz.log"
    echo "PASS: no crash in ${SECONDS_ARG}s ($(find "$OUT/corpus" -type f | wc -l) inputs in the working corpus)"
else
    tail -n 60 "$OUT/fuzz.log"
    echo "FAIL: the fuzzer exited with status $rc; crash inputs: $(find "$OUT/artifacts" -type f -newer "$OUT/fuzz_ops" | tr '\n' ' ')"
fi
exit $rc
