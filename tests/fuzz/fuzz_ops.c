/*
 * fuzz_ops.c -- libFuzzer harness: the input is a program of allocator
 * operations, run against the prefixed build (tm_malloc, ...) on three
 * threads in lockstep and checked against a shadow model.
 *
 * Build and run: tests/fuzz/run.sh [seconds] (clang, -fsanitize=fuzzer,
 * address,undefined; the allocator's sources are compiled into the fuzzer,
 * asserts on). docs/reliability.md has the long-run command.
 *
 * Input format: a sequence of operations, each an opcode byte followed by
 * its arguments; a read past the end yields zeros, so every input is valid.
 *   opcode & 15   the operation (OP_* below)
 *   opcode >> 4   the thread it runs on, modulo NTHREADS. Thread 0 is the
 *                 fuzzer's own thread; 1 and 2 are workers that run one
 *                 operation at a time, handed over with a mutex and a
 *                 condition variable, while the others wait. So a block
 *                 allocated on one thread is freed or reallocated on
 *                 another, and _heapmin runs while the other threads sit
 *                 blocked with full caches.
 *
 * The shadow model: NSLOTS slots, each empty or holding a block (pointer,
 * requested size, usable size, alignment, fill byte). A new block is
 * filled over its whole usable size with a byte of its own; after every
 * operation every byte of every held block is checked (so the allocator
 * may not write into memory the program holds, and _heapmin may not purge
 * it), and again before a free or realloc. Live bytes are capped at
 * MAX_LIVE; a request that would exceed it is skipped.
 *
 * Checks (any failure prints what and aborts, which libFuzzer reports):
 *   - every successful allocation: alignment (16, or the asked alignment),
 *     usable size >= requested, calloc memory zero, no overlap with another
 *     held block (the fill check catches that), realloc keeps the first
 *     min(old, new) bytes;
 *   - a NULL result only with errno ENOMEM (posix_memalign: ENOMEM), and
 *     only when the fault injection (os_set_fail_after, OP_FAULT) fired
 *     during that operation -- or for the invalid requests of OP_BAD,
 *     which must fail with the documented errno;
 *   - _heapmin returns 0; _heapchk returns _HEAPOK (_HEAPEMPTY before the
 *     first allocation of the process);
 *   - _heapwalk walks to _HEAPEND, entries ascend without overlapping, and
 *     the used entries are exactly the blocks the model holds, each with
 *     its usable size (the walk drains every cache first, so nothing else
 *     is in use: this also finds leaked blocks);
 *   - at the end of each input every block is freed and _heapchk run.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trimalloc.h"

#ifndef TRIMALLOC_PREFIX
#error "build against the prefixed library (-DTRIMALLOC_PREFIX=1)"
#endif

/* From src/internal.h (os.c): fault injection. */
void os_set_fail_after(long n);
extern unsigned long os_fail_countdown_active;

#define NSLOTS 32
#define NTHREADS 3
#define MAX_LIVE ((size_t)8 << 20)
#define MAX_SIZE (((size_t)4 << 20) + 4096)
#define MAX_WALK (1u << 20)

enum {
    OP_MALLOC, OP_CALLOC, OP_REALLOC, OP_ALIGNED, OP_FREE, OP_FREE_SIZED, OP_HEAPMIN,
    OP_HEAPCHK, OP_HEAPWALK, OP_USABLE, OP_OPTION, OP_FAULT, OP_RESPAWN, OP_BAD,
    OP_REALLOCARRAY, OP_FREE_MANY,
};
static const char *const op_names[16] = {
    "malloc", "calloc", "realloc", "aligned", "free", "free_sized", "_heapmin", "_heapchk",
    "_heapwalk", "usable_size", "option", "fault", "respawn", "bad", "reallocarray", "free_many",
};

/* How the block was obtained: which free variants fit it (C23). */
enum { K_MALLOC, K_ALIGNED_ALLOC, K_POSIX_MEMALIGN, K_MEMALIGN };

