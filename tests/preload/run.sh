#!/usr/bin/env bash
# tests/preload/run.sh [LIB] -- real programs give the same results with
# trimalloc preloaded (LD_PRELOAD=LIB) as without it.
#
# LIB defaults to $BUILD/libtrimalloc.so, BUILD to build/ in the repository.
# Each case runs the same work twice, plainly and preloaded, and compares
# stdout, stderr and exit status:
#   preload-active   python3 reads /proc/self/maps: libtrimalloc.so is mapped
#                    (and is not without the preload); calls _heapmin while
#                    threads hold data, which must come through intact
#   python3          tests/preload/workload.py: threads, JSON, hashing, fork
#   python3-malloc   the same with PYTHONMALLOC=malloc (every object via malloc)
#   sqlite3          tests/preload/workload.sql on an in-memory database
#   gcc              compiles prog.c (object files compared byte for byte, the
#                    program's output too) and bad.c (same errors, exit status)
#   coreutils        generated data through awk, sort (also --parallel), uniq,
#                    join, sed, cut, sha256sum
#   early-malloc     a program whose library allocates in its constructor,
#                    before trimalloc's own constructor runs (as libselinux
#                    does for sed, ls, cp)
#   keys-taken       tests/preload/keys_main.c: a library took pthread key
#                    index 31 before trimalloc started; threads whose first
#                    allocation is glibc's, for a key above it, exit while
#                    _heapmin runs after each (their caches must go)
#   c++              tests/preload/cxx.cpp: every form of operator new and
#                    delete, containers, bad_alloc and the new_handler when
#                    memory runs out; preloaded, operator new must be
#                    trimalloc's own (it exports the C++ operators)
#   c++-replaced     tests/preload/cxx_replaced.cpp: a program that replaces
#                    some operators; the others must chain to them
#   c++-plugin       a C program dlopens a C++ plugin whose constructor waits
#                    for a thread that uses new and delete, and whose
#                    operator new fails (bad_alloc, nullptr for nothrow)
#   c++-dlopen       tests/preload/cxx_dlopen.cpp: trimalloc opened with
#                    dlopen; its operator new fails, then new and delete
#                    must still agree
#   dlclose          tests/preload/dlclose.c: trimalloc opened with dlopen
#                    and closed while a thread that used it lives on
#   demo-threads     examples/demo_threads.c (8 threads, cross-thread frees,
#                    _heapmin while they block): exits 0, data verified, and
#                    _heapmin is found and returns 0 when preloaded
# Every program runs with its address space capped (ulimit -v, default 8 GiB,
# env PRELOAD_VMEM_KB) so that a runaway allocator fails the case instead of
# exhausting the machine's memory.
# A program that is not installed is skipped with a message. Prints PASS, FAIL
# or SKIP per case; exits non-zero if any case failed.

set -u -o pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LIB=${1:-${BUILD:-$ROOT/build}/libtrimalloc.so}
TIMEOUT=${PRELOAD_TIMEOUT:-1200} # a hang guard only (the slowest case takes ~10 s): never a speed limit
VMEM_KB=${PRELOAD_VMEM_KB:-8388608}
export LC_ALL=C

if [ ! -f "$LIB" ]; then
    echo "FAIL: $LIB does not exist (build the library first)"
    exit 1
fi
LIB=$(readlink -f "$LIB")
echo "preloading: $LIB"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/trimalloc-preload.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

PASSES=0
FAILS=0
SKIPS=0

# The command prefix the case functions run their programs with: empty for the
# plain run, "env LD_PRELOAD=$LIB" for the preloaded one.
PRE=()

result() { # result STATUS NAME [detail]
    printf '%-4s %-16s %s\n' "$1" "$2" "${3:-}"
    case $1 in
    PASS) PASSES=$((PASSES + 1)) ;;
    FAIL) FAILS=$((FAILS + 1)) ;;
    SKIP) SKIPS=$((SKIPS + 1)) ;;
    esac
}

# need CMD... -- 0 if every command exists; otherwise SKIP the case.
need() {
    local c
    for c in "$@"; do
        if ! command -v "$c" >/dev/null 2>&1; then
            result SKIP "$CASE" "($c is not installed)"
            return 1
        fi
    done
}

# compare NAME FUNCTION [args] -- run FUNCTION in $WORK/NAME/plain and
# $WORK/NAME/preload (cwd), its stdout/stderr to files there, exit status
# too; the preloaded run must match the plain one.
compare() {
    local name=$1 fn=$2 mode dir rc
    shift 2
    for mode in plain preload; do
        dir=$WORK/$name/$mode
        mkdir -p "$dir"
        if [ $mode = plain ]; then PRE=(); else PRE=(env "LD_PRELOAD=$LIB"); fi
        (ulimit -v "$VMEM_KB" && cd "$dir" && "$fn" "$@" >stdout 2>stderr)
        rc=$?
        echo "$rc" >"$dir/status"
    done
    local p=$WORK/$name/plain q=$WORK/$name/preload f bad=""
    for f in status stdout stderr; do
        cmp -s "$p/$f" "$q/$f" || bad="$bad $f"
    done
    if [ "$(cat "$p/status")" != 0 ]; then
        result FAIL "$name" "(the plain run itself failed with status $(cat "$p/status"))"
        tail -n 20 "$p/stderr" "$p/stdout" | sed 's/^/    /'
        return
    fi
    if [ -z "$bad" ]; then
        result PASS "$name" "($(wc -l <"$p/stdout") lines of output, status $(cat "$p/status"))"
    else
        local why=""
        [ "$(cat "$q/status")" = 124 ] && why=", timed out after ${TIMEOUT}s"
        result FAIL "$name" "(differs:$bad; preloaded status $(cat "$q/status")$why)"
        for f in status stdout stderr; do
            diff -u --label "plain/$f" --label "preload/$f" "$p/$f" "$q/$f" | head -n 25 | sed 's/^/    /'
        done
    fi
}

