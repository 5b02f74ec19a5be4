# scripts/common.sh -- helpers shared by scripts/test.sh, scripts/demo.sh and
# tests/preload/run.sh. Source it; it defines functions and a few variables and
# runs nothing else.
#
#   TM_ROOT              the repository root
#   TM_JOBS              parallel build/test jobs (default 2; env TRIMALLOC_JOBS)
#   tm_section TITLE     print a section header
#   tm_note/tm_warn/tm_die MESSAGE
#   tm_ensure_required   make sure every package the tests need is installed
#   tm_ensure_build      make sure what a Release build needs is installed
#   tm_ensure_optional   try to install the benchmark peers (jemalloc, tcmalloc,
#                        mimalloc, gnuplot); never fails, notes what is missing
#   tm_have_pkg PKG      0 if PKG (a Debian package name) is usable here
#   tm_cmake_build DIR TYPE [cmake args...]   configure + build a tree
#
# Dependencies are checked with dpkg-query / command -v. What is missing is
# installed with apt-get when running as root (apt-get update first, once, and
# only if something is missing); otherwise the scripts stop with a message
# naming the packages. TRIMALLOC_NO_INSTALL=1 forbids installing.

# Guard against being sourced twice.
if [ -n "${TM_COMMON_SOURCED:-}" ]; then
    return 0
fi
TM_COMMON_SOURCED=1

TM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The demo and most tests preload the library, and the loader splits
# LD_PRELOAD at spaces and colons: from such a path every preloaded run
# would quietly get glibc's malloc (an outside tester, 2026-12-07).
case $TM_ROOT in
*[[:space:]:]*)
    echo "$(basename "$0"): the repository is at '$TM_ROOT', whose path has a space or a colon;" >&2
    echo "LD_PRELOAD, which the demo and the tests use, cannot name a library there (the loader" >&2
    echo "splits it at spaces and colons). Clone or move the repository to a path without them." >&2
    exit 2
    ;;
esac
TM_JOBS=${TRIMALLOC_JOBS:-2}

# Packages the test suite needs. make and libc6-dev are named explicitly
# because apt-get runs with --no-install-recommends (cmake and gcc only
# recommend them); libclang-rt-dev holds clang's sanitizer runtimes.
TM_REQUIRED_PKGS=(cmake make gcc g++ libc6-dev clang libclang-rt-dev libcmocka-dev
                  pkg-config valgrind python3 sqlite3 redis-server memcached)
# What a plain Release build of the library needs (demo.sh).
TM_BUILD_PKGS=(cmake make gcc libc6-dev pkg-config)
# Benchmark peers and plotting: nice to have.
TM_OPTIONAL_PKGS=(libjemalloc-dev libgoogle-perftools-dev libmimalloc-dev gnuplot-nox)

TM_APT_UPDATED=0

tm_section() {
    printf '\n==================== %s ====================\n' "$*"
}

tm_note() {
    printf '%s\n' "note: $*"
}

tm_warn() {
    printf '%s\n' "warning: $*" >&2
}

tm_die() {
    printf '%s\n' "error: $*" >&2
    exit 1
}

# 0 if the Debian package is installed (not merely known to dpkg).
tm_dpkg_installed() {
    command -v dpkg-query >/dev/null 2>&1 || return 1
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# 0 if what package $1 provides is usable. Packages that provide a command are
# checked by the command (so a python3 or cmake from elsewhere counts); library
# packages by dpkg, or pkg-config where that knows the library.
tm_have_pkg() {
    local pkg=$1
    case $pkg in
    cmake | make | gcc | g++ | clang | pkg-config | valgrind | python3 | sqlite3)
        command -v "$pkg" >/dev/null 2>&1
        ;;
    gnuplot-nox)
        command -v gnuplot >/dev/null 2>&1
        ;;
    libc6-dev)
        tm_dpkg_installed "$pkg" || [ -e /usr/include/stdio.h ]
        ;;
    libcmocka-dev)
        tm_dpkg_installed "$pkg" || pkg-config --exists cmocka 2>/dev/null
        ;;
    libjemalloc-dev)
        tm_dpkg_installed "$pkg" || pkg-config --exists jemalloc 2>/dev/null
        ;;
    libgoogle-perftools-dev)
        tm_dpkg_installed "$pkg" || pkg-config --exists libtcmalloc 2>/dev/null
        ;;
    libclang-rt-dev)
        # Without dpkg there is no way to tell; test.sh probes the compiler.
        tm_dpkg_installed "$pkg" || tm_dpkg_installed libclang-rt-14-dev ||
            ! command -v dpkg-query >/dev/null 2>&1
        ;;
    *)
        tm_dpkg_installed "$pkg"
        ;;
    esac
}