typedef struct slot {
    unsigned char *p;
    size_t size, usable, align;
    unsigned char fill;
    int kind;
} slot_t;

static slot_t slots[NSLOTS];
static size_t live_bytes;
static unsigned fill_seq;
static int ever_allocated;

/* The operation being run, for messages. */
static unsigned cur_op_index, cur_thread;
static int cur_op;

__attribute__((noreturn, format(printf, 1, 2))) static void fail(const char *fmt, ...);
#include <stdarg.h>
static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "\nfuzz_ops: CHECK FAILED at operation #%u (%s on thread %u): ", cur_op_index,
            cur_op >= 0 ? op_names[cur_op] : "end of input", cur_thread);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

/* ---- input reader ------------------------------------------------------------ */
typedef struct reader {
    const uint8_t *d;
    size_t n, i;
} reader_t;

static uint8_t get8(reader_t *r) { return r->i < r->n ? r->d[r->i++] : 0; }
static uint32_t get16(reader_t *r) { uint32_t a = get8(r); return a | (uint32_t)get8(r) << 8; }
static uint32_t get24(reader_t *r) { uint32_t a = get16(r); return a | (uint32_t)get8(r) << 16; }

/* A size: a selector byte picks the range, so small, large and huge sizes
 * are all a few bytes away. */
static size_t get_size(reader_t *r) {
    uint8_t sel = get8(r);
    switch (sel & 3) {
    case 0: return get8(r);                                        /* 0..255 */
    case 1: return get16(r);                                       /* ..64 KiB */
    case 2: return ((size_t)get16(r) << 4 | (sel >> 4)) % MAX_SIZE; /* ..1 MiB */
    default: return (size_t)get24(r) % (MAX_SIZE + 1);            /* ..4 MiB */
    }
}

/* ---- memory checks ------------------------------------------------------------- */

/* Index of the first byte of p[0..n) that is not c, or n. Word-wise with
 * an accumulated difference, so the loop has no compare to trace. */
static size_t first_diff(const unsigned char *p, size_t n, unsigned char c) {
    size_t i = 0;
    while (i < n && ((uintptr_t)(p + i) & 7)) {
        if (p[i] != c) return i;
        i++;
    }
    uint64_t pat = 0x0101010101010101ull * c;
    while (i + 4096 <= n) {
        uint64_t acc = 0;
        const uint64_t *w = (const uint64_t *)(p + i);
        for (size_t k = 0; k < 512; k++) acc |= w[k] ^ pat;
        if (acc) break;
        i += 4096;
    }
    for (; i < n; i++)
        if (p[i] != c) return i;
    return n;
}

static void check_slot(int s, const char *when) {
    slot_t *b = &slots[s];
    if (!b->p) return;
    size_t i = first_diff(b->p, b->usable, b->fill);
    if (i != b->usable)
        fail("%s: slot %d block %p (size %zu, usable %zu): byte %zu is 0x%02x, expected 0x%02x",
             when, s, (void *)b->p, b->size, b->usable, i, b->p[i], b->fill);
}

static void check_all(const char *when) {
    for (int s = 0; s < NSLOTS; s++) check_slot(s, when);
}

static unsigned char next_fill(void) { return (unsigned char)(1 + fill_seq++ % 255); }

/* Record a new block in slot s (empty) and fill it. */
static void adopt(int s, void *p, size_t size, size_t align, int kind) {
    slot_t *b = &slots[s];
    size_t want = align > 16 ? align : 16;
    if ((uintptr_t)p % want) fail("block %p for size %zu not aligned to %zu", p, size, want);
    size_t u = tm_malloc_usable_size(p);
    if (u < size) fail("usable size %zu < requested %zu for %p", u, size, p);
    *b = (slot_t){p, size, u, align, next_fill(), kind};
    memset(p, b->fill, u);
    live_bytes += size;
    ever_allocated = 1;
}

static void forget(int s) {
    live_bytes -= slots[s].size;
    slots[s] = (slot_t){0};
}

/* ---- NULL results ---------------------------------------------------------------
 * A NULL (or ENOMEM) is allowed only if the injected failure fired during
 * this operation. */
