#!/usr/bin/env bash
# tests/bad_input/run.sh [LIB] -- what trimalloc does with bad pointers and
# with no memory left, with LD_PRELOAD=LIB (default build/libtrimalloc.so).
#
# bad_ptr.c CASE, for CASE = CALL-WHAT:
#   CALL  free, realloc, realloc0 (realloc(p, 0), which frees p: reported
#         as realloc's, NULL with EINVAL when ignored), usable
#         (malloc_usable_size)
#   WHAT  stack, global: a pointer into the stack or the program's data
#         interior-small/-large/-large-page/-huge/-huge-far: inside a block
#         (a small one; a large one, mid-page and page-aligned; a huge one,
#         in its first chunk and 6 MiB in)
#         mmap: memory the program mapped itself (another allocator's)
#         unallocated: a block start in a slab that never handed it out
#         past-end: one block past a slab's last block (in the slab's tail)
#         double-tcache: freed before, still in the thread cache
#         double-arena: freed before, back in its slab after _heapmin
#         double-large, double-huge: a freed large block, a freed huge block
#         (in the huge cache); double-huge-unmapped: after _heapmin unmapped it;
#         double-huge-merged: a freed huge block the cache merged with its
#         neighbour (no longer a block start)
#         interior-remote-large-page, double-remote-large: a page inside a
#         large block another thread (another arena) made; that block,
#         freed by this thread and waiting in its remote-free queue
# Each case runs twice:
#   default options          must die of SIGABRT in the bad call, with
#                            exactly one line on stderr: "trimalloc:
#                            CALL(): invalid pointer P" or "... double free
#                            of pointer P", P the pointer the program
#                            printed; nothing else
#   TRIMALLOC_CONF=abort_on_error:0
#                            the same line plus " (ignored)", then the program
#                            goes on, finds the heap working and exits 0
# A case reported with the other of the two words (a double free called an
# invalid pointer, say) passes with a note: both name the pointer and stop
# the program, and after the memory was reused no allocator can tell.
#
# oom.c under `ulimit -v 262144` (env BAD_INPUT_VMEM_KB): small, large and
# huge blocks until ENOMEM, every entry point at the limit, held blocks
# intact, _heapmin() == 0 at the limit, allocation works again after frees.
# oom_first.c under `ulimit -d 1000`: the first calls return NULL, ENOMEM.
# tight_as.c sets RLIMIT_AS from its own VmSize: the first malloc under
# VmSize + 5 MiB succeeds, and three 3 MiB blocks fit in 10 MiB more.
#
# Exits non-zero if any case failed.

set -u -o pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LIB=${1:-${BUILD:-$ROOT/build}/libtrimalloc.so}
VMEM_KB=${BAD_INPUT_VMEM_KB:-262144}
export LC_ALL=C

if [ ! -f "$LIB" ]; then
    echo "FAIL: $LIB does not exist (build the library first)"
    exit 1
fi
LIB=$(readlink -f "$LIB")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/trimalloc-bad.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
CC=${CC:-gcc}
for prog in bad_ptr oom oom_first tight_as; do
    # -fno-builtin: the compiler must not reason about free()/malloc() of
    # these pointers (it could drop or fold the calls).
    "$CC" -O1 -g -Wall -Wextra -Wno-free-nonheap-object -fno-builtin "$HERE/$prog.c" \
        -o "$WORK/$prog" -ldl 2>"$WORK/cc.err" ||
        { cat "$WORK/cc.err"; echo "FAIL: $prog.c does not compile"; exit 1; }
done
echo "preloading: $LIB"
ulimit -c 0

PASSES=0 FAILS=0 NOTES=0
pass() { PASSES=$((PASSES + 1)); printf 'PASS %-34s %s\n' "$1" "${2:-}"; }
fail() {
    FAILS=$((FAILS + 1))
    printf 'FAIL %-34s %s\n' "$1" "$2"
    sed 's/^/    stdout: /' "$WORK/out"
    sed 's/^/    stderr: /' "$WORK/err"
}

