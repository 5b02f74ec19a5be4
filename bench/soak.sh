#!/usr/bin/env bash
# bench/soak.sh [MINUTES] [soak options...] -- build bench/soak.c against
# build/libtrimalloc.so and run it for MINUTES (default 10): a mixed
# multi-threaded workload (random sizes 1 B .. 4 MiB, realloc, cross-thread
# frees, thread churn) verifying every byte it holds, with _heapmin() every
# 100 ms and _heapchk() every 5 s. Not part of scripts/test.sh.
# Prints operations, blocks and bytes verified, _heapmin calls, RSS at
# start/peak/end and errors; exits non-zero on any error.
# Extra options go to the program: -t THREADS (4), -i HEAPMIN_MS (100),
# -l LIVE_MIB_PER_THREAD (16). Environment: BUILD (default build/).
# The figures of the reference run are in docs/reliability.md.

set -u -o pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
MINUTES=${1:-10}
[ $# -gt 0 ] && shift
BUILD=${BUILD:-$ROOT/build}
case $MINUTES in
'' | *[!0-9.]*) echo "usage: $0 [minutes] [-t threads] [-i heapmin_ms] [-l live_mib]" >&2; exit 2 ;;
esac

if [ ! -f "$BUILD/libtrimalloc.so" ]; then
    echo "building the library in $BUILD"
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null &&
        cmake --build "$BUILD" -j"${TRIMALLOC_JOBS:-2}" --target trimalloc >/dev/null ||
        { echo "FAIL: cannot build libtrimalloc.so"; exit 1; }
fi
BUILD=$(cd "$BUILD" && pwd)
OUT=$(mktemp -d "${TMPDIR:-/tmp}/trimalloc-soak.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
# Linked ahead of libc (--no-as-needed), so trimalloc serves every malloc.
"${CC:-gcc}" -O2 -g -Wall -Wextra -fno-builtin -I"$ROOT/include" "$HERE/soak.c" -o "$OUT/soak" \
    -L"$BUILD" -Wl,--no-as-needed -ltrimalloc -Wl,-rpath,"$BUILD" -pthread ||
    { echo "FAIL: bench/soak.c does not compile"; exit 1; }
echo "soak: library $(readlink -f "$BUILD/libtrimalloc.so"), $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
SECS=$(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 }')
echo "command: $0 $MINUTES $*  (soak -s $SECS $*)"
"$OUT/soak" -s "$SECS" "$@"
