#!/usr/bin/env python3
"""tests/fuzz/make_corpus.py -- write the seed corpus tests/fuzz/corpus/.

Each seed is a small program in fuzz_ops.c's input format (see the comment
at the top of that file): an opcode byte (operation | thread << 4) and its
arguments. The seeds give the fuzzer one example of every operation, on
every thread, with small, large and huge sizes; it mutates from there.
Run it after changing the input format: python3 tests/fuzz/make_corpus.py
"""
import os

(MALLOC, CALLOC, REALLOC, ALIGNED, FREE, FREE_SIZED, HEAPMIN, HEAPCHK, HEAPWALK, USABLE,
 OPTION, FAULT, RESPAWN, BAD, REALLOCARRAY, FREE_MANY) = range(16)


def sz(n):
    """A size argument: the shortest selector that encodes n."""
    if n < 256:
        return bytes([0, n])
    if n < 65536:
        return bytes([1, n & 255, n >> 8])
    return bytes([3, n & 255, (n >> 8) & 255, n >> 16])


def op(code, thread=0, *args):
    out = bytes([code | thread << 4])
    for a in args:
        out += a if isinstance(a, bytes) else bytes([a])
    return out


SEEDS = {
    # small/large/huge blocks made on one thread, checked and freed on others
    "basic": [
        op(MALLOC, 0, 0, sz(24)), op(MALLOC, 1, 1, sz(1000)), op(MALLOC, 2, 2, sz(40000)),
        op(MALLOC, 0, 3, sz(3 << 20)), op(CALLOC, 1, 4, 3, sz(300)), op(USABLE, 2, 1),
        op(HEAPCHK, 1), op(HEAPWALK, 2), op(FREE, 1, 0), op(FREE_SIZED, 2, 1),
        op(FREE, 0, 2), op(FREE_SIZED, 1, 3), op(HEAPWALK, 0),
    ],
    # one block grown through the small, large and huge ranges and back
    "realloc": [
        op(REALLOC, 0, 5, sz(10)), op(REALLOC, 1, 5, sz(5000)), op(REALLOC, 2, 5, sz(33000)),
        op(REALLOC, 0, 5, sz(1 << 20)), op(REALLOC, 1, 5, sz(3 << 20)),
        op(REALLOCARRAY, 2, 5, sz(4 << 20)), op(REALLOC, 0, 5, sz(2 << 20)),
        op(REALLOC, 1, 5, sz(100)), op(REALLOC, 2, 5, sz(0)), op(HEAPCHK, 0),
    ],
    # every aligned variant, alignments from 1 to 8 MiB
    "aligned": [
        op(ALIGNED, 0, 6, 0, 6, sz(100)), op(ALIGNED, 1, 7, 1, 12, sz(5000)),
        op(ALIGNED, 2, 8, 2, 16, sz(70000)), op(ALIGNED, 0, 9, 0, 23, sz(3 << 20)),
        op(ALIGNED, 1, 10, 1, 3, sz(0)), op(ALIGNED, 2, 11, 2, 21, sz(40000)),
        op(HEAPWALK, 1), op(FREE_SIZED, 2, 6), op(FREE, 0, 7), op(FREE_MANY, 1, 0x80),
    ],
    # _heapmin while the other threads hold blocks and full caches
    "heapmin": [
        op(MALLOC, 1, 12, sz(64)), op(MALLOC, 1, 13, sz(64)), op(MALLOC, 2, 14, sz(64)),
        op(MALLOC, 2, 15, sz(200000)), op(FREE, 2, 12), op(FREE, 1, 14), op(HEAPMIN, 0),
        op(HEAPCHK, 1), op(MALLOC, 0, 12, sz(64)), op(FREE, 1, 15), op(HEAPMIN, 2),
        op(HEAPWALK, 0),
    ],
    # mappings that fail: the results may be NULL, held blocks stay intact
    "fault": [
        op(MALLOC, 0, 16, sz(100)), op(FAULT, 1, 0), op(MALLOC, 1, 17, sz(3 << 20)),
        op(FAULT, 2, 1), op(REALLOC, 2, 16, sz(4 << 20)), op(FAULT, 0, 2),
        op(CALLOC, 0, 18, 1, sz(60000)), op(HEAPMIN, 1), op(HEAPCHK, 2),
    ],
    # options changed at run time between allocations
    "options": [
        op(OPTION, 0, 1, 0), op(MALLOC, 0, 19, sz(100000)), op(OPTION, 1, 0, 1),
        op(MALLOC, 1, 20, sz(3 << 20)), op(REALLOC, 2, 19, sz(3 << 20)),
        op(OPTION, 2, 2, 0), op(FREE, 0, 20), op(OPTION, 0, 3, 0), op(FREE, 1, 19),
        op(HEAPWALK, 2),
    ],
    # a thread exits holding a cache; its blocks are freed by another
    "respawn": [
        op(MALLOC, 1, 21, sz(48)), op(MALLOC, 1, 22, sz(48)), op(FREE, 1, 22),
        op(RESPAWN, 1), op(FREE, 2, 21), op(MALLOC, 1, 23, sz(48)), op(HEAPCHK, 0),
        op(HEAPWALK, 1),
    ],
    # a walk, a new layout at the same addresses, another walk: the second
    # walk must not go on from the sizes the first one reported (found by
    # the fuzzer: heap_crt.c's recent-entry lookup took a stale entry)
    "walk_stale": [op(MALLOC, 0, 0, sz(40000)), op(HEAPWALK, 0), op(FREE, 0, 0)]
    + [op(MALLOC, 0, 1 + i, sz(100)) for i in range(4)] + [op(FREE, 0, 1), op(HEAPWALK, 0)],
    # invalid requests: each must fail with its errno
    "bad": [op(MALLOC, 0, 24, sz(50))] + [op(BAD, t % 3, 24, t) for t in range(8)],
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.join(here, "corpus")
    os.makedirs(out, exist_ok=True)
    for name, ops in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(b"".join(ops))
    print(f"wrote {len(SEEDS)} seeds to {out}")


if __name__ == "__main__":
    main()
