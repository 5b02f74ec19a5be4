#!/usr/bin/env python3
"""A threaded allocation workload for the LD_PRELOAD tests (tests/preload/run.sh).

Threads build dicts, lists, strings and bytes, round-trip JSON, hash, sort,
grow and shrink buffers (realloc), and hand objects to one another through a
queue so that memory allocated by one thread is freed by another. A forked
child does the same work alone. Everything printed is deterministic, so the
output with and without trimalloc preloaded must be identical.

    workload.py            run the workload, print one digest per task
    workload.py --maps     report whether libtrimalloc.so is mapped into this
                           process and, if _heapmin exists, call it while
                           threads are blocked holding data, then verify it
"""

import ctypes
import gc
import hashlib
import json
import os
import queue
import random
import sys
import threading
import warnings
import zlib

NTHREADS = 8


def digest(obj):
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:16]


def build_task(seed):
    """Dicts, lists, strings; JSON round trips; sorting; hashing."""
    rng = random.Random(seed)
    records = []
    for i in range(6000):
        rec = {
            "id": i,
            "name": "item-%d-%s" % (i, "x" * rng.randrange(0, 40)),
            "tags": [rng.choice("abcdefgh") * rng.randrange(1, 6) for _ in range(rng.randrange(0, 8))],
            "score": rng.randrange(0, 100000) / 7.0,
            "nested": {"k%d" % j: list(range(j)) for j in range(rng.randrange(0, 6))},
        }
        records.append(rec)
    text = json.dumps(records, sort_keys=True)
    back = json.loads(text)
    assert back == records
    back.sort(key=lambda r: (r["score"], r["id"]))
    words = " ".join(r["name"] for r in back).split("-")
    counts = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    h = hashlib.sha256()
    for r in back:
        h.update(json.dumps(r, sort_keys=True).encode())
    del records, back
    return "build seed=%d json=%d words=%d distinct=%d sha=%s" % (
        seed, len(text), len(words), len(counts), h.hexdigest()[:16])


def buffer_task(seed):
    """Growing and shrinking buffers: realloc paths, large blocks, zlib."""
    rng = random.Random(seed)
    buf = bytearray()
    for i in range(3000):
        buf += bytes([i & 0xFF]) * rng.randrange(1, 2000)
        if i % 500 == 499:
            del buf[: len(buf) // 2]
    big = bytes(buf) * 8  # a few MiB: the huge-block path
    comp = zlib.compress(big, 6)
    assert zlib.decompress(comp) == big
    strings = ["%08x" % rng.getrandbits(32) * rng.randrange(1, 50) for _ in range(20000)]
    strings.sort()
    joined = "|".join(strings)
    return "buffer seed=%d len=%d big=%d comp=%d joined=%d sha=%s" % (
        seed, len(buf), len(big), len(comp), len(joined),
        hashlib.sha256(joined.encode()).hexdigest()[:16])


def handoff_task(seed):
    """Producer/consumer: objects made in one thread are freed in another."""
    q = queue.Queue(maxsize=256)
    out = []

    def producer():
        rng = random.Random(seed)
        for i in range(20000):
            q.put({"i": i, "payload": "p" * rng.randrange(1, 300), "list": [i] * rng.randrange(0, 20)})
        q.put(None)

    def consumer():
        total = 0
        n = 0
        while True:
            item = q.get()
            if item is None:
                break
            total += item["i"] + len(item["payload"]) + len(item["list"])
            n += 1
        out.append((n, total))

    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return "handoff seed=%d items=%d total=%d" % (seed, out[0][0], out[0][1])


TASKS = [build_task, buffer_task, handoff_task]


def run_threads():
    results = [None] * NTHREADS
    errors = []

    def worker(idx):
        try:
            results[idx] = [TASKS[(idx + k) % len(TASKS)](idx * 100 + k) for k in range(len(TASKS))]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append("thread %d: %r" % (idx, exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(NTHREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for e in errors:
            print(e)
        sys.exit(1)
    for idx, lines in enumerate(results):
        for line in sorted(lines):
            print("thread %d: %s" % (idx, line))


def run_fork():
    """Fork while other threads allocate; the child works and reports."""
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            _ = [str(i) * 10 for i in range(2000)]

    churners = [threading.Thread(target=churn) for _ in range(3)]
    for t in churners:
        t.start()
    results = []
    for k in range(4):
        r, w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fork() with threads: fine here
            pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                msg = build_task(1000 + k) + " | " + buffer_task(1000 + k)
            except BaseException as exc:  # noqa: BLE001
                msg = "child error %r" % (exc,)
            os.write(w, msg.encode())
            os.close(w)
            os._exit(0)
        os.close(w)
        chunks = []
        while True:
            c = os.read(r, 65536)
            if not c:
                break
            chunks.append(c)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        results.append("fork %d: status=%d %s" % (k, status, b"".join(chunks).decode()))
    stop.set()
    for t in churners:
        t.join()
    for line in results:
        print(line)


def maps_mode():
    with open("/proc/self/maps") as f:
        maps = f.read()
    print("libtrimalloc mapped: %s" % ("yes" if "libtrimalloc" in maps else "no"))
    libc = ctypes.CDLL(None)
    try:
        heapmin = libc._heapmin
    except AttributeError:
        print("_heapmin: not available")
        return
    heapmin.restype = ctypes.c_int
    # Threads allocate, free half, then block holding the rest while the main
    # thread calls _heapmin; afterwards they check their data.
    ready = threading.Barrier(NTHREADS + 1)
    go = threading.Event()
    bad = []

    def holder(idx):
        data = [bytes([idx + i & 0xFF]) * (16 + (i * 37) % 5000) for i in range(4000)]
        del data[::2]
        gc.collect()
        ready.wait()
        go.wait()
        for j, b in enumerate(data):
            i = 2 * j + 1
            if b != bytes([idx + i & 0xFF]) * (16 + (i * 37) % 5000):
                bad.append((idx, i))
                break

    threads = [threading.Thread(target=holder, args=(i,)) for i in range(NTHREADS)]
    for t in threads:
        t.start()
    ready.wait()
    rc = heapmin()
    go.set()
    for t in threads:
        t.join()
    print("_heapmin with %d blocked threads: returned %d, data %s" % (
        NTHREADS, rc, "intact" if not bad else "CORRUPT %r" % bad))


def main():
    if sys.argv[1:] == ["--maps"]:
        maps_mode()
        return
    run_threads()
    run_fork()
    gc.collect()
    print("digest: %s" % digest([build_task(7), buffer_task(7)]))


if __name__ == "__main__":
    main()
