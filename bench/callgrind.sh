#!/usr/bin/env bash
# bench/callgrind.sh -- instructions per malloc+free pair, counted by callgrind,
# for trimalloc and every peer allocator installed, in one run.
#
#   bench/callgrind.sh [--n1 N] [--n2 N] [--variants "16 64 ..."] [--csv FILE] [--md FILE]
#
# For each allocator and variant, callgrind_pair runs twice under
# valgrind --tool=callgrind --collect-atstart=no --toggle-collect=cgp_measure,
# with N1 and N2 pairs (default 100000 and 200000); the count per pair is
# (Ir(N2) - Ir(N1)) / (N2 - N1), so start-up, warm-up and any one-off cost
# inside the measured loop cancel. The loop itself (call, store, counter)
# is included; the "harness" line gives its size from an empty pair.
# Instruction counts are deterministic, so one run each is enough.
# Prints a Markdown table on stdout and writes a CSV
# (default bench/results/callgrind.csv).
set -euo pipefail
# shellcheck source=allocators.sh
. "$(dirname "$0")/allocators.sh"

N1=100000
N2=200000
VARIANTS="16 64 256 1024 mixed batch burst 16384"
CSV=$BENCH_DIR/results/callgrind.csv
MD=""
while [ $# -gt 0 ]; do
    case $1 in
    --n1) N1=$2; shift 2 ;;
    --n2) N2=$2; shift 2 ;;
    --variants) VARIANTS=$2; shift 2 ;;
    --csv) CSV=$2; shift 2 ;;
    --md) MD=$2; shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) echo "callgrind.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

