#!/usr/bin/env bash
# bench/run.sh -- the whole benchmark suite: every allocator on every
# workload, in one run, interleaved, repeated; then medians, ratios to the
# best peer, CSVs, plots and docs/benchmarks.md.
#
#   bench/run.sh [--reps N] [--quick] [--threads "1 2"] [--alloc "trimalloc glibc ..."]
#                [--workloads "larson xmalloc ..."] [--spike-mib M] [--no-spike]
#                [--no-callgrind] [--no-doc] [--results DIR] [--spike-only [--png FILE]]
#
#   --reps N       repetitions (default 3); the allocator order is rotated
#                  every repetition and each cell reports the median
#   --quick        1 repetition, a quarter of the work, a smaller spike and a
#                  shorter callgrind run: a smoke test of the suite (~1 min).
#                  Its results, report and plots go to build-bench/quick/
#                  (benchmarks.md, img/), never to docs/ or bench/results/
#   --threads L    thread counts (default "1 2 nproc", duplicates dropped)
#   --alloc L      allocators (default: trimalloc glibc jemalloc tcmalloc mimalloc;
#                  those not installed are skipped with a note)
#   --workloads L  throughput workloads (default: larson xmalloc scratch thrash
#                  sizes realloc tight batch; also huge, not in the default set:
#                  see bench/throughput.c)
#   --no-doc       do not rewrite docs/benchmarks.md and docs/img/*.png
#   --spike-only   only spike-and-trim, a compact table, no doc (bench/spike_demo.sh);
#                  --png FILE writes its RSS-over-time plot there
#
# The allocator comes from LD_PRELOAD (glibc: none); trimalloc is
# $TRIMALLOC_LIB or build/libtrimalloc.so. Results: bench/results/
# (raw.txt = one line per run; *.csv = medians), docs/benchmarks.md,
# docs/img/spike_rss.png, docs/img/throughput.png, docs/img/peak_rss.png.
set -euo pipefail
# shellcheck source=allocators.sh
. "$(dirname "$0")/allocators.sh"

NPROC=$(nproc 2>/dev/null || echo 2)
REPS=3
QUICK=0
THREADS="1 2 $NPROC"
WORKLOADS="larson xmalloc scratch thrash sizes realloc tight batch"
SPIKE_MIB=256
DO_SPIKE=1
DO_CALLGRIND=1
DO_DOC=1
RESULTS=$BENCH_DIR/results
SPIKE_ONLY=0
SPIKE_PNG=""
ARGS="$*"
RESULTS_SET=0
while [ $# -gt 0 ]; do
    case $1 in
    --reps|--threads|--alloc|--workloads|--spike-mib|--results|--png)
        [ $# -ge 2 ] || { echo "run.sh: $1 needs a value (try --help)" >&2; exit 2; } ;;
    esac
    case $1 in
    --reps) REPS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --threads) THREADS=$2; shift 2 ;;
    --alloc) export BENCH_ALLOCATORS=$2; shift 2 ;;
    --workloads) WORKLOADS=$2; shift 2 ;;
    --spike-mib) SPIKE_MIB=$2; shift 2 ;;
    --no-spike) DO_SPIKE=0; shift ;;
    --no-callgrind) DO_CALLGRIND=0; shift ;;
    --no-doc) DO_DOC=0; shift ;;
    --results) RESULTS=$2; RESULTS_SET=1; shift 2 ;;
    --spike-only) SPIKE_ONLY=1; WORKLOADS=""; DO_CALLGRIND=0; DO_DOC=0; shift ;;
    --png) SPIKE_PNG=$2; shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done
SCALE=1
SPIKE_OPTS=""
CG_OPTS=""
if [ $QUICK = 1 ]; then
    REPS=1
    SCALE=0.25
    SPIKE_MIB=96
    SPIKE_OPTS="--settle-ms 150 --after-ms 150"
    CG_OPTS="--n1 20000 --n2 40000"
    # a smoke test leaves the published results alone: its numbers, report
    # and plots go to build-bench/quick unless --results says otherwise
    [ $RESULTS_SET = 1 ] || RESULTS=$BENCH_BUILD/quick
