#!/usr/bin/env bash
# tests/install/run.sh [--build-dir DIR] [--keep] -- install trimalloc into a
# temporary prefix and build and run a consumer against the installed copy,
# the two ways a user would: pkg-config and find_package(trimalloc CONFIG).
#
#   1. configure and build the project in a fresh directory (Release, tests
#      and benchmarks off, so this never recurses into itself); with
#      --build-dir DIR, use the existing build in DIR instead;
#   2. cmake --install into a temporary prefix P, and check the files:
#      P/lib/libtrimalloc.so -> .so.0 -> .so.0.1.0 (soname libtrimalloc.so.0),
#      P/lib/libtrimalloc.a, P/lib/libtrimalloc_jemalloc.so (for programs built
#      against jemalloc), P/include/trimalloc.h, P/lib/pkgconfig/trimalloc.pc,
#      P/lib/cmake/trimalloc/trimalloc{Config,ConfigVersion,Targets}.cmake,
#      no prefixed library, and jemalloc's mallctl and malloc_stats_print
#      exported by libtrimalloc_jemalloc.so only (nm -D, where nm exists);
#   2b. libtrimalloc.a defines no global symbol but the exported API, and
#      a program whose own functions are named like trimalloc internals
#      (consumer/own_names.c) links with it and runs;
#   3. pkg-config: compile tests/install/consumer/consumer.c with
#      `pkg-config --cflags --libs trimalloc` (rpath from its libdir), run it;
#   4. find_package: configure tests/install/consumer with
#      -DCMAKE_PREFIX_PATH=P, build consumer_shared and consumer_static, run
#      both (consumer_shared must map P's libtrimalloc.so, not the build's);
#      and libc_only (pkg-config, both CMake targets): a program that only
#      allocates through libc must still bind libc's calls to trimalloc.
# Environment: CC (compiler for everything), CMAKE (default: cmake),
# CMAKE_GENERATOR (as cmake reads it), JOBS (default: number of CPUs).
# Prints PASS/FAIL/SKIP per step; exits non-zero if a step failed. A missing
# pkg-config skips step 3 with a message.

set -u -o pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CMAKE=${CMAKE:-cmake}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
BUILD=
KEEP=0
while [ $# -gt 0 ]; do
    case $1 in
    --build-dir) BUILD=$(cd "${2:?--build-dir needs a directory}" && pwd) || exit 2; shift ;;
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
# A make jobserver or flags inherited from an outer build must not leak in.
unset MAKEFLAGS MFLAGS MAKELEVEL DESTDIR

WORK=$(mktemp -d "${TMPDIR:-/tmp}/trimalloc-install.XXXXXX") || exit 1
if [ $KEEP = 1 ]; then
    echo "work directory (kept): $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi
PREFIX=$WORK/prefix
FAILS=0

step() { # step STATUS NAME [detail]
    printf '%-4s %-22s %s\n' "$1" "$2" "${3:-}"
    [ "$1" = FAIL ] && FAILS=$((FAILS + 1))
    return 0
}
# run LOG CMD... -- run CMD with its output in LOG; show the log on failure.
run() {
    local log=$1
    shift
    if "$@" >"$log" 2>&1; then return 0; fi
    echo "---- failed: $*"
    tail -n 60 "$log"
    echo "----"
    return 1
}
cc_flags=()
[ -n "${CC:-}" ] && cc_flags=(-DCMAKE_C_COMPILER="$CC")

# ---- 1. build ----------------------------------------------------------------
if [ -z "$BUILD" ]; then
    BUILD=$WORK/build
    if run "$WORK/configure.log" "$CMAKE" -S "$ROOT" -B "$BUILD" "${cc_flags[@]}" \
            -DCMAKE_BUILD_TYPE=Release -DTRIMALLOC_BUILD_TESTS=OFF \
            -DTRIMALLOC_BUILD_BENCH=OFF -DCMAKE_INSTALL_LIBDIR=lib &&
        run "$WORK/build.log" "$CMAKE" --build "$BUILD" --target trimalloc trimalloc_static trimalloc_jemalloc \
            -j "$JOBS"; then
        step PASS build "$BUILD"
    else
        step FAIL build
        exit 1
    fi
else
    step PASS build "using $BUILD"
fi

# ---- 2. install ----------------------------------------------------------------
if run "$WORK/install.log" "$CMAKE" --install "$BUILD" --prefix "$PREFIX"; then
    step PASS install "$PREFIX"
else
    step FAIL install
    exit 1
fi
PC=$(find "$PREFIX" -name trimalloc.pc | head -n 1)
LIBDIR=$(dirname "$(dirname "${PC:-$PREFIX/lib/pkgconfig/x}")")
missing=()
for f in "$LIBDIR/libtrimalloc.so" "$LIBDIR/libtrimalloc.so.0" "$LIBDIR/libtrimalloc.so.0.1.0" \
    "$LIBDIR/libtrimalloc.a" "$LIBDIR/libtrimalloc_jemalloc.so" "$PREFIX/include/trimalloc.h" "$LIBDIR/pkgconfig/trimalloc.pc" \
    "$LIBDIR/cmake/trimalloc/trimallocConfig.cmake" \
    "$LIBDIR/cmake/trimalloc/trimallocConfigVersion.cmake" \
    "$LIBDIR/cmake/trimalloc/trimallocTargets.cmake"; do
    [ -e "$f" ] || missing+=("${f#"$PREFIX"/}")