static int fault_armed_before;
static void op_begin(void) { fault_armed_before = os_fail_countdown_active != 0; }
static int fault_fired(void) { return fault_armed_before && !os_fail_countdown_active; }

static void null_result(const char *what, size_t size, int err) {
    if (!fault_fired()) fail("%s(%zu) returned NULL (errno %d) with no failure injected", what, size, err);
    if (err != ENOMEM) fail("%s(%zu) returned NULL with errno %d, not ENOMEM", what, size, err);
}

/* ---- operations ------------------------------------------------------------------ */

static void free_slot(int s, int sized) {
    slot_t *b = &slots[s];
    if (!b->p) return;
    check_slot(s, "before free");
    if (sized && b->kind == K_MALLOC) tm_free_sized(b->p, b->size);
    else if (sized && b->kind == K_ALIGNED_ALLOC) tm_free_aligned_sized(b->p, b->align, b->size);
    else tm_free(b->p);
    forget(s);
}

static void do_malloc(int s, size_t size) {
    free_slot(s, 0);
    if (live_bytes + size > MAX_LIVE) return;
    errno = 0;
    void *p = tm_malloc(size);
    if (!p) return null_result("malloc", size, errno);
    adopt(s, p, size, 0, K_MALLOC);
}

static void do_calloc(int s, size_t nmemb, size_t size) {
    free_slot(s, 0);
    size_t total = nmemb * size;
    if (live_bytes + total > MAX_LIVE) return;
    errno = 0;
    unsigned char *p = tm_calloc(nmemb, size);
    if (!p) return null_result("calloc", total, errno);
    size_t i = first_diff(p, total, 0);
    if (i != total) fail("calloc(%zu, %zu) = %p: byte %zu is 0x%02x", nmemb, size, (void *)p, i, p[i]);
    adopt(s, p, total, 0, K_MALLOC);
}

static void do_realloc(int s, size_t size, int array) {
    slot_t *b = &slots[s];
    size_t old = b->p ? b->size : 0;
    if (live_bytes - old + size > MAX_LIVE) return;
    if (b->p) check_slot(s, "before realloc");
    errno = 0;
    void *p;
    if (array && size) {
        /* reallocarray(p, n, size/n) with n dividing size: same as realloc(p, size) */
        size_t n = size % 7 + 1;
        while (size % n) n--;
        p = tm_reallocarray(b->p, n, size / n);
    } else {
        p = tm_realloc(b->p, size);
    }
    if (!p) {
        if (size == 0 && b->p) { /* realloc(p, 0): freed, NULL returned (glibc's behaviour) */
            forget(s);
            return;
        }
        null_result(array ? "reallocarray" : "realloc", size, errno);
        check_slot(s, "after failed realloc"); /* the old block is untouched */
        return;
    }
    if (!b->p) return adopt(s, p, size, 0, K_MALLOC);
    if ((uintptr_t)p % 16) fail("realloc returned %p, not 16-aligned", p);
    size_t keep = old < size ? old : size;
    size_t i = first_diff(p, keep, b->fill);
    if (i != keep)
        fail("realloc(%p, %zu) = %p lost data: byte %zu of %zu is 0x%02x, expected 0x%02x",
             (void *)b->p, size, p, i, keep, ((unsigned char *)p)[i], b->fill);
    forget(s);
    adopt(s, p, size, 0, K_MALLOC);
}

static void do_aligned(int s, unsigned variant, unsigned lg, size_t size) {
    free_slot(s, 0);
    size_t align = (size_t)1 << lg;
    if (live_bytes + size > MAX_LIVE) return;
    void *p = NULL;
    errno = 0;
    switch (variant % 3) {
    case 0:
        p = tm_aligned_alloc(align, size);
        if (!p) return null_result("aligned_alloc", size, errno);
        return adopt(s, p, size, align, K_ALIGNED_ALLOC);
    case 1: {
        if (align < sizeof(void *)) align = sizeof(void *);
        int rc = tm_posix_memalign(&p, align, size);
        if (rc) return null_result("posix_memalign", size, rc);
        return adopt(s, p, size, align, K_POSIX_MEMALIGN);
    }
    default:
        p = tm_memalign(align, size);
        if (!p) return null_result("memalign", size, errno);
        return adopt(s, p, size, align, K_MEMALIGN);
    }
}