fi
# thread counts, de-duplicated, in order
THREADS=$(echo "$THREADS" | tr ' ' '\n' | awk 'NF && !seen[$1]++' | tr '\n' ' ')

command -v python3 >/dev/null || { echo "run.sh: python3 is needed for the summary" >&2; exit 1; }
bench_build_programs
bench_find_allocators
trap bench_cleanup EXIT
for note in "${BENCH_SKIPPED[@]}"; do echo "note: skipped $note" >&2; done
[ ${#BENCH_ALLOCS[@]} -gt 0 ] || { echo "run.sh: no allocator to measure" >&2; exit 1; }

mkdir -p "$RESULTS"
RAW=$RESULTS/raw.txt
: >"$RAW"
SERIES=$RESULTS/spike_rss
mkdir -p "$SERIES"
rm -f "$SERIES"/*.csv
{
    echo "meta args=\"$ARGS\" reps=$REPS quick=$QUICK scale=$SCALE threads=\"$THREADS\" spike_mib=$SPIKE_MIB nproc=$NPROC date=$(date -u +%Y-%m-%dT%H:%M:%SZ) load_start=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
    for a in "${BENCH_ALLOCS[@]}"; do echo "lib alloc=$a path=${BENCH_LIB[$a]:-none}"; done
    if [ -n "${BENCH_TM_ORIG:-}" ]; then echo "tmlib orig=$BENCH_TM_ORIG mtime=$BENCH_TM_MTIME sha256=$BENCH_TM_SHA head=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')"; fi
    for note in "${BENCH_SKIPPED[@]}"; do echo "skipped note=\"$note\""; done
} >>"$RAW"

TP=$BENCH_BUILD/throughput
ST=$BENCH_BUILD/spike_trim
n_alloc=${#BENCH_ALLOCS[@]}
n_wl=$(echo "$WORKLOADS" | wc -w)
n_t=$(echo "$THREADS" | wc -w)
TOTAL=$(( REPS * n_alloc * (n_wl * n_t + DO_SPIKE) ))
COUNT=0
T_BEGIN=$(date +%s)

progress() { # message
    COUNT=$((COUNT + 1))
    local el=$(( $(date +%s) - T_BEGIN ))
    printf '[%3d/%d %4ds] %s\n' "$COUNT" "$TOTAL" "$el" "$*" >&2
}

# run_one REP POS ALLOC CMD... : run, append "rep= pos= status= <kv line>" to RAW.
# A run that hangs is stopped after 300 s (a benchmark, not a test: it must
# not block the whole suite) and recorded as status=timeout.
run_one() {
    local rep=$1 pos=$2 a=$3 out rc
    shift 3
    local pre=(env -u LD_PRELOAD)
    [ -n "${BENCH_LIB[$a]}" ] && pre=(env "LD_PRELOAD=${BENCH_LIB[$a]}")
    # timeout itself runs on the system malloc; only the benchmark is preloaded
    out=$(timeout 300 "${pre[@]}" "$@" 2>"$RESULTS/last_stderr.txt") && rc=0 || rc=$?
    local status=ok
    case $rc in
    0) ;;
    3) status=FAIL ;;
    124) status=timeout ;;
    *) status=crash$rc ;;
    esac
    if [ -z "$out" ]; then out="$(basename "$1") alloc=$a"; fi
    # the program names its allocator itself; a mismatch means LD_PRELOAD failed
    if ! grep -q "alloc=$a " <<<"$out "; then
        status=wrong-allocator
    fi
    echo "rep=$rep pos=$pos status=$status $out" >>"$RAW"
    if [ "$status" != ok ]; then
        echo "  !! $a: status=$status; stderr:" >&2
        sed 's/^/     /' "$RESULTS/last_stderr.txt" | head -5 >&2
    fi
    LAST_OUT=$out
    LAST_STATUS=$status
}

kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $LAST_OUT"; }
mib_of() { local v; v=$(kv "$1"); echo $(( ${v:-0} >> 20 )); }

for rep in $(seq 1 "$REPS"); do
    # rotate the allocator order each repetition
    order=()
    for i in $(seq 0 $((n_alloc - 1))); do
        order+=("${BENCH_ALLOCS[$(( (i + rep - 1) % n_alloc ))]}")
    done
    if [ $DO_SPIKE = 1 ]; then
        for pos in "${!order[@]}"; do
            a=${order[$pos]}
            # shellcheck disable=SC2086
            run_one "$rep" "$pos" "$a" "$ST" --threads "$NPROC" --mib "$SPIKE_MIB" $SPIKE_OPTS \
                --rss-csv "$SERIES/$a.rep$rep.csv"
            progress "rep $rep/$REPS spike-and-trim $a: $LAST_STATUS, RSS after trim $(mib_of rss_end) MiB, trim $(kv trim_us) us"
        done
    fi
    for wl in $WORKLOADS; do
        for t in $THREADS; do
            for pos in "${!order[@]}"; do
                a=${order[$pos]}
                run_one "$rep" "$pos" "$a" "$TP" "$wl" --threads "$t" --scale "$SCALE"
                progress "rep $rep/$REPS $wl T=$t $a: $LAST_STATUS $(kv mops) Mops/s"
            done
        done
    done
done
rm -f "$RESULTS/last_stderr.txt"
echo "end load_end=\"$(cut -d' ' -f1-3 /proc/loadavg)\" secs=$(( $(date +%s) - T_BEGIN ))" >>"$RAW"

if [ $DO_CALLGRIND = 1 ]; then
    if command -v valgrind >/dev/null; then
        echo "callgrind: instructions per pair ..." >&2
        # shellcheck disable=SC2086
        # the same trimalloc copy as the timed runs
        TRIMALLOC_LIB=${BENCH_LIB[trimalloc]:-${TRIMALLOC_LIB:-$REPO_DIR/build/libtrimalloc.so}} \
        BENCH_SNAPSHOT=0 BENCH_ALLOCATORS="${BENCH_ALLOCS[*]}" \
        "$BENCH_DIR/callgrind.sh" $CG_OPTS --csv "$RESULTS/callgrind.csv" \
            --md "$RESULTS/callgrind.md" >/dev/null || echo "note: callgrind.sh failed" >&2
    else
        echo "note: valgrind not installed: no instruction counts" >&2
    fi
fi

DOC_ARGS=()
if [ $DO_DOC = 1 ] && [ $QUICK = 1 ]; then
    DOC_ARGS=(--doc "$RESULTS/benchmarks.md" --img "$RESULTS/img")
elif [ $DO_DOC = 1 ]; then
    DOC_ARGS=(--doc "$REPO_DIR/docs/benchmarks.md" --img "$REPO_DIR/docs/img")
fi
[ $SPIKE_ONLY = 1 ] && DOC_ARGS=(--spike-only)
[ -n "$SPIKE_PNG" ] && DOC_ARGS+=(--spike-png "$SPIKE_PNG") && rm -f "$SPIKE_PNG" # no stale plot
python3 "$BENCH_DIR/summarize.py" --results "$RESULTS" "${DOC_ARGS[@]}"
DONE_MSG="run.sh: done in $(( $(date +%s) - T_BEGIN )) s; results in $RESULTS"
[ $SPIKE_ONLY = 0 ] && [ $DO_DOC = 1 ] && DONE_MSG+="; report in ${DOC_ARGS[1]}, plots in ${DOC_ARGS[3]}"
# only a plot that was written (no gnuplot: summarize.py says so and writes none)
[ -n "$SPIKE_PNG" ] && [ -s "$SPIKE_PNG" ] && DONE_MSG+="; plot in $SPIKE_PNG"
echo "$DONE_MSG" >&2
# a run that crashed, hung, lost data or ran under the wrong allocator fails the script
if grep -q '^rep=.* status=[^o]' "$RAW"; then
    echo "run.sh: some runs did not complete cleanly (status other than ok in $RAW)" >&2
    exit 1
fi