# Print the packages among "$@" that are missing, space separated.
tm_missing_pkgs() {
    local pkg missing=()
    for pkg in "$@"; do
        tm_have_pkg "$pkg" || missing+=("$pkg")
    done
    printf '%s' "${missing[*]}"
}

# 0 if this process may install packages.
tm_can_install() {
    [ "${TRIMALLOC_NO_INSTALL:-0}" != 1 ] &&
        [ "$(id -u)" = 0 ] &&
        command -v apt-get >/dev/null 2>&1
}

# apt-get with no prompts; output goes to a log that is shown on failure.
tm_apt() {
    local log rc
    log=$(mktemp)
    DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0 \
        -o DPkg::Lock::Timeout=300 "$@" >"$log" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then
        tail -n 30 "$log" >&2
    fi
    rm -f "$log"
    return $rc
}

# Install packages "$@" (apt-get update once first). Tries them together,
# then one at a time so that one unavailable package does not block the rest.
tm_apt_install() {
    local pkg
    if [ "$TM_APT_UPDATED" = 0 ]; then
        echo "running apt-get update"
        tm_apt update || tm_warn "apt-get update failed; trying to install anyway"
        TM_APT_UPDATED=1
    fi
    echo "installing: $*"
    if ! tm_apt install --no-install-recommends "$@"; then
        for pkg in "$@"; do
            tm_apt install --no-install-recommends "$pkg" || tm_warn "could not install $pkg"
        done
    fi
}

# Make sure every package in "$@" is there, installing as root; stop with a
# message naming what is missing otherwise.
tm_ensure_pkgs() {
    local missing
    missing=$(tm_missing_pkgs "$@")
    if [ -z "$missing" ]; then
        echo "dependencies present: $*"
        return 0
    fi
    echo "missing: $missing"
    if tm_can_install; then
        # shellcheck disable=SC2086 # word splitting intended
        tm_apt_install $missing
        missing=$(tm_missing_pkgs "$@")
        [ -z "$missing" ] && return 0
    fi
    printf 'error: missing packages: %s\n' "$missing" >&2
    printf 'install them with:  sudo apt-get install -y %s\n' "$missing" >&2
    printf '(or run this script as root and it installs them itself)\n' >&2
    return 1
}

tm_ensure_required() {
    tm_ensure_pkgs "${TM_REQUIRED_PKGS[@]}"
}

tm_ensure_build() {
    tm_ensure_pkgs "${TM_BUILD_PKGS[@]}"
}

# Benchmark peers: install them where we can, otherwise say what is skipped.
# Always returns 0.
tm_ensure_optional() {
    local missing
    missing=$(tm_missing_pkgs "${TM_OPTIONAL_PKGS[@]}")
    if [ -n "$missing" ] && tm_can_install; then
        # shellcheck disable=SC2086
        tm_apt_install $missing
        missing=$(tm_missing_pkgs "${TM_OPTIONAL_PKGS[@]}")
    fi
    if [ -n "$missing" ]; then
        tm_note "optional packages not installed: $missing; the comparisons that need them are skipped (install with: sudo apt-get install -y $missing)"
    fi
    return 0
}

# tm_cmake_build DIR BUILD_TYPE [extra cmake args...]
# Configure (if needed) and build the tree in DIR. If DIR was configured with
# another C compiler than the one asked for (CC), start it afresh.
tm_cmake_build() {
    local dir=$1 type=$2
    shift 2
    if [ -n "${CC:-}" ] && [ -f "$dir/CMakeCache.txt" ]; then
        local want have
        want=$(command -v "$CC" 2>/dev/null || echo "$CC")
        have=$(sed -n 's/^CMAKE_C_COMPILER:[A-Z]*=//p' "$dir/CMakeCache.txt")
        if [ -n "$have" ] && [ "$(readlink -f "$have")" != "$(readlink -f "$want")" ]; then
            echo "compiler changed ($have -> $want): removing $dir"
            rm -rf "$dir"
        fi
    fi
    cmake -S "$TM_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE="$type" "$@" &&
        cmake --build "$dir" -j"$TM_JOBS"
}
