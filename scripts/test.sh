#!/usr/bin/env bash
# scripts/test.sh -- the one command that runs every test of trimalloc.
#
#   deps           install (as root) or name the packages the tests need
#   release        Release build in build/ (build/libtrimalloc.so), then ctest
#   asan           ASan+UBSan build in build-asan/ (prefixed library), ctest
#   tsan           TSan build in build-tsan/ (prefixed library), ctest
#   preload        real programs under LD_PRELOAD=build/libtrimalloc.so
#                  (tests/preload/run.sh)
#   bad input, server, valgrind   tests/bad_input/run.sh, tests/preload/server.sh,
#                  tests/valgrind/run.sh (with preload); fuzz: tests/fuzz/run.sh 20
#                  (with asan); see docs/reliability.md
#
# Each build and each test run is a section; the script ends with a table of
# sections and, alone on the last line, "N passed, M failed". It exits
# non-zero if any section failed.
#
# Options:
#   --quick        skip the sanitizer builds
#   --no-asan      skip the ASan+UBSan build
#   --no-tsan      skip the TSan build
#   --no-preload   skip the LD_PRELOAD tests
#   --no-deps      do not check or install packages
#   -j N           parallel jobs (default 2, or env TRIMALLOC_JOBS)
# Environment: TRIMALLOC_SAN_CC picks the sanitizer compiler (default: clang if
# it builds and runs a sanitized program, else gcc); ASAN_OPTIONS,
# UBSAN_OPTIONS and TSAN_OPTIONS are appended to this script's defaults, so yours win.

set -u -o pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$TM_ROOT" || exit 1

DO_DEPS=1 DO_ASAN=1 DO_TSAN=1 DO_PRELOAD=1
while [ $# -gt 0 ]; do
    case $1 in
    --quick) DO_ASAN=0 DO_TSAN=0 ;;
    --no-asan) DO_ASAN=0 ;;
    --no-tsan) DO_TSAN=0 ;;
    --no-preload) DO_PRELOAD=0 ;;
    --no-deps) DO_DEPS=0 ;;
    -j) TM_JOBS=${2:?-j needs a number}; shift ;;
    -j*) TM_JOBS=${1#-j} ;;
    -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
case $TM_JOBS in
'' | *[!0-9]* | 0) echo "-j needs a positive number, not '$TM_JOBS'" >&2; exit 2 ;;
esac

# Sanitizer runtime options. Our defaults come first so the caller's win.
ASAN_DEFAULTS="halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:print_summary=1"
UBSAN_DEFAULTS="halt_on_error=1:print_stacktrace=1:print_summary=1"
TSAN_DEFAULTS="halt_on_error=1:second_deadlock_stack=1:print_summary=1"

CTEST_ARGS=(--output-on-failure --no-tests=error -j"$TM_JOBS")

PASSED=0
FAILED=0
SUMMARY=()

# record NAME STATUS SECONDS [why]
record() {
    if [ "$2" = PASS ]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
    SUMMARY+=("$(printf '%-16s %-4s %5ss  %s' "$1" "$2" "$3" "${4:-}")")
}

# section NAME COMMAND... -- run COMMAND under a header, record the outcome.
section() {
    local name=$1 start rc
    shift
    tm_section "$name"
    start=$SECONDS
    "$@"
    rc=$?
    if [ $rc -eq 0 ]; then
        echo "---- $name: PASS ($((SECONDS - start))s)"
        record "$name" PASS $((SECONDS - start))
    else
        echo "---- $name: FAIL (exit $rc, $((SECONDS - start))s)"
        record "$name" FAIL $((SECONDS - start)) "exit $rc"
    fi
    return $rc
}

# A section that could not run because an earlier one failed.
not_run() {
    tm_section "$1"
    echo "---- $1: FAIL (not run: $2)"
    record "$1" FAIL 0 "not run: $2"
}

finish() {
    tm_section summary
    printf '%s\n' "${SUMMARY[@]}"
    echo
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
    exit $?
}

# Run ctest in build dir $1.
run_ctest() {
    (cd "$1" && ctest "${CTEST_ARGS[@]}")
}