static void do_heapmin(void) {
    errno = 1234;
    int rc = tm__heapmin();
    if (rc != 0) fail("_heapmin returned %d (errno %d)", rc, errno);
    if (errno != 1234) fail("_heapmin changed errno to %d on success", errno);
}

static void do_heapchk(void) {
    int rc = tm__heapchk();
    if (rc != _HEAPOK && !(rc == _HEAPEMPTY && !ever_allocated))
        fail("_heapchk returned %d, not _HEAPOK (%d)", rc, _HEAPOK);
}

typedef struct walked {
    uintptr_t addr;
    size_t size;
} walked_t;
static walked_t walk_used[MAX_WALK];
static walked_t walk_free[MAX_WALK]; /* for messages */
static size_t walk_nfree;

/* What the walk said about address a, for a message. */
static void explain_walk(uintptr_t a, size_t nused) {
    for (size_t i = 0; i < walk_nfree; i++)
        if (a >= walk_free[i].addr && a - walk_free[i].addr < walk_free[i].size)
            fprintf(stderr, "  %p lies in free entry %p size %zu\n", (void *)a,
                    (void *)walk_free[i].addr, walk_free[i].size);
    for (size_t i = 0; i < nused; i++)
        if (a >= walk_used[i].addr && a - walk_used[i].addr < walk_used[i].size)
            fprintf(stderr, "  %p lies in used entry %p size %zu\n", (void *)a,
                    (void *)walk_used[i].addr, walk_used[i].size);
    fprintf(stderr, "  the walk had %zu used and %zu free entries\n", nused, walk_nfree);
    {
        _HEAPINFO e2 = {0};
        int rc2;
        for (int k = 0; k < 12; k++) {
            rc2 = tm__heapwalk(&e2);
            fprintf(stderr, "  walk again: rc %d entry %p size %zu flag %d\n", rc2, (void *)e2._pentry, e2._size, e2._useflag);
            if (rc2 != _HEAPOK) break;
        }
    }
    uintptr_t chunk = a & ~(((uintptr_t)4 << 20) - 1);
    for (size_t i = 0; i < walk_nfree; i++)
        if ((walk_free[i].addr & ~(((uintptr_t)4 << 20) - 1)) == chunk)
            fprintf(stderr, "  same chunk: free %p size %zu\n", (void *)walk_free[i].addr, walk_free[i].size);
    for (size_t i = 0; i < nused; i++)
        if ((walk_used[i].addr & ~(((uintptr_t)4 << 20) - 1)) == chunk)
            fprintf(stderr, "  same chunk: used %p size %zu\n", (void *)walk_used[i].addr, walk_used[i].size);
}

static int find_used(size_t n, uintptr_t a) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (walk_used[mid].addr < a) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && walk_used[lo].addr == a ? (int)lo : -1;
}