# burst runs whole bursts of 100000 pairs: other counts would round
# (callgrind_pair.c), so it takes N1 and N2 rounded up to multiples of
# 100000 (the second one at least one burst above the first): until
# 2026-12-06 it was skipped, and bench/run.sh --quick's report lost it
n_of() { # variant N -> the pair count that variant runs for N
    if [ "$1" = burst ]; then echo $(( ($2 + 99999) / 100000 * 100000 )); else echo "$2"; fi
}
n2_of() { # variant -> its second count
    local a b
    a=$(n_of "$1" "$N1"); b=$(n_of "$1" "$N2")
    [ "$b" -gt "$a" ] || b=$((a + 100000))
    echo "$b"
}
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
bench_build_programs
bench_find_allocators
for note in "${BENCH_SKIPPED[@]}"; do echo "note: skipped $note" >&2; done
[ ${#BENCH_ALLOCS[@]} -gt 0 ] || { echo "callgrind.sh: no allocator to measure" >&2; exit 1; }

PROG=$BENCH_BUILD/callgrind_pair
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"; bench_cleanup' EXIT

# One callgrind run: writes $TMP/<alloc>.<variant>.<n>.{ir,who}
one_run() {
    local a=$1 v=$2 n=$3 base=$TMP/$1.$2.$3
    bench_with "$a" valgrind --tool=callgrind --collect-atstart=no \
        --toggle-collect=cgp_measure --callgrind-out-file="$base.out" \
        --log-file="$base.vg" "$PROG" "$v" "$n" 2>"$base.err" >/dev/null || {
        echo "callgrind.sh: run failed: $a $v $n" >&2; cat "$base.err" "$base.vg" >&2; return 1; }
    awk '/^summary:/ { print $2 }' "$base.out" >"$base.ir"
    # inclusive counts of the functions named malloc and free (0 if not found)
    callgrind_annotate --inclusive=yes "$base.out" 2>/dev/null | awk '
        /:malloc \[/ && !m { gsub(",", "", $1); m = $1 }
        /:free \[/ && !f { gsub(",", "", $1); f = $1 }
        END { print (m ? m : 0), (f ? f : 0) }' >"$base.split"
    sed -n 's/.*allocator=\([a-z]*\) malloc_from=\([^ ]*\).*/\1 \2/p' "$base.err" >"$base.who"
}

jobs_list=()
for a in "${BENCH_ALLOCS[@]}"; do
    for v in $VARIANTS; do
        for n in "$(n_of "$v" "$N1")" "$(n2_of "$v")"; do jobs_list+=("$a $v $n"); done
    done
done
jobs_list+=("glibc null $N1" "glibc null $N2")

total=${#jobs_list[@]}
done_n=0
fail=0
for j in "${jobs_list[@]}"; do
    # shellcheck disable=SC2086
    one_run $j &
    if [ "$(jobs -rp | wc -l)" -ge 2 ]; then wait -n || fail=1; fi
    done_n=$((done_n + 1))
    if [ -t 2 ]; then printf '\rcallgrind: %d/%d runs' "$done_n" "$total" >&2
    elif [ $((done_n % 10)) -eq 0 ] || [ "$done_n" -eq "$total" ]; then
        echo "callgrind: $done_n/$total runs" >&2; fi
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || fail=1; done
wait || fail=1
[ -t 2 ] && echo >&2
[ $fail -eq 0 ] || { echo "callgrind.sh: some runs failed" >&2; exit 1; }

# Check that every run got the allocator it was meant to.
for a in "${BENCH_ALLOCS[@]}"; do
    for v in $VARIANTS; do
        read -r got from <"$TMP/$a.$v.$(n_of "$v" "$N1").who" || got="?"
        if [ "$got" != "$a" ]; then
            echo "callgrind.sh: $a run answered by '$got' ($from): LD_PRELOAD did not take effect" >&2
            exit 1
        fi
    done
done

per_pair() { # alloc variant -> instructions per pair
    local i1 i2 n1 n2
    n1=$(n_of "$2" "$N1"); n2=$(n2_of "$2")
    i1=$(cat "$TMP/$1.$2.$n1.ir"); i2=$(cat "$TMP/$1.$2.$n2.ir")
    awk -v a="$i1" -v b="$i2" -v n1="$n1" -v n2="$n2" 'BEGIN { printf "%.1f", (b - a) / (n2 - n1) }'
}

declare -A IPP
for a in "${BENCH_ALLOCS[@]}"; do
    for v in $VARIANTS; do IPP[$a.$v]=$(per_pair "$a" "$v"); done
done
harness=$(per_pair glibc null)

# malloc / free split per call: field 1 = malloc, 2 = free
split_of() { # alloc variant field
    local a b n1 n2
    n1=$(n_of "$2" "$N1"); n2=$(n2_of "$2")
    a=$(awk -v f="$3" '{ print $f }' "$TMP/$1.$2.$n1.split")
    b=$(awk -v f="$3" '{ print $f }' "$TMP/$1.$2.$n2.split")
    awk -v a="$a" -v b="$b" -v n1="$n1" -v n2="$n2" 'BEGIN { if (a > 0 && b > 0) printf "%.1f", (b - a) / (n2 - n1); else printf "-" }'
}
ref=""
for a in "${BENCH_ALLOCS[@]}"; do [ "$a" = mimalloc ] && ref=mimalloc; done

mkdir -p "$(dirname "$CSV")"
{
    echo "allocator,variant,n1,ir_n1,n2,ir_n2,instructions_per_pair,ratio_to_mimalloc,malloc_per_call,free_per_call,malloc_from"
    for a in "${BENCH_ALLOCS[@]}"; do
        v0=${VARIANTS%% *}
        read -r _ from <"$TMP/$a.$v0.$(n_of "$v0" "$N1").who"
        for v in $VARIANTS; do
            r=""
            [ -n "$ref" ] && r=$(awk -v x="${IPP[$a.$v]}" -v y="${IPP[$ref.$v]}" 'BEGIN { printf "%.3f", x / y }')
            n1=$(n_of "$v" "$N1"); n2=$(n2_of "$v")
            echo "$a,$v,$n1,$(cat "$TMP/$a.$v.$n1.ir"),$n2,$(cat "$TMP/$a.$v.$n2.ir"),${IPP[$a.$v]},$r,$(split_of "$a" "$v" 1),$(split_of "$a" "$v" 2),$from"
        done
    done
    echo "harness,null,$N1,$(cat "$TMP/glibc.null.$N1.ir"),$N2,$(cat "$TMP/glibc.null.$N2.ir"),$harness,,,,"
} >"$CSV"

# Markdown: instructions per pair, ratio to mimalloc in parentheses.
label() { case $1 in mixed) echo "mixed 16-2048 B" ;; batch) echo "64 B x64 batch" ;; burst) echo "16-80 B x100000 burst" ;; *) echo "$1 B" ;; esac; }
table() {
    printf '| allocator |'
    for v in $VARIANTS; do printf ' %s |' "$(label "$v")"; done
    [ -n "$ref" ] && printf ' geomean ratio to mimalloc |'
    printf '\n|---|'
    for v in $VARIANTS; do printf -- '---:|'; done
    [ -n "$ref" ] && printf -- '---:|'
    printf '\n'
    for a in "${BENCH_ALLOCS[@]}"; do
        printf '| %s |' "$a"
        local lsum=0 cnt=0
        for v in $VARIANTS; do
            if [ -n "$ref" ]; then
                printf ' %s (%sx) |' "${IPP[$a.$v]}" \
                    "$(awk -v x="${IPP[$a.$v]}" -v y="${IPP[$ref.$v]}" 'BEGIN { printf "%.2f", x / y }')"
                lsum=$(awk -v s="$lsum" -v x="${IPP[$a.$v]}" -v y="${IPP[$ref.$v]}" 'BEGIN { printf "%.9f", s + log(x / y) }')
                cnt=$((cnt + 1))
            else
                printf ' %s |' "${IPP[$a.$v]}"
            fi
        done
        [ -n "$ref" ] && printf ' %s |' "$(awk -v s="$lsum" -v c="$cnt" 'BEGIN { printf "%.2fx", exp(s / c) }')"
        printf '\n'
    done
    printf '\nInstructions per malloc+free pair (callgrind Ir, (Ir(%s) - Ir(%s)) / %s pairs, after %s warm-up pairs); ' \
        "$N2" "$N1" "$((N2 - N1))" 20000
    printf 'lower is better. Each count includes the benchmark loop itself: %s instructions for an empty pair.' "$harness"
    case " $VARIANTS " in *" burst "*)
        [ "$(n_of burst "$N1")" = "$N1" ] && [ "$(n2_of burst)" = "$N2" ] ||
            printf ' The burst variant runs whole bursts: Ir(%s) - Ir(%s).' "$(n2_of burst)" "$(n_of burst "$N1")" ;;
    esac
    [ -n "$ref" ] && printf ' Ratio to mimalloc in parentheses.'
    printf '\n'
    printf '\nWhere the instructions go: inclusive count of the function named malloc and of free, per call\n'
    printf '(the rest of a pair is the loop and the call sequence).\n\n'
    printf '| allocator |'
    for v in $VARIANTS; do printf ' %s malloc / free |' "$(label "$v")"; done
    printf '\n|---|'
    for v in $VARIANTS; do printf -- '---:|'; done
    printf '\n'
    for a in "${BENCH_ALLOCS[@]}"; do
        printf '| %s |' "$a"
        for v in $VARIANTS; do printf ' %s / %s |' "$(split_of "$a" "$v" 1)" "$(split_of "$a" "$v" 2)"; done
        printf '\n'
    done
    for note in "${BENCH_SKIPPED[@]}"; do printf '\nSkipped: %s\n' "$note"; done
}
table
[ -n "$MD" ] && table >"$MD"
exit 0