# Print the compiler to use for sanitizer $1 (address|thread): the first of
# $TRIMALLOC_SAN_CC, clang, gcc that builds and runs a small threaded program
# with that sanitizer. Sets SAN_WRAP to "setarch <arch> -R" where the runtime
# only works with address randomisation off (TSan on high mmap entropy).
SAN_WRAP=()
pick_san_cc() {
    local san=$1 flags dir cc candidates
    case $san in
    address) flags=(-fsanitize=address,undefined -fno-omit-frame-pointer) ;;
    thread) flags=(-fsanitize=thread -fno-omit-frame-pointer) ;;
    esac
    if [ -n "${TRIMALLOC_SAN_CC:-}" ]; then candidates=("$TRIMALLOC_SAN_CC"); else candidates=(clang gcc); fi
    dir=$(mktemp -d)
    cat >"$dir/probe.c" <<'EOF'
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
static void *work(void *arg) { char *p = malloc(64); memset(p, 1, 64); free(p); return arg; }
int main(void) {
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, work, NULL);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    return 0;
}
EOF
    SAN_WRAP=()
    for cc in "${candidates[@]}"; do
        command -v "$cc" >/dev/null 2>&1 || continue
        "$cc" "${flags[@]}" -pthread "$dir/probe.c" -o "$dir/probe" >"$dir/log" 2>&1 || {
            echo "$cc cannot build with -fsanitize=$san:" >&2; head -n 5 "$dir/log" >&2; continue; }
        if "$dir/probe" >"$dir/log" 2>&1; then
            rm -rf "$dir"; echo "$cc"; return 0
        fi
        if command -v setarch >/dev/null 2>&1 &&
            setarch "$(uname -m)" -R "$dir/probe" >/dev/null 2>&1; then
            echo "note: $cc's $san sanitizer needs ASLR off here; running its tests under setarch -R" >&2
            SAN_WRAP=(setarch "$(uname -m)" -R)
            rm -rf "$dir"; echo "$cc"; return 0
        fi
        echo "$cc's -fsanitize=$san program does not run:" >&2; head -n 5 "$dir/log" >&2
    done
    rm -rf "$dir"
    return 1
}

# sanitizer_build NAME(address|thread) DIR
sanitizer_build() {
    local san=$1 dir=$2 cc
    cc=$(pick_san_cc "$san") || { echo "no compiler can build and run -fsanitize=$san programs"; return 1; }
    echo "compiler: $cc ($(command -v "$cc"))"
    CC=$cc tm_cmake_build "$dir" RelWithDebInfo -DTRIMALLOC_SANITIZE="$san"
}

# sanitizer_ctest NAME DIR -- in a subshell, so the exported options stay here.
sanitizer_ctest() (
    san=$1 dir=$2
    pick_san_cc "$san" >/dev/null 2>&1 # sets SAN_WRAP
    export ASAN_OPTIONS="$ASAN_DEFAULTS${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
    export UBSAN_OPTIONS="$UBSAN_DEFAULTS${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
    export TSAN_OPTIONS="$TSAN_DEFAULTS${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
    echo "ASAN_OPTIONS=$ASAN_OPTIONS"
    echo "UBSAN_OPTIONS=$UBSAN_OPTIONS"
    echo "TSAN_OPTIONS=$TSAN_OPTIONS"
    cd "$dir" && "${SAN_WRAP[@]}" ctest "${CTEST_ARGS[@]}"
)

echo "trimalloc test run: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(uname -srm), jobs=$TM_JOBS"
echo "repository: $TM_ROOT ($(git -C "$TM_ROOT" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
TOTAL_START=$SECONDS

if [ $DO_DEPS = 1 ]; then
    section deps tm_ensure_required || finish
fi

if section "release build" tm_cmake_build build Release; then
    section "release ctest" run_ctest build
else
    not_run "release ctest" "release build failed"
fi

if [ $DO_ASAN = 1 ]; then
    if section "asan build" sanitizer_build address build-asan; then
        section "asan ctest" sanitizer_ctest address build-asan
    else
        not_run "asan ctest" "asan build failed"
    fi
    section fuzz bash tests/fuzz/run.sh 20
fi

if [ $DO_TSAN = 1 ]; then
    if section "tsan build" sanitizer_build thread build-tsan; then
        section "tsan ctest" sanitizer_ctest thread build-tsan
    else
        not_run "tsan ctest" "tsan build failed"
    fi
fi

if [ $DO_PRELOAD = 1 ]; then
    if [ -f build/libtrimalloc.so ]; then
        section preload bash tests/preload/run.sh "$TM_ROOT/build/libtrimalloc.so"
        section "bad input" bash tests/bad_input/run.sh "$TM_ROOT/build/libtrimalloc.so"
        section server bash tests/preload/server.sh "$TM_ROOT/build/libtrimalloc.so"
        section valgrind bash tests/valgrind/run.sh "$TM_ROOT/build"
    else
        not_run preload "build/libtrimalloc.so was not built"
    fi
fi

echo
echo "total time: $((SECONDS - TOTAL_START))s"
finish