t() { "${PRE[@]}" timeout "$TIMEOUT" "$@"; }

# ---- cases ------------------------------------------------------------------

case_maps() {
    t python3 "$HERE/workload.py" --maps
}

case_python() {
    t python3 "$HERE/workload.py"
}

case_python_malloc() {
    PYTHONMALLOC=malloc t python3 "$HERE/workload.py"
}

case_sqlite() {
    t sqlite3 :memory: <"$HERE/workload.sql"
}

case_gcc() {
    local rc
    cp "$HERE/prog.c" "$HERE/bad.c" .
    t gcc -O2 -Wall -Wextra -c prog.c -o prog.o
    echo "gcc -c prog.c: exit $?"
    sha256sum prog.o
    t gcc -O2 prog.o -o prog
    echo "gcc link: exit $?"
    t ./prog
    echo "prog: exit $?"
    t gcc -O2 -Wall -Wextra -o bad bad.c
    rc=$?
    echo "gcc bad.c: exit $rc"
    [ "$rc" = 1 ] || echo "expected exit status 1 from gcc on bad.c"
}

# A handful of modules from CPython's own test suite (the interpreter's
# bundled `test` package; Debian ships it as libpython3.X-testsuite). Only the
# counts and the verdict are compared: regrtest also prints timings.
PY_TESTS="test_json test_re test_collections test_heapq test_bisect test_struct test_zlib"
case_python_testsuite() {
    # shellcheck disable=SC2086 # the module list is split on purpose
    t python3 -m test $PY_TESTS 2>&1 | grep -E '^(Total tests|Total test files|Result)'
}

case_early() {
    gcc -O1 -shared -fPIC "$HERE/early_lib.c" -o libearly.so &&
        gcc -O1 "$HERE/early_main.c" -o early_main -L. -Wl,--no-as-needed -learly \
            -Wl,-rpath,"$PWD" || return 99
    t ./early_main
}

case_keys() {
    gcc -O1 -shared -fPIC "$HERE/keys_lib.c" -o libkeys.so -pthread &&
        gcc -O1 -Wall -Wextra -I"$ROOT/include" "$HERE/keys_main.c" -o keys_main -pthread -ldl \
            -L. -Wl,--no-as-needed -lkeys -Wl,-rpath,"$PWD" || return 99
    t ./keys_main
}

