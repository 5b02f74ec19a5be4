#!/usr/bin/env bash
# bench/redis_spike.sh -- a real server after a spike: redis-server under
# every allocator found, interleaved. Each run fills redis with KEYS values
# of 200 B (redis-benchmark -t set -P 16), empties it with FLUSHALL, and
# reads the server's VmRSS full, 1 s and 5 s after FLUSHALL, and after
# MEMORY PURGE; and the fill's SET rate.
#
#   bench/redis_spike.sh [--keys N (400000)] [--reps R (3)]
#
# Debian links redis-server with jemalloc, so "native" is jemalloc itself,
# and redis steers it with mallctl: a background purging thread, a purge
# after FLUSHALL and on MEMORY PURGE. Under LD_PRELOAD=libtrimalloc.so
# those calls reach that idle jemalloc, not trimalloc ("trimalloc");
# build/libtrimalloc_jemalloc.so answers them ("trimalloc-je"; docs/api.md).
# Skipped with a message where redis-server or redis-benchmark is missing.
# No timing limit: noisy machines give noisy SET rates; RSS is steadier.
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/allocators.sh"
KEYS=400000
REPS=3
while [ $# -gt 0 ]; do
    case $1 in
    --keys) KEYS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "redis_spike.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
for p in redis-server redis-benchmark redis-cli python3; do
    if ! command -v $p >/dev/null 2>&1; then
        echo "redis_spike.sh: $p not installed (apt-get install redis-server python3): skipped"
        exit 0
    fi
done
trap bench_cleanup EXIT
bench_find_allocators
for note in "${BENCH_SKIPPED[@]}"; do echo "skipped: $note"; done
names=()
for a in "${BENCH_ALLOCS[@]}"; do
    if [ "$a" = glibc ]; then names+=(native); else names+=("$a"); fi
    if [ "$a" = trimalloc ]; then
        je=$(dirname "$(readlink -f "${TRIMALLOC_LIB:-$REPO_DIR/build/libtrimalloc.so}")")/libtrimalloc_jemalloc.so
        if [ -e "$je" ]; then
            BENCH_LIB["trimalloc-je"]=$je
            names+=(trimalloc-je)
        else
            echo "skipped: trimalloc-je: $je not found (it is built with libtrimalloc.so)"
        fi
    fi
done
BENCH_LIB["native"]=""
linked=$(ldd "$(command -v redis-server)" | grep -oE 'lib(jemalloc|tcmalloc[a-z_]*)\.so' | head -n 1 || true)
echo "redis-server: $(redis-server --version | grep -oE 'v=[0-9.]+'), native allocator: ${linked:-glibc malloc}"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
rss_mb() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/redis-spike.XXXXXX")
RESULTS=$WORK/results
: >"$RESULTS"
one_run() { # one_run NAME
    local a=$1 port pid full r1 r5 rp rate
    port=$(free_port)
    (cd "$WORK" && exec env ${BENCH_LIB[$a]:+LD_PRELOAD=${BENCH_LIB[$a]}} redis-server \
        --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$WORK" \
        >"$WORK/$a.log" 2>&1) &
    pid=$!
    for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    rate=$(redis-benchmark -p "$port" -q -n "$KEYS" -r "$KEYS" -t set -d 200 -P 16 2>/dev/null |
        tr '\r' '\n' | grep 'requests per second' | grep -v 'rps=' | sed 's/.*SET: \([0-9.]*\).*/\1/')
    full=$(rss_mb $pid)
    redis-cli -p "$port" flushall >/dev/null
    sleep 1; r1=$(rss_mb $pid)
    sleep 4; r5=$(rss_mb $pid)
    redis-cli -p "$port" memory purge >/dev/null
    sleep 0.2; rp=$(rss_mb $pid)
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    wait $pid || true
    echo "$a $full $r1 $r5 $rp ${rate:-0}" >>"$RESULTS"
    echo "  rep $rep $a: full $full MB, +1 s $r1, +5 s $r5, purged $rp; SET ${rate:-?}/s" >&2
}
n=${#names[@]}
for rep in $(seq "$REPS"); do
    for i in $(seq 0 $((n - 1))); do
        one_run "${names[$(( (i + rep - 1) % n ))]}"
    done
done
echo
echo "redis-server, $KEYS SETs of 200 B then FLUSHALL; VmRSS MB, medians of $REPS (interleaved)"
python3 - "$RESULTS" "${names[@]}" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rows.setdefault(f[0], []).append([float(x) for x in f[1:]])
print("| allocator | full | 1 s after FLUSHALL | 5 s after | after MEMORY PURGE | SET k/s |")
print("|---|---:|---:|---:|---:|---:|")
for name in sys.argv[2:]:
    if name not in rows:
        continue
    cols = list(zip(*rows[name]))
    m = [statistics.median(c) for c in cols]
    print("| %s | %.1f | %.1f | %.1f | %.1f | %.0f |" % (name, m[0], m[1], m[2], m[3], m[4] / 1000))
EOF
rm -rf "$WORK"