static void do_heapwalk(void) {
    _HEAPINFO e = {0};
    size_t nused = 0, steps = 0;
    uintptr_t end = 0;
    int rc;
    walk_nfree = 0;
    while ((rc = tm__heapwalk(&e)) == _HEAPOK) {
        uintptr_t a = (uintptr_t)e._pentry;
        if (++steps > 4 * MAX_WALK) fail("_heapwalk does not end (%zu entries)", steps);
        if (a < end) fail("_heapwalk entry %p starts before the previous entry's end %p", (void *)a, (void *)end);
        if (!e._size) fail("_heapwalk entry %p has size 0", (void *)a);
        end = a + e._size;
        if (e._useflag == _USEDENTRY) {
            if (nused == MAX_WALK) fail("more than %u used entries", MAX_WALK);
            walk_used[nused++] = (walked_t){a, e._size};
        } else if (e._useflag == _FREEENTRY) {
            if (walk_nfree < MAX_WALK) walk_free[walk_nfree++] = (walked_t){a, e._size};
        } else {
            fail("_heapwalk entry %p has _useflag %d", (void *)a, e._useflag);
        }
    }
    if (rc == _HEAPEMPTY && !ever_allocated) return;
    if (rc != _HEAPEND) fail("_heapwalk ended with %d after %zu entries, not _HEAPEND", rc, steps);
    size_t held = 0;
    for (int s = 0; s < NSLOTS; s++) {
        if (!slots[s].p) continue;
        held++;
        int i = find_used(nused, (uintptr_t)slots[s].p);
        if (i < 0) explain_walk((uintptr_t)slots[s].p, nused);
        if (i < 0) fail("held block %p (slot %d, size %zu) is not a used entry of _heapwalk", (void *)slots[s].p, s, slots[s].size);
        if (walk_used[i].size != slots[s].usable)
            fail("_heapwalk gives block %p size %zu, malloc_usable_size gave %zu", (void *)slots[s].p, walk_used[i].size, slots[s].usable);
    }
    if (nused != held) {
        for (size_t i = 0; i < nused && i < 8; i++) {
            int known = 0;
            for (int s = 0; s < NSLOTS; s++) known |= (uintptr_t)slots[s].p == walk_used[i].addr;
            if (!known) fprintf(stderr, "  used entry not held: %p size %zu\n", (void *)walk_used[i].addr, walk_used[i].size);
        }
        fail("_heapwalk reports %zu used entries, the program holds %zu blocks", nused, held);
    }
}

static void do_usable(int s) {
    slot_t *b = &slots[s];
    if (!b->p) return;
    size_t u = tm_malloc_usable_size(b->p), m = tm__msize(b->p);
    if (u != b->usable || m != u) fail("usable size of %p changed: %zu then %zu (_msize %zu)", (void *)b->p, b->usable, u, m);
}

/* Options settable while running, with a few values each. */
static const struct { const char *name; long values[4]; } opt_choices[] = {
    {"guard", {0, 1, 0, 1}},
    {"huge_threshold", {64 << 10, 512 << 10, 2 << 20, 4 << 20}},
    {"huge_cache_mb", {0, 1, 64, 64}},
    {"decay_ms", {0, 1, 5000, 5000}},
    {"dirty_decay_ms", {0, -1, 10000, 0}},
};
#define NOPT (sizeof opt_choices / sizeof opt_choices[0])
static long opt_defaults[NOPT];

static void do_option(unsigned which, unsigned v) {
    which %= NOPT;
    long val = opt_choices[which].values[v % 4];
    if (tm_trimalloc_option_set(opt_choices[which].name, val) != 0)
        fail("trimalloc_option_set(%s, %ld) failed (errno %d)", opt_choices[which].name, val, errno);
    long got = -1;
    if (tm_trimalloc_option_get(opt_choices[which].name, &got) != 0 || got != val)
        fail("option %s reads %ld after setting %ld", opt_choices[which].name, got, val);
}

static void reset_options(void) {
    for (size_t i = 0; i < NOPT; i++) tm_trimalloc_option_set(opt_choices[i].name, opt_defaults[i]);
}

static void expect_fail(const char *what, void *p, int err, int want) {
    if (p) fail("%s succeeded (%p); it must fail", what, p);
    if (err != want) fail("%s failed with errno %d, expected %d", what, err, want);
}

