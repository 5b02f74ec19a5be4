#!/usr/bin/env bash
# tests/preload/server.sh [LIB] -- a real server under load with trimalloc
# preloaded (LD_PRELOAD=LIB, default build/libtrimalloc.so). Only 127.0.0.1,
# on a free port; every server is shut down at the end.
#
#   redis      redis-server. Debian links it with libjemalloc.so.2, but it
#              calls the plain names (malloc, free, realloc,
#              malloc_usable_size), which the preload takes over. Run
#              twice. With libtrimalloc.so its mallctl calls and one
#              size-class probe (nallocx, in sdsResize, compared with our
#              malloc_usable_size) reach jemalloc: the case checks that our
#              malloc serves redis (libtrimalloc.so in /proc/PID/maps,
#              trimalloc's statistics at exit, TRIMALLOC_CONF=stats_print:1,
#              show the data set, and jemalloc's own count, INFO
#              allocator_allocated, stays far below redis's used_memory).
#              With libtrimalloc_jemalloc.so (redis-jemalloc-ctl), which
#              answers mallctl (src/mallctl.c): a trimalloc-bg thread runs
#              (redis asks for one), MEMORY PURGE runs _heapmin (counted at
#              exit), INFO allocator_allocated and MEMORY MALLOC-STATS
#              (malloc_stats_print) are ours.
#              Load: redis-benchmark -n 20000 over ten commands (50 clients),
#              then a python3 client stores 2000 values of 1 B .. 3 MiB,
#              reads every one back byte for byte, deletes half, checks the
#              rest. Shutdown with SHUTDOWN NOSAVE: exit status 0.
#   memcached  memcached (libc malloc, 4 worker threads): four python3
#              client threads store, read back and delete 3000 values of
#              1 B .. 300 KiB with verification; then SIGTERM: exit status 0.
# A case PASSes if the client's results are correct, the server exited
# cleanly and printed no trimalloc error. A server that is not installed is
# skipped with a message (apt-get install redis-server memcached).
# Exits non-zero if a case failed.

set -u -o pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LIB=${1:-${BUILD:-$ROOT/build}/libtrimalloc.so}
TIMEOUT=${SERVER_TIMEOUT:-300}
export LC_ALL=C

if [ ! -f "$LIB" ]; then
    echo "FAIL: $LIB does not exist (build the library first)"
    exit 1
fi
LIB=$(readlink -f "$LIB")
# the flavour with jemalloc's mallctl, built beside it (CMakeLists.txt)
JLIB=$(dirname "$LIB")/libtrimalloc_jemalloc.so
if ! command -v python3 >/dev/null 2>&1; then
    echo "SKIP: python3 is needed for the clients"
    exit 0
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/trimalloc-server.XXXXXX")
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
echo "preloading: $LIB"

PASSES=0 FAILS=0 SKIPS=0
result() {
    printf '%-4s %-10s %s\n' "$1" "$2" "${3:-}"
    case $1 in
    PASS) PASSES=$((PASSES + 1)) ;;
    FAIL) FAILS=$((FAILS + 1)) ;;
    SKIP) SKIPS=$((SKIPS + 1)) ;;
    esac
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT -- until something accepts on 127.0.0.1:PORT (60 s at most).
wait_port() {
    python3 - "$1" <<'EOF'
import socket, sys, time
end = time.time() + 60
while time.time() < end:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
EOF
}

# preload_active PID -- libtrimalloc is mapped in the process.
preload_active() {
    grep -q libtrimalloc "/proc/$1/maps" 2>/dev/null
}

# trimalloc_errors FILE -- lines where trimalloc reports a problem.
trimalloc_errors() {
    grep -E '^trimalloc: .*(invalid pointer|double free|corruption|fatal|assertion|warning)' "$1"
}