case_cxx() {
    g++ -O1 -std=c++17 -Wall -Wextra "$HERE/cxx.cpp" -o cxx -ldl || return 99
    # the library that must define the operator new the program calls
    if [ ${#PRE[@]} -gt 0 ]; then t ./cxx libtrimalloc; else t ./cxx libstdc++; fi
}

case_cxx_replaced() {
    # it means to leave the sized deletes to the default ones
    g++ -O1 -std=c++17 -Wall -Wextra -Wno-sized-deallocation "$HERE/cxx_replaced.cpp" -o cxx_replaced ||
        return 99
    t ./cxx_replaced
}

case_cxx_plugin() {
    g++ -O1 -std=c++17 -Wall -Wextra -shared -fPIC "$HERE/cxx_plugin.cpp" -o cxx_plugin.so -pthread &&
        gcc -O1 -Wall -Wextra "$HERE/cxx_host.c" -o cxx_host -ldl || return 99
    t ./cxx_host
}

case_cxx_dlopen() {
    g++ -O1 -std=c++17 -Wall -Wextra "$HERE/cxx_dlopen.cpp" -o cxx_dlopen -ldl || return 99
    t ./cxx_dlopen "$LIB"
}

case_dlclose() {
    gcc -O1 -Wall -Wextra "$HERE/dlclose.c" -o dlclose -pthread -ldl || return 99
    t ./dlclose "$LIB"
}

case_coreutils() {
    # Generated by awk, then through the usual tools; everything preloaded.
    t awk 'BEGIN { srand(42); for (i = 0; i < 200000; i++)
              printf "key%05d\t%d\t%s\n", int(rand() * 30000), int(rand() * 1000000), substr("abcdefghijklmnop", 1 + int(rand() * 16)) }' >data.tsv
    echo "generated: $(wc -l <data.tsv) lines"
    sha256sum data.tsv
    t sort -t "$(printf '\t')" -k2,2n -k1,1 data.tsv | sha256sum
    t sort --parallel=2 -S 2M -T . data.tsv | sha256sum
    t sort -u -k1,1 data.tsv | wc -l
    t awk -F '\t' '{ sum[$1] += $2; n[$1]++; s[$3] = s[$3] $1 }
              END { for (k in sum) print k, sum[k], n[k]; for (k in s) print k, length(s[k]) }' data.tsv |
        t sort | sha256sum
    t cut -f3 data.tsv | t sort | t uniq -c | t sort -k1,1nr -k2,2 | head -n 5
    t sed -e 's/key/K/g' -e 's/\t\([a-c]*\)$/ short:\1/' data.tsv | sha256sum
    t sort -k1,1 data.tsv | cut -f1,2 >a.tsv
    t sort -k1,1 -u data.tsv | cut -f1,3 >b.tsv
    t join -t "$(printf '\t')" a.tsv b.tsv | t tr 'a-p' 'A-P' | sha256sum
    t tac data.tsv | t fold -w 37 | t md5sum
}

# ---- run ----------------------------------------------------------------------

CASE=preload-active
if need python3; then
    # Not a comparison: the preloaded run must see libtrimalloc.so mapped and
    # _heapmin working, the plain run must not see it (or the check is blind).
    for mode in plain preload; do
        mkdir -p "$WORK/maps/$mode"
        if [ $mode = plain ]; then PRE=(); else PRE=(env "LD_PRELOAD=$LIB"); fi
        (ulimit -v "$VMEM_KB" && cd "$WORK/maps/$mode" && case_maps >stdout 2>stderr)
        echo $? >"$WORK/maps/$mode/status"
    done
    p=$WORK/maps/plain q=$WORK/maps/preload
    if grep -q '^libtrimalloc mapped: no$' "$p/stdout" &&
        grep -q '^libtrimalloc mapped: yes$' "$q/stdout" &&
        grep -q '^_heapmin with .* returned 0, data intact$' "$q/stdout" &&
        [ "$(cat "$q/status")" = 0 ] && [ ! -s "$q/stderr" ]; then
        result PASS preload-active "($(paste -sd ';' "$q/stdout"))"
    else
        result FAIL preload-active "(libtrimalloc.so not mapped when preloaded, or _heapmin failed)"
        for f in plain/stdout plain/stderr plain/status preload/stdout preload/stderr preload/status; do
            head -n 15 "$WORK/maps/$f" | sed "s|^|    $f: |"
        done
    fi
fi

CASE=python3
need python3 && compare python3 case_python
CASE=python3-malloc
need python3 && compare python3-malloc case_python_malloc
CASE=python3-tests
if need python3; then
    if python3 -c 'import test.libregrtest' 2>/dev/null; then
        compare python3-tests case_python_testsuite
    else
        result SKIP python3-tests "(CPython's test package is not installed: libpython3-testsuite)"
    fi
fi
CASE=sqlite3
need sqlite3 && compare sqlite3 case_sqlite
CASE=gcc
need gcc && compare gcc case_gcc
CASE=coreutils
need awk sort uniq join sed cut tr sha256sum md5sum tac fold && compare coreutils case_coreutils

CASE=early-malloc
need gcc && compare early-malloc case_early
CASE=keys-taken
need gcc && compare keys-taken case_keys
CASE=c++
need g++ && compare c++ case_cxx

CASE=c++-replaced
need g++ && compare c++-replaced case_cxx_replaced

CASE=c++-plugin
need g++ gcc && compare c++-plugin case_cxx_plugin

CASE=c++-dlopen
need g++ && compare c++-dlopen case_cxx_dlopen

CASE=dlclose
need gcc && compare dlclose case_dlclose

CASE=demo-threads
if need gcc; then
    d=$WORK/demo
    mkdir -p "$d"
    if ! gcc -O2 -pthread "$ROOT/examples/demo_threads.c" -o "$d/demo_threads" -ldl 2>"$d/cc.err"; then
        result FAIL demo-threads "(examples/demo_threads.c does not compile)"
        sed 's/^/    /' "$d/cc.err"
    else
        (ulimit -v "$VMEM_KB" && timeout "$TIMEOUT" "$d/demo_threads") >"$d/plain.out" 2>&1
        prc=$?
        (ulimit -v "$VMEM_KB" && timeout "$TIMEOUT" env "LD_PRELOAD=$LIB" "$d/demo_threads") >"$d/preload.out" 2>&1
        qrc=$?
        if [ $prc = 0 ] && [ $qrc = 0 ] && grep -q '^data check: OK' "$d/preload.out" &&
            grep -q 'returned 0 in' "$d/preload.out" && grep -q "^malloc from: .*libtrimalloc" "$d/preload.out"; then
            result PASS demo-threads "($(grep -o 'after _heapmin(), threads.*' "$d/preload.out" | tr -s ' '))"
        else
            result FAIL demo-threads "(plain exit $prc, preloaded exit $qrc)"
            sed 's/^/    plain: /' "$d/plain.out"
            sed 's/^/    preload: /' "$d/preload.out"
        fi
    fi
fi

echo "preload tests: $PASSES passed, $FAILS failed, $SKIPS skipped"
[ "$FAILS" -eq 0 ]