static void do_bad(int s, unsigned variant) {
    void *p = NULL;
    int rc;
    errno = 0;
    switch (variant % 8) {
    case 0: p = tm_malloc(SIZE_MAX); expect_fail("malloc(SIZE_MAX)", p, errno, ENOMEM); break;
    case 1: p = tm_malloc((size_t)PTRDIFF_MAX + 1); expect_fail("malloc(PTRDIFF_MAX+1)", p, errno, ENOMEM); break;
    case 2: p = tm_calloc(SIZE_MAX / 2 + 2, 2); expect_fail("calloc overflow", p, errno, ENOMEM); break;
    case 3: p = tm_aligned_alloc(48, 64); expect_fail("aligned_alloc(48, 64)", p, errno, EINVAL); break;
    case 4:
        rc = tm_posix_memalign(&p, sizeof(void *) / 2, 64);
        expect_fail("posix_memalign(align 4)", NULL, rc, EINVAL);
        rc = tm_posix_memalign(&p, 24, 64);
        expect_fail("posix_memalign(align 24)", NULL, rc, EINVAL);
        break;
    case 5:
        if (!slots[s].p) break;
        p = tm_realloc(slots[s].p, SIZE_MAX - 4096);
        expect_fail("realloc(p, SIZE_MAX - 4096)", p, errno, ENOMEM);
        check_slot(s, "after failed realloc");
        break;
    case 6:
        if (!slots[s].p) break;
        p = tm_reallocarray(slots[s].p, SIZE_MAX / 16, 17);
        expect_fail("reallocarray overflow", p, errno, ENOMEM);
        check_slot(s, "after failed reallocarray");
        break;
    default:
        tm_free(NULL);
        tm_free_sized(NULL, 0);
        p = tm_realloc(NULL, 0); /* malloc(0): a unique block */
        if (!p && !fault_fired()) fail("realloc(NULL, 0) returned NULL");
        tm_free(p);
        break;
    }
}

static void do_free_many(unsigned mask) {
    for (int s = 0; s < NSLOTS; s++)
        if ((unsigned)s % 8 == mask % 8 || (mask & 0x80)) free_slot(s, s & 1);
}

/* ---- threads ----------------------------------------------------------------------- */
typedef struct op {
    int code;
    int slot;
    size_t size, size2;
    unsigned a, b;
} op_t;

/* FUZZ_SKIP=name,name,... (op_names) turns operations off, to fuzz around
 * a known bug until it is fixed. */
static unsigned skip_mask;