# ---- redis --------------------------------------------------------------------
# case_redis plain|jemalloc -- plain: libtrimalloc.so, whose malloc serves
# redis while its mallctl calls reach jemalloc; jemalloc:
# libtrimalloc_jemalloc.so, which answers them too.
case_redis() {
    local flavour=$1 lib=$LIB name=redis port pid rc info used jem
    if [ "$flavour" = jemalloc ]; then
        lib=$JLIB; name=redis-jemalloc-ctl
        if [ ! -f "$lib" ]; then
            result FAIL $name "($lib not built: it is built with libtrimalloc.so)"
            return
        fi
    fi
    port=$(free_port)
    (cd "$WORK" && exec env LD_PRELOAD="$lib" TRIMALLOC_CONF=stats_print:1 \
        timeout "$TIMEOUT" redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes \
        --save '' --appendonly no --dir "$WORK" --logfile "$WORK/redis.log" \
        --io-threads 2 --lazyfree-lazy-user-del yes >"$WORK/redis.out" 2>"$WORK/redis.err") &
    SERVER_PID=$!
    if ! wait_port "$port"; then
        result FAIL $name "(redis-server did not start listening on 127.0.0.1:$port)"
        tail -n 20 "$WORK/redis.log" "$WORK/redis.err" 2>/dev/null | sed 's/^/    /'
        kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
        return
    fi
    pid=$(pgrep -f "redis-server 127.0.0.1:$port" | head -n 1)
    [ -n "$pid" ] || pid=$(pgrep -P "$SERVER_PID" | head -n 1)
    local ok=1 why="" detail=""
    if ! preload_active "${pid:-none}"; then ok=0; why="$why libtrimalloc.so not mapped in redis-server;"; fi

    timeout "$TIMEOUT" redis-benchmark -h 127.0.0.1 -p "$port" -n 20000 -q -r 10000 -d 100 \
        -t set,get,incr,lpush,lpop,sadd,hset,zadd,lrange_100,mset 2>&1 |
        tr '\r' '\n' | grep 'requests per second' | grep -v 'rps=' >"$WORK/bench.out"
    if [ "$(wc -l <"$WORK/bench.out")" -lt 10 ]; then ok=0; why="$why redis-benchmark did not complete every test;"; fi

    timeout "$TIMEOUT" python3 - "$port" >"$WORK/client.out" 2>&1 <<'EOF'
import hashlib, socket, sys

port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port))
f = s.makefile("rb")

def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out

