#!/usr/bin/env bash
# bench/many_threads.sh -- peak RSS with many busy threads, every allocator
# found, interleaved: what thread caches cost when a server has hundreds of
# workers (bench/many_threads.c says what each thread does).
#
#   bench/many_threads.sh [--threads "64 128"] [--seconds S (3)] [--reps N (1)]
#
# trimalloc is $TRIMALLOC_LIB or build/libtrimalloc.so; build it first.
# Extra TRIMALLOC_CONF for trimalloc's runs: $MANY_THREADS_CONF (for example
# tcache_total_mb:0 to see the caches without their common bound).
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/allocators.sh"
THREADS="64 128"
SECONDS_EACH=3
REPS=1
while [ $# -gt 0 ]; do
    case $1 in
    --threads) THREADS=$2; shift 2 ;;
    --seconds) SECONDS_EACH=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "many_threads.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
bench_build_programs
trap bench_cleanup EXIT
bench_find_allocators
for note in "${BENCH_SKIPPED[@]}"; do echo "skipped: $note"; done
printf '%-10s %7s %5s %14s %14s %s\n' allocator threads rep peak_rss_mib peak_live_mib verify
for t in $THREADS; do
    for ((r = 1; r <= REPS; r++)); do
        for a in "${BENCH_ALLOCS[@]}"; do
            conf=
            [ "$a" = trimalloc ] && conf=${MANY_THREADS_CONF:-}
            line=$(env TRIMALLOC_CONF="$conf" LD_PRELOAD="${BENCH_LIB[$a]}" \
                "$BENCH_BUILD/many_threads" --threads "$t" --seconds "$SECONDS_EACH")
            rss=$(sed -n 's/.*peak_rss_mib=\([0-9.]*\).*/\1/p' <<<"$line")
            liv=$(sed -n 's/.*peak_live_mib=\([0-9.]*\).*/\1/p' <<<"$line")
            ver=$(sed -n 's/.*verify=\([a-zA-Z]*\).*/\1/p' <<<"$line")
            printf '%-10s %7s %5s %14s %14s %s\n' "$a" "$t" "$r" "$rss" "$liv" "$ver"
        done
    done
done