static void run_op(const op_t *o) {
    if (skip_mask >> o->code & 1) return;
    op_begin();
    switch (o->code) {
    case OP_MALLOC: do_malloc(o->slot, o->size); break;
    case OP_CALLOC: do_calloc(o->slot, o->a % 16 + 1, o->size / (o->a % 16 + 1)); break;
    case OP_REALLOC: do_realloc(o->slot, o->size, 0); break;
    case OP_REALLOCARRAY: do_realloc(o->slot, o->size, 1); break;
    case OP_ALIGNED: do_aligned(o->slot, o->a, o->b, o->size); break;
    case OP_FREE: free_slot(o->slot, 0); break;
    case OP_FREE_SIZED: free_slot(o->slot, 1); break;
    case OP_HEAPMIN: do_heapmin(); break;
    case OP_HEAPCHK: do_heapchk(); break;
    case OP_HEAPWALK: do_heapwalk(); break;
    case OP_USABLE: do_usable(o->slot); break;
    case OP_OPTION: do_option(o->a, o->b); break;
    case OP_FAULT: os_set_fail_after(o->a % 8 + 1); break;
    case OP_BAD: do_bad(o->slot, o->a); break;
    case OP_FREE_MANY: do_free_many(o->a); break;
    default: break;
    }
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int turn = -1;        /* the worker that runs cur, or -1 */
static int quit_worker = -1; /* the worker asked to exit */
static op_t cur;
static pthread_t workers[NTHREADS];

static void *worker_main(void *arg) {
    int id = (int)(intptr_t)arg;
    pthread_mutex_lock(&mu);
    for (;;) {
        while (turn != id) pthread_cond_wait(&cv, &mu);
        if (quit_worker == id) {
            quit_worker = -1;
            turn = -1;
            pthread_cond_broadcast(&cv);
            pthread_mutex_unlock(&mu);
            return NULL;
        }
        op_t o = cur;
        pthread_mutex_unlock(&mu);
        run_op(&o);
        pthread_mutex_lock(&mu);
        turn = -1;
        pthread_cond_broadcast(&cv);
    }
}

static void start_worker(int id) {
    if (pthread_create(&workers[id], NULL, worker_main, (void *)(intptr_t)id) != 0) {
        perror("pthread_create");
        abort();
    }
}

/* Run o on thread t: 0 is this thread; others get it handed over. */
static void dispatch(unsigned t, const op_t *o) {
    cur_thread = t;
    if (t == 0) return run_op(o);
    pthread_mutex_lock(&mu);
    cur = *o;
    turn = (int)t;
    pthread_cond_broadcast(&cv);
    while (turn != -1) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

/* The worker exits (its cache is drained by the thread-exit destructor)
 * and a fresh thread takes its place. */
static void respawn(unsigned t) {
    if (t == 0) return;
    pthread_mutex_lock(&mu);
    quit_worker = (int)t;
    turn = (int)t;
    pthread_cond_broadcast(&cv);
    while (turn != -1) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    pthread_join(workers[t], NULL);
    start_worker((int)t);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    for (size_t i = 0; i < NOPT; i++)
        if (tm_trimalloc_option_get(opt_choices[i].name, &opt_defaults[i]) != 0) {
            fprintf(stderr, "fuzz_ops: option %s unknown\n", opt_choices[i].name);
            abort();
        }
    const char *skip = getenv("FUZZ_SKIP");
    for (int k = 0; skip && k < 16; k++) {
        size_t n = strlen(op_names[k]);
        for (const char *q = skip; (q = strstr(q, op_names[k])); q += n)
            if ((q == skip || q[-1] == ',') && (q[n] == ',' || !q[n])) skip_mask |= 1u << k;
    }
    if (skip_mask) fprintf(stderr, "fuzz_ops: FUZZ_SKIP=%s: operations mask 0x%x off\n", skip, skip_mask);
    for (int t = 1; t < NTHREADS; t++) start_worker(t);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    reader_t r = {data, size, 0};
    os_set_fail_after(0);
    reset_options();
    cur_op_index = 0;
    while (r.i < r.n) {
        uint8_t code = get8(&r);
        op_t o = {.code = code & 15, .slot = 0};
        unsigned t = (code >> 4) % NTHREADS;
        switch (o.code) {
        case OP_MALLOC: case OP_REALLOC: case OP_REALLOCARRAY:
            o.slot = get8(&r) % NSLOTS;
            o.size = get_size(&r);
            break;
        case OP_CALLOC:
            o.slot = get8(&r) % NSLOTS;
            o.a = get8(&r);
            o.size = get_size(&r);
            break;
        case OP_ALIGNED:
            o.slot = get8(&r) % NSLOTS;
            o.a = get8(&r);
            o.b = get8(&r) % 24; /* alignments 1 .. 8 MiB */
            o.size = get_size(&r);
            break;
        case OP_FREE: case OP_FREE_SIZED: case OP_USABLE:
            o.slot = get8(&r) % NSLOTS;
            break;
        case OP_OPTION:
            o.a = get8(&r);
            o.b = get8(&r);
            break;
        case OP_FAULT: case OP_FREE_MANY:
            o.a = get8(&r);
            break;
        case OP_BAD:
            o.slot = get8(&r) % NSLOTS;
            o.a = get8(&r);
            break;
        default:
            break;
        }
        cur_op = o.code;
        if (o.code == OP_RESPAWN && !(skip_mask >> OP_RESPAWN & 1)) {
            cur_thread = t;
            respawn(t);
        } else {
            dispatch(t, &o);
        }
        check_all("after the operation");
        cur_op_index++;
    }
    /* Clean up on the threads the blocks were not necessarily made on. */
    cur_op = -1;
    os_set_fail_after(0);
    for (int s = 0; s < NSLOTS; s++) {
        op_t o = {.code = OP_FREE, .slot = s};
        dispatch((unsigned)s % NTHREADS, &o);
    }
    if (live_bytes) fail("%zu live bytes left after freeing every slot", live_bytes);
    reset_options();
    do_heapchk();
    return 0;
}
