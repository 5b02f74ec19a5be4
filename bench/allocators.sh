# bench/allocators.sh -- sourced by the bench scripts: where things are, and
# which allocators this machine has.
#
# After sourcing, call bench_find_allocators; it fills
#   BENCH_ALLOCS      the names found, in a fixed order (trimalloc first)
#   BENCH_LIB[name]   the .so to LD_PRELOAD ("" for glibc: no preload)
#   BENCH_SKIPPED     notes on the allocators that were not found
# trimalloc is measured from a copy taken here (BENCH_TM_ORIG, BENCH_TM_MTIME,
# BENCH_TM_SHA describe the original); BENCH_SNAPSHOT=0 uses it in place.
# Environment overrides: TRIMALLOC_LIB (default <repo>/build/libtrimalloc.so),
# BENCH_ALLOCATORS (e.g. "trimalloc glibc" to run only those).
# shellcheck shell=bash

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
BENCH_BUILD=${BENCH_BUILD:-$REPO_DIR/build-bench}

declare -A BENCH_LIB
BENCH_ALLOCS=()
BENCH_SKIPPED=()

# First existing file among the candidates, looked up in the usual library
# directories and then in the ldconfig cache.
bench_find_lib() {
    local name dir path
    for name in "$@"; do
        for dir in /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu /usr/lib64 /lib64 \
                   /usr/local/lib /usr/lib; do
            if [ -e "$dir/$name" ]; then
                echo "$dir/$name"
                return 0
            fi
        done
        path=$(ldconfig -p 2>/dev/null | awk -v n="$name" '$1 == n { print $NF; exit }')
        if [ -n "$path" ] && [ -e "$path" ]; then
            echo "$path"
            return 0
        fi
    done
    return 1
}

bench_find_allocators() {
    local lib want a
    want=${BENCH_ALLOCATORS:-"trimalloc glibc jemalloc tcmalloc mimalloc"}
    BENCH_ALLOCS=()
    BENCH_SKIPPED=()
    for a in $want; do
        case $a in
        trimalloc)
            lib=${TRIMALLOC_LIB:-$REPO_DIR/build/libtrimalloc.so}
            if [ -e "$lib" ]; then
                # Measure a private copy: build/ may be rebuilt while a long
                # run is going, and every run of one suite must use one library.
                BENCH_TM_ORIG=$lib
                BENCH_TM_MTIME=$(date -u -r "$(readlink -f "$lib")" +%Y-%m-%dT%H:%M:%SZ)
                BENCH_TM_SHA=$(sha256sum "$lib" | cut -c1-16)
                if [ "${BENCH_SNAPSHOT:-1}" = 1 ]; then
                    BENCH_SNAPDIR=$BENCH_BUILD/snapshot.$$
                    mkdir -p "$BENCH_SNAPDIR"
                    cp -L "$lib" "$BENCH_SNAPDIR/libtrimalloc.so"
                    lib=$BENCH_SNAPDIR/libtrimalloc.so
                fi
                BENCH_LIB[$a]=$lib
                BENCH_ALLOCS+=("$a")
            else
                BENCH_SKIPPED+=("trimalloc: $lib not found (build it: cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j2)")
            fi
            continue ;;
        glibc)
            BENCH_LIB[$a]=""
            BENCH_ALLOCS+=("$a")
            continue ;;
        jemalloc) lib=$(bench_find_lib libjemalloc.so.2 libjemalloc.so) ;;
        tcmalloc) lib=$(bench_find_lib libtcmalloc_minimal.so.4 libtcmalloc.so.4 \
                        libtcmalloc_minimal.so libtcmalloc.so) ;;
        mimalloc) lib=$(bench_find_lib libmimalloc.so.2 libmimalloc.so) ;;
        *) BENCH_SKIPPED+=("$a: unknown allocator name"); continue ;;
        esac
        if [ -n "$lib" ]; then
            BENCH_LIB[$a]=$lib
            BENCH_ALLOCS+=("$a")
        else
            BENCH_SKIPPED+=("$a: shared library not found (install its Debian package)")
        fi
    done
}

# Remove this script's copy of the trimalloc library (call from an EXIT trap).
bench_cleanup() {
    if [ -n "${BENCH_SNAPDIR:-}" ]; then rm -rf "$BENCH_SNAPDIR"; fi
}

# Build the bench programs (standalone, into $BENCH_BUILD); quiet unless it fails.
bench_build_programs() {
    local log=$BENCH_BUILD/build.log
    mkdir -p "$BENCH_BUILD"
    if ! { cmake -S "$BENCH_DIR" -B "$BENCH_BUILD" -DCMAKE_BUILD_TYPE=Release &&
           cmake --build "$BENCH_BUILD" -j2; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "bench: building the benchmark programs failed" >&2
        return 1
    fi
}

# Run a command under the allocator $1: bench_with ALLOC CMD...
bench_with() {
    local a=$1
    shift
    # ${...:-}: glibc has no entry when BENCH_ALLOCATORS leaves it out, yet
    # callgrind.sh still measures its empty loop with it (set -u)
    if [ -n "${BENCH_LIB[$a]:-}" ]; then
        LD_PRELOAD=${BENCH_LIB[$a]} "$@"
    else
        env -u LD_PRELOAD "$@"
    fi
}