# run_case CASE MODE(abort|warn)
run_case() {
    local c=$1 mode=$2 call what rc ptr line expect_word word conf=()
    call=${c%%-*}
    what=${c#*-}
    case $call in usable) call=malloc_usable_size ;; realloc0) call=realloc ;; esac
    case $what in double-*) expect_word="double free of pointer" ;; *) expect_word="invalid pointer" ;; esac
    [ "$mode" = warn ] && conf=(TRIMALLOC_CONF=abort_on_error:0)
    # In a subshell that waits (not execs), so the shell's own "Aborted"
    # notice goes to /dev/null, not into the output.
    (env "${conf[@]}" LD_PRELOAD="$LIB" timeout 60 "$WORK/bad_ptr" "$c" >"$WORK/out" 2>"$WORK/err"
        exit $?) 2>/dev/null
    rc=$?
    ptr=$(sed -n 's/^pointer \(0x[0-9a-f]*\)$/\1/p' "$WORK/out")
    if [ -z "$ptr" ]; then fail "$c ($mode)" "(exit $rc before printing the pointer)"; return; fi
    if [ "$(wc -l <"$WORK/err")" != 1 ]; then
        fail "$c ($mode)" "(expected exactly one line on stderr; exit $rc)"
        return
    fi
    line=$(cat "$WORK/err")
    local suffix="" re
    [ "$mode" = warn ] && suffix=" (ignored)"
    re="^trimalloc: $call\\(\\): (invalid pointer|double free of pointer) $ptr$([ "$mode" = warn ] && echo ' \(ignored\)')\$"
    if ! [[ $line =~ $re ]]; then
        fail "$c ($mode)" "(stderr does not name $call() and $ptr as expected$suffix)"
        return
    fi
    word=${BASH_REMATCH[1]}
    if [ "$mode" = abort ]; then
        if [ $rc -ne 134 ]; then fail "$c ($mode)" "(exit status $rc, expected 134: SIGABRT)"; return; fi
        if grep -q '^call returned' "$WORK/out"; then
            fail "$c ($mode)" "(the bad call returned: reported later, not by the call)"
            return
        fi
        if grep -q '^continued' "$WORK/out"; then fail "$c ($mode)" "(the program went on)"; return; fi
    else
        if [ $rc -ne 0 ] || ! grep -q '^continued: heap OK$' "$WORK/out"; then
            fail "$c ($mode)" "(exit status $rc; the program must go on with a working heap)"
            return
        fi
    fi
    if [ "$word" != "$expect_word" ]; then
        NOTES=$((NOTES + 1))
        pass "$c ($mode)" "(note: reported as \"$word\", not \"$expect_word\")"
    else
        pass "$c ($mode)" "($word$suffix$([ "$mode" = abort ] && echo ', SIGABRT'))"
    fi
}

for call in free realloc realloc0 usable; do
    for what in stack global interior-small interior-large interior-large-page interior-huge \
        interior-huge-far mmap unallocated past-end double-tcache double-arena double-large double-huge \
        double-huge-unmapped double-huge-merged interior-remote-large-page double-remote-large; do
        for mode in abort warn; do
            run_case "$call-$what" "$mode"
        done
    done
done

# Out of memory under an address-space limit.
(ulimit -v "$VMEM_KB" && LD_PRELOAD="$LIB" timeout 300 "$WORK/oom" >"$WORK/out" 2>"$WORK/err")
rc=$?
if [ $rc -eq 0 ] && grep -q '^oom: all checks passed$' "$WORK/out" && [ ! -s "$WORK/err" ]; then
    pass "oom (ulimit -v $VMEM_KB)" "($(grep -c 'before ENOMEM' "$WORK/out") phases)"
    sed 's/^/    /' "$WORK/out"
else
    fail "oom (ulimit -v $VMEM_KB)" "(exit status $rc)"
fi

# The first calls of a process whose data limit leaves no room for the
# allocator's own metadata.
(ulimit -d 1000 && LD_PRELOAD="$LIB" timeout 60 "$WORK/oom_first" >"$WORK/out" 2>"$WORK/err")
rc=$?
if [ $rc -eq 0 ] && grep -q '^oom first calls: NULL with ENOMEM$' "$WORK/out"; then
    pass "oom first calls (ulimit -d 1000)" ""
else
    fail "oom first calls (ulimit -d 1000)" "(exit status $rc)"
    sed 's/^/    /' "$WORK/out" "$WORK/err"
fi

# A tight address-space limit, set by the program from its own VmSize:
# what fits must be had (an aligned mapping of the exact size when the
# over-map is refused).
(LD_PRELOAD="$LIB" timeout 60 "$WORK/tight_as" >"$WORK/out" 2>"$WORK/err")
rc=$?
if [ $rc -eq 0 ] && grep -q '^tight address space: ok$' "$WORK/out"; then
    pass "tight RLIMIT_AS" "($(sed -n 's/^3 MiB blocks under VmSize + 10 MiB: //p' "$WORK/out") blocks of 3 MiB in 10 MiB)"
else
    fail "tight RLIMIT_AS" "(exit status $rc)"
fi

echo "bad-input tests: $PASSES passed, $FAILS failed ($NOTES notes)"
[ "$FAILS" -eq 0 ]
