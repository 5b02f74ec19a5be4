#!/usr/bin/env bash
# scripts/demo.sh [threads [blocks-per-thread]] -- the main job: build
# trimalloc (Release, build/libtrimalloc.so), then
#   1. spike-and-trim (bench/spike_demo.sh): worker threads build up a heap,
#      free 95% of it and stay alive and idle; each allocator's own trim call
#      runs (trimalloc: _heapmin(); glibc: malloc_trim(0); jemalloc,
#      tcmalloc, mimalloc when installed). A compact table of RSS after the
#      trim, the call's time and the worst stall another thread saw, and the
#      RSS-over-time plot build-bench/spike_demo/spike_rss.png;
#   2. a short multi-threaded demo of _heapmin() (examples/demo_threads.c),
#      once with the system malloc and once with LD_PRELOAD.
# The exit status is non-zero if a build or a run failed (or data did not
# verify). About 15-30 s on 2 cores once built.

set -u -o pipefail

usage() {
    cat <<'EOF_USAGE'
usage: scripts/demo.sh [threads [blocks-per-thread]]

Builds trimalloc (Release, build/libtrimalloc.so), runs spike-and-trim
against glibc and the installed peers (table, and the RSS-over-time plot
build-bench/spike_demo/spike_rss.png), then a short multi-threaded
_heapmin() demo (examples/demo_threads.c) with the system malloc and with
trimalloc preloaded. threads (1-256, default 8) and blocks-per-thread set
the size of that last demo. About 15-30 s on 2 cores once built.
EOF_USAGE
}
# Arguments first, before anything is built or run.
case "${1:-}" in
    -h | --help) usage; exit 0 ;;
esac
if [ $# -gt 2 ]; then
    echo "demo.sh: at most two arguments (try --help)" >&2
    exit 2
fi
for a in "$@"; do
    case "$a" in
        '' | *[!0-9]*) echo "demo.sh: not a number: '$a' (try --help)" >&2; exit 2 ;;
    esac
done
if [ $# -ge 1 ] && { [ "$1" -lt 1 ] || [ "$1" -gt 256 ]; }; then
    echo "demo.sh: threads must be 1-256, not $1 (try --help)" >&2
    exit 2
fi

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$TM_ROOT" || exit 1

tm_section "dependencies"
tm_ensure_build || exit 1
tm_ensure_optional # benchmark peers, for the comparisons that need them

tm_section "build (Release)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null &&
    cmake --build build --target trimalloc -j"$TM_JOBS" ||
    tm_die "the library did not build (run: cmake --build build)"
LIB=$TM_ROOT/build/libtrimalloc.so
[ -f "$LIB" ] || tm_die "$LIB is missing after the build"
${CC:-gcc} -O2 -Wall -Wextra -pthread examples/demo_threads.c -o build/demo_threads -ldl ||
    tm_die "examples/demo_threads.c did not compile"
echo "built $LIB and build/demo_threads"
# Every allocator's resident memory depends on the kernel's transparent huge
# pages (docs/tuning.md, "thp"): say which setting these numbers come from.
THP=$(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)
LOAD=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)
echo "machine: $(nproc) CPUs, transparent huge pages: ${THP:-not in this kernel}, load average ${LOAD:-unknown}"
echo "(times -- 'trim took', 'worst stall' -- grow several-fold when other work shares the"
echo "CPUs, for every allocator; compare the rows of one run, not with README's figures)"

# run_demo LABEL [env assignments...] -- run the demo under env, report.
FAILED=0
run_demo() {
    local label=$1 out
    shift
    tm_section "demo: $label"
    echo "\$ ${*:+$* }build/demo_threads${DEMO_ARGS:+ $DEMO_ARGS}"
    # shellcheck disable=SC2086 # DEMO_ARGS is split on purpose
    if ! out=$(env "$@" build/demo_threads $DEMO_ARGS 2>&1); then
        echo "$out"
        echo "demo FAILED with $label"
        FAILED=1
        return
    fi
    echo "$out"
    # a preload the loader refused runs on glibc's malloc, exit status 0
    if [ $# -gt 0 ] && ! grep -q 'malloc from: .*trimalloc' <<<"$out"; then
        echo "demo FAILED with $label: the program did not run on trimalloc"
        FAILED=1
    fi
}

FAILED=0
tm_section "spike-and-trim: trimalloc against glibc and the installed peers"
TRIMALLOC_LIB=$LIB bench/spike_demo.sh --reps 3 || FAILED=1

DEMO_ARGS="$*"
run_demo "system malloc"
run_demo "trimalloc (LD_PRELOAD)" "LD_PRELOAD=$LIB"

echo
if [ $FAILED = 0 ]; then
    echo "demo done. Compare the 'after _heapmin()' rows: _heapmin() is meant to return the"
    echo "memory freed by every thread, including threads that are alive but blocked."
    echo "('after the threads exit' is higher with trimalloc than with glibc: the arenas the"
    echo "exited threads used keep up to 1 MiB each for the next threads, and the main"
    echo "thread's arena keeps its free pages until dirty_decay_ms (10 s) or _heapmin().)"
else
    echo "demo: some run FAILED (see above)"
fi
exit $FAILED
