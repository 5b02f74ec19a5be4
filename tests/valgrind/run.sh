#!/usr/bin/env bash
# tests/valgrind/run.sh [BUILD] -- trimalloc's own code under valgrind's
# memcheck: invalid reads/writes, uses of uninitialised values, bad system
# call arguments. BUILD defaults to build/ (it must hold libtrimalloc.so).
#
# Memcheck normally replaces every malloc it finds -- in libc, and in any
# library or executable exporting malloc -- so by default it would test its
# own allocator, not ours. --soname-synonyms=somalloc=nouserintercepts
# (a soname that matches nothing) limits the replacement to libc, so
# trimalloc's malloc runs and memcheck watches it. Each case checks that
# memcheck's own heap stayed unused ("total heap usage: 0 allocs"), i.e.
# that every allocation really went to trimalloc.
#
# Cases (each: memcheck --error-exitcode=99, any error fails the case):
#   vg_prog   tests/valgrind/vg_prog.c linked against libtrimalloc.so: every
#             size, calloc, realloc through small/large/huge, the aligned
#             family, two threads freeing each other's blocks, _heapmin with
#             blocks held, _heapchk, _heapwalk
#   sort      sort --parallel=2 with trimalloc preloaded; output compared
#             with a plain run
#   python3   /usr/bin/python3 (PYTHONMALLOC=malloc, threads, json) preloaded
# Skips (exit 0, with a message) if valgrind is not installed; a program
# that is missing skips its case. Exits non-zero if any case failed.

set -u -o pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${1:-${BUILD:-$ROOT/build}}
export LC_ALL=C

if ! command -v valgrind >/dev/null 2>&1; then
    echo "SKIP: valgrind is not installed (apt-get install valgrind)"
    exit 0
fi
if [ ! -f "$BUILD/libtrimalloc.so" ]; then
    echo "FAIL: $BUILD/libtrimalloc.so does not exist (build the library first)"
    exit 1
fi
BUILD=$(cd "$BUILD" && pwd)
LIB=$(readlink -f "$BUILD/libtrimalloc.so")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/trimalloc-vg.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
VG=(valgrind --tool=memcheck --error-exitcode=99 --track-origins=yes
    --soname-synonyms=somalloc=nouserintercepts)
echo "$(valgrind --version), library: $LIB"

PASSES=0 FAILS=0
result() {
    printf '%-4s %-8s %s\n' "$1" "$2" "${3:-}"
    if [ "$1" = PASS ]; then PASSES=$((PASSES + 1)); elif [ "$1" = FAIL ]; then FAILS=$((FAILS + 1)); fi
}

# vg_check NAME RC LOG -- the verdict from memcheck's exit status and log.
vg_check() {
    local name=$1 rc=$2 log=$3 errs
    errs=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$log" | tail -n 1)
    if [ "$rc" -ne 0 ] || [ "${errs:-x}" != 0 ]; then
        result FAIL "$name" "(exit status $rc, memcheck errors: ${errs:-?})"
        grep -E '^==[0-9]+== (Invalid|Conditional|Use of uninit|Syscall param|Source and dest|Mismatched|   (at|by) )' "$log" |
            head -n 40 | sed 's/^/    /'
        echo "    frames in trimalloc: $(grep -c 'libtrimalloc' "$log")"
        return 1
    fi
    if ! grep -q 'total heap usage: 0 allocs' "$log"; then
        result FAIL "$name" "(memcheck's own malloc was used: $(grep -o 'total heap usage.*' "$log"))"
        return 1
    fi
    return 0
}

# ---- vg_prog ----------------------------------------------------------------
if ! "${CC:-gcc}" -O1 -g -Wall -Wextra -fno-builtin -I"$ROOT/include" "$HERE/vg_prog.c" \
    -o "$WORK/vg_prog" -L"$BUILD" -Wl,--no-as-needed -ltrimalloc -Wl,-rpath,"$BUILD" \
    -pthread -ldl 2>"$WORK/cc.err"; then
    sed 's/^/    /' "$WORK/cc.err"
    result FAIL vg_prog "(tests/valgrind/vg_prog.c does not compile)"
else
    "${VG[@]}" --log-file="$WORK/vg_prog.log" "$WORK/vg_prog" >"$WORK/vg_prog.out" 2>&1
    rc=$?
    if vg_check vg_prog $rc "$WORK/vg_prog.log"; then
        if grep -q '^vg_prog: all checks passed$' "$WORK/vg_prog.out"; then
            result PASS vg_prog "(0 memcheck errors; $(grep '^_heapwalk' "$WORK/vg_prog.out"))"
        else
            result FAIL vg_prog "(the program's own checks failed)"
            sed 's/^/    /' "$WORK/vg_prog.out"
        fi
    fi
fi

# ---- sort -------------------------------------------------------------------
if command -v sort >/dev/null 2>&1 && command -v awk >/dev/null 2>&1; then
    awk 'BEGIN { srand(7); for (i = 0; i < 30000; i++)
        printf "k%06d %s\n", int(rand() * 1e6), substr("abcdefghij", 1, 1 + int(rand() * 10)) }' >"$WORK/data"
    sort --parallel=2 -S 1M "$WORK/data" >"$WORK/sort.plain"
    LD_PRELOAD=$LIB "${VG[@]}" --log-file="$WORK/sort.log" sort --parallel=2 -S 1M "$WORK/data" \
        >"$WORK/sort.vg" 2>&1
    rc=$?
    if vg_check sort $rc "$WORK/sort.log"; then
        if cmp -s "$WORK/sort.plain" "$WORK/sort.vg"; then
            result PASS sort "(0 memcheck errors, $(wc -l <"$WORK/sort.vg") lines as without trimalloc)"
        else
            result FAIL sort "(output differs from the plain run)"
        fi
    fi
else
    result SKIP sort "(sort or awk missing)"
fi

# ---- python3 ----------------------------------------------------------------
if [ -x /usr/bin/python3 ]; then
    LD_PRELOAD=$LIB PYTHONMALLOC=malloc "${VG[@]}" --log-file="$WORK/py.log" /usr/bin/python3 -c '
import json, threading
d = [{"k": i, "v": str(i) * 3} for i in range(20000)]
s = json.dumps(d)
assert json.loads(s) == d
def work():
    x = [bytes(i % 300) for i in range(5000)]
    assert sum(map(len, x)) == sum(i % 300 for i in range(5000))
t = [threading.Thread(target=work) for _ in range(2)]
[x.start() for x in t]
[x.join() for x in t]
print("python3 ok", len(s))' >"$WORK/py.out" 2>&1
    rc=$?
    if vg_check python3 $rc "$WORK/py.log"; then
        if grep -q '^python3 ok' "$WORK/py.out"; then
            result PASS python3 "(0 memcheck errors; PYTHONMALLOC=malloc, 2 threads)"
        else
            result FAIL python3 "(the script failed)"
            sed 's/^/    /' "$WORK/py.out"
        fi
    fi
else
    result SKIP python3 "(/usr/bin/python3 missing)"
fi

echo "valgrind tests: $PASSES passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
