#!/usr/bin/env bash
# bench/spike_demo.sh -- the spike-and-trim benchmark alone, for a newcomer:
# trimalloc against the system malloc (glibc) and whichever of jemalloc,
# tcmalloc and mimalloc are installed. Under a minute on 2 cores.
#
#   bench/spike_demo.sh [--mib M] [--reps N (default 3, medians)] [--out DIR]
#
# N worker threads (N = CPUs) build up a ~M MiB heap (default 256), free 95%
# of it and stay alive, idle. Then each allocator's own "give memory back"
# call runs (trimalloc: _heapmin()). The table shows how much memory the
# process still holds afterwards, how long the call took, and the longest
# malloc/free another thread saw meanwhile. The RSS-over-time plot is written
# to DIR/spike_rss.png (default build-bench/spike_demo/).
# trimalloc is $TRIMALLOC_LIB or build/libtrimalloc.so; build it first.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
MIB=256
REPS=3
OUT=$(cd "$here/.." && pwd)/build-bench/spike_demo
while [ $# -gt 0 ]; do
    case $1 in
    --mib) MIB=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) echo "spike_demo.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT"
exec "$here/run.sh" --spike-only --reps "$REPS" --spike-mib "$MIB" --results "$OUT" \
    --png "$OUT/spike_rss.png"