def reply():
    line = f.readline()
    t, rest = line[:1], line[1:-2]
    if t in (b"+", b":"):
        return rest
    if t == b"-":
        raise SystemExit("redis error: %r" % rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    raise SystemExit("unexpected reply %r" % line)

SIZES = [1, 10, 100, 1000, 5000, 33000, 100000]
def value(i):
    size = 3 << 20 if i % 500 == 7 else 200000 if i % 50 == 3 else SIZES[i % len(SIZES)]
    seed = hashlib.sha256(b"%d" % i).digest()
    return (seed * (size // 32 + 1))[:size]

N = 2000
def batch(cmds):
    s.sendall(b"".join(cmds))
    return [reply() for _ in cmds]

for lo in range(0, N, 100):
    r = batch([cmd("SET", "key:%d" % i, value(i)) for i in range(lo, lo + 100)])
    assert all(x == b"OK" for x in r), r
bad = 0
for lo in range(0, N, 100):
    r = batch([cmd("GET", "key:%d" % i) for i in range(lo, lo + 100)])
    bad += sum(1 for k, x in enumerate(r) if x != value(lo + k))
r = batch([cmd("DEL", "key:%d" % i) for i in range(0, N, 2)])
assert all(x == b"1" for x in r), "DEL failed"
for lo in range(1, N, 200):
    r = batch([cmd("GET", "key:%d" % i) for i in range(lo, min(N, lo + 200), 2)])
    bad += sum(1 for k, x in enumerate(r) if x != value(lo + 2 * k))
dbsize = batch([cmd("DBSIZE")])[0]
total = sum(len(value(i)) for i in range(N))
print("stored %d values (%d MiB), read back, %d wrong; dbsize %s" % (N, total >> 20, bad, dbsize.decode()))
sys.exit(1 if bad else 0)
EOF
    rc=$?
    if [ $rc -ne 0 ]; then ok=0; why="$why client failed ($(tail -n 1 "$WORK/client.out"));"; fi

    info=$(timeout 30 redis-cli -h 127.0.0.1 -p "$port" info memory | tr -d '\r')
    used=$(sed -n 's/^used_memory://p' <<<"$info")
    jem=$(sed -n 's/^allocator_allocated://p' <<<"$info")
    if [ "$flavour" = jemalloc ]; then
        # redis asked "jemalloc" for a background purging thread at
        # start-up (jemalloc-bg-thread yes): our mallctl starts ours.
        local bg=0 purge
        grep -qx 'trimalloc-bg' /proc/"${pid:-none}"/task/*/comm 2>/dev/null && bg=1
        if [ $bg = 0 ]; then ok=0; why="$why no trimalloc-bg thread: redis's mallctl(background_thread) did not reach trimalloc;"; fi
        # MEMORY PURGE is mallctl("arena.<n>.purge"): our _heapmin (counted at exit)
        purge=$(timeout 30 redis-cli -h 127.0.0.1 -p "$port" memory purge | tr -d '\r')
        if [ "$purge" != OK ]; then ok=0; why="$why MEMORY PURGE answered '$purge';"; fi
        # MEMORY MALLOC-STATS is malloc_stats_print: trimalloc's report
        if ! timeout 30 redis-cli -h 127.0.0.1 -p "$port" memory malloc-stats | grep -q '^trimalloc statistics'; then
            ok=0; why="$why MEMORY MALLOC-STATS did not print trimalloc's report;"
        fi
    fi
    timeout 30 redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1
    wait "$SERVER_PID"
    rc=$?
    SERVER_PID=
    if [ $rc -ne 0 ]; then ok=0; why="$why redis-server exit status $rc;"; fi
    grep -q 'ready to exit, bye bye' "$WORK/redis.log" || { ok=0; why="$why no clean shutdown in the log;"; }
    # Our malloc served redis: trimalloc's statistics saw the data, jemalloc's did not.
    local tm_alloc
    tm_alloc=$(sed -n 's/^ *allocated *\([0-9]*\) bytes.*/\1/p' "$WORK/redis.err" | head -n 1)
    if [ -z "$tm_alloc" ] || [ "$tm_alloc" -lt 1000000 ]; then
        ok=0; why="$why trimalloc's statistics at exit show ${tm_alloc:-no} allocated bytes;"
    fi
    if [ "$flavour" = jemalloc ]; then
        local hm_calls
        hm_calls=$(sed -n 's/^ *_heapmin calls *\([0-9]*\),.*/\1/p' "$WORK/redis.err" | head -n 1)
        if [ "${hm_calls:-0}" -lt 1 ]; then ok=0; why="$why MEMORY PURGE did not run _heapmin (${hm_calls:-no} calls at exit);"; fi
        # INFO's allocator_allocated comes from mallctl("stats.allocated"):
        # ours, so it counts redis's data
        if [ -z "$used" ] || [ -z "$jem" ] || [ "$jem" -lt $((used / 2)) ]; then
            ok=0; why="$why INFO allocator_allocated ${jem:-?} against used_memory ${used:-?}: trimalloc's mallctl did not answer;"
        fi
        detail="allocator_allocated $jem (trimalloc's mallctl); background thread, MEMORY PURGE ran _heapmin, MEMORY MALLOC-STATS is ours"
    else
        # jemalloc's own count (INFO allocator_allocated) stays far below
        # redis's data: our malloc served it
        if [ -z "$used" ] || [ -z "$jem" ] || [ "$jem" -gt $((used / 10)) ]; then
            ok=0; why="$why jemalloc holds ${jem:-?} of redis's ${used:-?} bytes: the preload does not serve redis;"
        fi
        detail="jemalloc's allocator_allocated $jem"
    fi
    if trimalloc_errors "$WORK/redis.err" >/dev/null; then ok=0; why="$why trimalloc reported errors;"; fi
    if [ $ok = 1 ]; then
        result PASS $name "($(cat "$WORK/client.out"); redis-benchmark: $(wc -l <"$WORK/bench.out") tests, e.g. $(head -n 1 "$WORK/bench.out" | sed 's/, p50.*//;s/^ *//'); used_memory $used, $detail; trimalloc allocated $tm_alloc at exit)"
    else
        result FAIL $name "($why)"
        for f in bench.out client.out redis.err redis.log; do
            tail -n 15 "$WORK/$f" 2>/dev/null | sed "s/^/    $f: /"
        done
        trimalloc_errors "$WORK/redis.err" | head -n 5 | sed 's/^/    /'
    fi
}

# ---- memcached ------------------------------------------------------------------
case_memcached() {
    local port rc user=()
    port=$(free_port)
    [ "$(id -u)" = 0 ] && user=(-u root)
    (exec env LD_PRELOAD="$LIB" timeout "$TIMEOUT" memcached -l 127.0.0.1 -p "$port" -U 0 -t 4 \
        -m 512 -c 64 "${user[@]}" >"$WORK/mc.out" 2>"$WORK/mc.err") &
    SERVER_PID=$!
    if ! wait_port "$port"; then
        result FAIL memcached "(memcached did not start listening on 127.0.0.1:$port)"
        sed 's/^/    /' "$WORK/mc.err"
        kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
        return
    fi
    local ok=1 why="" pid
    pid=$(pgrep -P "$SERVER_PID" memcached | head -n 1)
    [ -n "$pid" ] || pid=$(pgrep -f "memcached -l 127.0.0.1 -p $port" | head -n 1)
    if ! preload_active "${pid:-none}"; then ok=0; why="$why libtrimalloc.so not mapped in memcached;"; fi
    timeout "$TIMEOUT" python3 - "$port" >"$WORK/client.out" 2>&1 <<'EOF'
import hashlib, socket, sys, threading

port = int(sys.argv[1])
SIZES = [1, 7, 100, 900, 4000, 20000, 70000, 300000]
def value(i):
    size = SIZES[i % len(SIZES)] if i % 13 else 33000
    seed = hashlib.sha256(b"mc%d" % i).digest()
    return (seed * (size // 32 + 1))[:size]

errors = []
def worker(t, n):
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    keys = range(t, n, 4)
    bad = 0
    for i in keys:
        v = value(i)
        s.sendall(b"set k%d 0 0 %d\r\n%s\r\n" % (i, len(v), v))
        r = f.readline()
        if r != b"STORED\r\n":
            errors.append("set k%d: %r" % (i, r))
            return
    for i in keys:
        s.sendall(b"get k%d\r\n" % i)
        head = f.readline().split()
        if len(head) != 4 or head[0] != b"VALUE":
            errors.append("get k%d: %r" % (i, head))
            return
        data = f.read(int(head[3]) + 2)[:-2]
        if f.readline() != b"END\r\n":
            errors.append("get k%d: no END" % i)
            return
        bad += data != value(i)
    for i in keys:
        if i % 2 == 0:
            s.sendall(b"delete k%d\r\n" % i)
            if f.readline() != b"DELETED\r\n":
                errors.append("delete k%d" % i)
                return
    if bad:
        errors.append("%d values read back wrong on connection %d" % (bad, t))
    s.close()

N = 3000
threads = [threading.Thread(target=worker, args=(t, N)) for t in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
total = sum(len(value(i)) for i in range(N))
if errors:
    print("errors:", errors[:5])
    sys.exit(1)
print("4 connections stored, read back and deleted %d values (%d MiB), all correct" % (N, total >> 20))
EOF
    rc=$?
    if [ $rc -ne 0 ]; then ok=0; why="$why client failed ($(tail -n 1 "$WORK/client.out"));"; fi
    kill -TERM "${pid:-$SERVER_PID}" 2>/dev/null
    wait "$SERVER_PID"
    rc=$?
    SERVER_PID=
    if [ $rc -ne 0 ]; then ok=0; why="$why memcached exit status $rc after SIGTERM;"; fi
    if trimalloc_errors "$WORK/mc.err" >/dev/null; then ok=0; why="$why trimalloc reported errors;"; fi
    if [ $ok = 1 ]; then
        result PASS memcached "($(cat "$WORK/client.out"); exit status 0 after SIGTERM)"
    else
        result FAIL memcached "($why)"
        tail -n 15 "$WORK/client.out" "$WORK/mc.err" 2>/dev/null | sed 's/^/    /'
    fi
}

if command -v redis-server >/dev/null 2>&1 && command -v redis-benchmark >/dev/null 2>&1 &&
    command -v redis-cli >/dev/null 2>&1; then
    case_redis plain
    case_redis jemalloc
else
    result SKIP redis "(redis-server/redis-benchmark/redis-cli not installed: apt-get install redis-server)"
    result SKIP redis-jemalloc-ctl "(as above)"
fi
if command -v memcached >/dev/null 2>&1; then
    case_memcached
else
    result SKIP memcached "(memcached not installed: apt-get install memcached)"
fi

echo "server tests: $PASSES passed, $FAILS failed, $SKIPS skipped"
[ "$FAILS" -eq 0 ]