done
extra=$(find "$PREFIX" -name '*prefixed*')
soname=
if command -v readelf >/dev/null; then
    soname=$(readelf -d "$LIBDIR/libtrimalloc.so.0.1.0" 2>/dev/null |
        sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
fi
if [ ${#missing[@]} -gt 0 ]; then
    step FAIL installed-files "missing: ${missing[*]}"
elif [ -n "$extra" ]; then
    step FAIL installed-files "prefixed library installed: $extra"
elif [ -n "$soname" ] && [ "$soname" != libtrimalloc.so.0 ]; then
    step FAIL installed-files "soname is '$soname', expected libtrimalloc.so.0"
elif command -v nm >/dev/null &&
    nm -D --defined-only "$LIBDIR/libtrimalloc.so.0.1.0" | grep -qwE 'mallctl|malloc_stats_print'; then
    # jemalloc's names only in libtrimalloc_jemalloc.so (docs/api.md)
    step FAIL installed-files "libtrimalloc.so exports jemalloc's mallctl or malloc_stats_print"
elif command -v nm >/dev/null &&
    [ "$(nm -D --defined-only "$LIBDIR/libtrimalloc_jemalloc.so" | grep -cwE 'mallctl|malloc_stats_print')" != 2 ]; then
    step FAIL installed-files "libtrimalloc_jemalloc.so does not export mallctl and malloc_stats_print"
else
    step PASS installed-files "libdir ${LIBDIR#"$PREFIX"/}${soname:+, soname $soname}"
fi
LIB_REAL=$(readlink -f "$LIBDIR/libtrimalloc.so")
SRC=$HERE/consumer/consumer.c

# ---- 2b. the archive names only the API --------------------------------------------
# Every global symbol libtrimalloc.a defines is one libtrimalloc.so exports
# (its internals are local: CMakeLists.txt says how), and a program with
# functions named like those internals links with it and runs.
if command -v nm >/dev/null; then
    own=$(comm -23 <(nm -g --defined-only "$LIBDIR/libtrimalloc.a" 2>/dev/null |
                     awk 'NF == 3 {print $3}' | sort -u) \
                   <(nm -D --defined-only "$LIB_REAL" | awk '{print $3}' | sort -u))
    if [ -n "$own" ]; then
        step FAIL static-symbols "global in libtrimalloc.a, not exported by the .so: $(echo $own | head -c 300)"
    else
        step PASS static-symbols "libtrimalloc.a defines only the exported API"
    fi
else
    step SKIP static-symbols "nm is not installed"
fi
if run "$WORK/own-names.log" "${CC:-cc}" -O2 -I"$PREFIX/include" "$HERE/consumer/own_names.c" \
        -o "$WORK/own_names" -Wl,--undefined=malloc "$LIBDIR/libtrimalloc.a" -pthread &&
    out=$("$WORK/own_names" 2>&1); then
    step PASS static-names "$out"
else
    echo "${out:-}"
    step FAIL static-names "a program with functions named like trimalloc internals"
fi

# ---- 3. pkg-config ---------------------------------------------------------------
if ! command -v pkg-config >/dev/null; then
    step SKIP pkg-config "pkg-config is not installed"
else
    export PKG_CONFIG_PATH=$LIBDIR/pkgconfig
    ver=$(pkg-config --modversion trimalloc 2>&1)
    flags=$(pkg-config --cflags --libs trimalloc 2>&1)
    pc_libdir=$(pkg-config --variable=libdir trimalloc 2>&1)
    if [ "$ver" != 0.1.0 ]; then
        step FAIL pkg-config "modversion: $ver"
    elif [ "$(readlink -f "$pc_libdir")" != "$(readlink -f "$LIBDIR")" ]; then
        step FAIL pkg-config "libdir $pc_libdir is not $LIBDIR"
    # shellcheck disable=SC2086 # flags are split on purpose
    elif ! run "$WORK/pc-cc.log" "${CC:-cc}" -O2 -Wall -Wextra "$SRC" -o "$WORK/consumer_pc" \
            $flags -Wl,-rpath,"$pc_libdir"; then
        step FAIL pkg-config "compile/link with: $flags"
    elif ! out=$("$WORK/consumer_pc" "$LIB_REAL" 2>&1); then
        echo "$out"
        step FAIL pkg-config-run
    else
        step PASS pkg-config "$flags"
        step PASS pkg-config-run "$out"
        # a program that allocates only through libc keeps trimalloc too
        # shellcheck disable=SC2086
        if run "$WORK/pc-libc-only.log" "${CC:-cc}" -O2 "$HERE/consumer/libc_only.c" \
                -o "$WORK/libc_only_pc" $flags -Wl,-rpath,"$pc_libdir" -ldl &&
            out=$("$WORK/libc_only_pc" 2>&1); then
            step PASS pkg-config-libc-only "$out"
        else
            echo "$out"
            step FAIL pkg-config-libc-only
        fi
    fi
    unset PKG_CONFIG_PATH
fi

# ---- 4. find_package -----------------------------------------------------------------
CB=$WORK/consumer-build
if ! run "$WORK/consumer-configure.log" "$CMAKE" -S "$HERE/consumer" -B "$CB" "${cc_flags[@]}" \
        -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_BUILD_TYPE=Release ||
    ! run "$WORK/consumer-build.log" "$CMAKE" --build "$CB" -j "$JOBS"; then
    step FAIL find_package
else
    step PASS find_package "$(sed -n 's/^-- \(trimalloc .* from .*\)/\1/p' \
        "$WORK/consumer-configure.log")"
    for exe in consumer_shared consumer_static libc_only_shared libc_only_static; do
        arg=()
        [ $exe = consumer_shared ] && arg=("$LIB_REAL")
        if out=$("$CB/$exe" "${arg[@]}" 2>&1); then
            step PASS "$exe" "$out"
        else
            echo "$out"
            step FAIL "$exe"
        fi
    done
fi

if [ $FAILS -gt 0 ]; then
    echo "install test: $FAILS step(s) FAILED"
    exit 1
fi
echo "install test: all steps passed"
