/*
 * tcache.c -- thread caches: creation, refill and flush (the slow paths
 * behind malloc/free), and the drain at thread exit.
 *
 * Every thread starts with tm_tls.tc pointing at tm_tcache_sentinel, a
 * static cache whose bins are all empty with capacity 0, so the fast path
 * never asks "initialised?": the first call just misses and lands here,
 * where the real cache is made. A trimmer points tm_tls.tc at the sentinel
 * too while it drains the cache (world.c), and the thread exit destructor
 * leaves it there in the DEAD state, so later calls (other libraries' TLS
 * destructors) go straight to the arenas.
 *
 * Owner and lock: a cache's bins are touched by its owner on the fast path
 * with tm_tls.busy = 1 and no lock; on slow paths by its owner holding
 * tc->mu; and by a trimmer holding tc->mu after the handshake in world.c.
 * tm_tls.tc is written by its owner and by a trimmer, always under tc->mu
 * except the trimmer's first store of the sentinel. The registry of live
 * caches is guarded by registry_lock.
 */
#include "internal.h"

__thread tm_tls_t tm_tls __attribute__((tls_model("initial-exec"))) = {
    .tc = &tm_tcache_sentinel};
tm_tcache_t tm_tcache_sentinel = {.state = TC_STATE_SENTINEL};
uint64_t tm_cookie_key;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static tm_tcache_t *registry;      /* live caches */
static tm_tcache_t *recycled;      /* caches of exited threads, for reuse */
static unsigned recycled_warm;     /* of them, those that kept their first slots
                                      in memory (written under the registry lock) */
static unsigned registry_count;
static unsigned arena_bound[TM_MAX_ARENAS]; /* live caches per arena index, the initial
                                             thread's not counted (tc->unbound) */
static unsigned initial_arena;     /* the initial thread's arena (0 until it has one) */
static pthread_key_t tc_key;
static bool tc_key_ok;
static pthread_key_t tc_first_key; /* see tc_first_key_dtor */
static bool tc_first_key_ok;

/* ---- copies of pointer arrays (internal.h) ----------------------------------
 * Four pointers a step, all four loaded before any is stored, so that a
 * step may overlap its own source; a step never reads what an earlier one
 * wrote (forward when dst is below src, backward when above). Functions of
 * their own, never inlined, in the hot text (cmake/layout.cmake): inlined
 * at each of their dozen callers they made the hot text 4 KiB longer, and
 * a plain loop of one pointer a step cost the burst row of
 * bench/callgrind.sh 5 instructions a pair more (216 -> 221.6). */
static inline void ptrs_step(void **dst, void *const *src) {
    void *a = src[0], *b = src[1], *c = src[2], *d = src[3];
    dst[0] = a;
    dst[1] = b;
    dst[2] = c;
    dst[3] = d;
}

TM_NOINLINE void tm_ptrs_copy(void **dst, void *const *src, size_t n) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4) ptrs_step(dst + i, src + i);
    for (; i < n; i++) dst[i] = src[i];
}

TM_NOINLINE void tm_ptrs_move(void **dst, void *const *src, size_t n) {
    if (dst <= src) {
        tm_ptrs_copy(dst, src, n);
        return;
    }
    for (; n >= 4; n -= 4) ptrs_step(dst + n - 4, src + n - 4);
    while (n--) dst[n] = src[n];
}

/* ---- transfer caches ---------------------------------------------------------
 * Per arena and size class, a stack of free blocks between the thread
 * caches and the arena. A cache that overflows parks its batch in the
 * transfer cache of the arena that owns the blocks, and a cache that runs
 * dry takes a batch from its own arena's, before either goes to an arena's
 * slabs: a producer/consumer pair then passes blocks in batches under one
 * short lock, without touching slab bitmaps -- the consumer parks the
 * producer's blocks with the producer's arena, where the producer's next
 * refill finds them. Bounded per class to about XFER_BYTES, and to between
 * 1 and 32 half-bin batches (4 for the classes up to 1 KiB, where
 * producer/consumer traffic is); idle ones are emptied by the caches'
 * garbage collection, and _heapmin (world.c) empties all into the arenas.
 *
 * Until 2026-12-04 there was one transfer cache per class for the whole
 * process: threads that each overflow and refill the same classes (every
 * burst of a class bigger than its bin) then fought over its lock and
 * took each other's blocks, whose frees went to the other thread's arena
 * lock. Measured, a scratch sh6bench-like program (2 threads, each
 * allocating 1000 blocks of 1-1000 B and freeing them, 10 000 times): 1650
 * futex calls and 0.27-0.34 s of CPU against 0.20 s for the same work on
 * one thread; with a cache per arena 200-300 futex calls and 0.15-0.19 s
 * (docs/design.md has the rest). A refill whose own arena's is empty takes a batch from a
 * neighbour's that is at least a quarter full (xfer_get): threads that free
 * each other's blocks at different rates would otherwise strand them there
 * (larson, 2 threads: 5% more peak RSS without it).
 *
 * A set (one per arena index, made with the arena's first cache, never
 * freed) is published once in xfer_sets[]. Lock rank: after tc->mu, before
 * any arena lock; the sets are made under the registry lock, which fork's
 * prepare handler takes before the transfer caches' locks. */
/* 256 KiB: a producer/consumer pair on one CPU passes a time slice's worth
 * of blocks at once (bench/throughput xmalloc, 2 threads, taskset -c 0:
 * with 128 KiB, until 2026-12-05, the classes above 256 B overflowed and
 * 20% of the frees went to the slabs and back, 76-87 M operations/s; with
 * 256 KiB 98-105, peak RSS 6.2-6.3 -> 6.55-6.85 MiB). On two quiet CPUs
 * no change beyond the noise in xmalloc, larson or batch, throughput or
 * peak RSS; on a loaded machine, where the pair often shares a CPU,
 * xmalloc's peak RSS rose by about 0.4 MiB (medians of 6). */
#define XFER_BYTES (256u << 10)
#define XFER_STEAL_SCAN 8 /* neighbours a refill may take a batch from */

typedef struct tm_xfer {
    uint32_t count, cap;
    uint32_t gc_count;  /* count at the last garbage-collection visit */
    void **slots;
} tm_xfer_t;

/* One lock for the whole set: a fork holds every transfer cache's lock,
 * and a lock per class and arena made hundreds (ThreadSanitizer's lock
 * tracking stops at 64 held at once). A set is shared by the threads of
 * one arena and those parking its blocks; each hold is one copy of at most
 * a batch of pointers. */
typedef struct tm_xfer_set {
    pthread_mutex_t lock;
    bool fork_held; /* locked by xfer_fork_prepare (a set made during the fork is not) */
    tm_xfer_t x[TM_NCLASSES + 1];
} tm_xfer_set_t;

static tm_xfer_set_t *xfer_sets[TM_MAX_ARENAS];
static uint32_t xfer_cap[TM_NCLASSES + 1];

static void xfer_init(void) {
    for (unsigned c = 1; c <= TM_NCLASSES; c++) {
        uint32_t size = tm_classes[c].size, batch = tm_classes[c].tc_cap / 2 ? tm_classes[c].tc_cap / 2 : 1;
        uint32_t batches = XFER_BYTES / size / batch;
        uint32_t min_batches = size <= 1024 ? 4 : 1;
        if (batches < min_batches) batches = min_batches;
        if (batches > 32) batches = 32;
        xfer_cap[c] = tm_opt.tcache_scale_pct ? batch * batches : 0;
    }
}

/* The set of arena index ai, made if need be (caller holds registry_lock).
 * Without memory for it, that arena's blocks go straight to the arena. */
static void xfer_set_make_locked(unsigned ai) {
    if (xfer_sets[ai] || !tm_opt.tcache_scale_pct) return;
    tm_xfer_set_t *set = meta_alloc(sizeof *set);
    if (!set) return;
    tm_mutex_init(&set->lock);
    for (unsigned c = 1; c <= TM_NCLASSES; c++)
        set->x[c].cap = xfer_cap[c]; /* its slots come with its first put */
    __atomic_store_n(&xfer_sets[ai], set, __ATOMIC_RELEASE);
}

/* Arena ai's set, or NULL if it has none. */
static tm_xfer_set_t *xfer_set(unsigned ai) {
    return __atomic_load_n(&xfer_sets[ai], __ATOMIC_ACQUIRE);
}

static uint32_t xfer_count(const tm_xfer_set_t *set, unsigned cls) {
    return set ? __atomic_load_n(&set->x[cls].count, __ATOMIC_RELAXED) : 0;
}

/* Park n blocks of arena ai; false if there is no room (the caller
 * flushes them). */
static bool xfer_put(unsigned ai, unsigned cls, void **blocks, uint32_t n) {
    tm_xfer_set_t *set = xfer_set(ai);
    if (!set) return false;
    tm_xfer_t *x = &set->x[cls];
    if (__atomic_load_n(&x->count, __ATOMIC_RELAXED) + n > __atomic_load_n(&x->cap, __ATOMIC_RELAXED))
        return false;
    tm_lock(&set->lock);
    uint32_t cnt = x->count;
    bool ok = cnt + n <= x->cap;
    if (ok && !x->slots) { /* made on first use: most arenas park few classes */
        x->slots = meta_alloc(xfer_cap[cls] * sizeof(void *));
        if (!x->slots) __atomic_store_n(&x->cap, 0, __ATOMIC_RELAXED); /* for good */
        ok = x->slots != NULL;
    }
    if (ok) {
        tm_ptrs_copy(x->slots + cnt, blocks, n);
        __atomic_store_n(&x->count, cnt + n, __ATOMIC_RELAXED);
    }
    tm_unlock(&set->lock);
    return ok;
}

/* Take up to n blocks of class cls from set; returns how many. */
static uint32_t xfer_take(tm_xfer_set_t *set, unsigned cls, void **blocks, uint32_t n) {
    if (!xfer_count(set, cls)) return 0;
    tm_xfer_t *x = &set->x[cls];
    tm_lock(&set->lock);
    uint32_t cnt = x->count, k = cnt < n ? cnt : n;
    __atomic_store_n(&x->count, cnt - k, __ATOMIC_RELAXED);
    tm_ptrs_copy(blocks, x->slots + cnt - k, k);
    tm_unlock(&set->lock);
    return k;
}

static uint32_t xfer_get(unsigned ai, unsigned cls, void **blocks, uint32_t n) {
    uint32_t got = xfer_take(xfer_set(ai), cls, blocks, n);
    /* Own one empty: a batch from a neighbour's that is at least a quarter
     * full -- blocks parked there faster than its threads take them back
     * (threads that free each other's blocks at different rates). One
     * that holds less is left to its own threads, which are cycling it. */
    for (unsigned k = 1; !got && k < tm_narenas && k <= XFER_STEAL_SCAN; k++) {
        tm_xfer_set_t *o = xfer_set((ai + k) % tm_narenas);
        uint32_t cnt = xfer_count(o, cls);
        if (cnt && cnt * 4 >= __atomic_load_n(&o->x[cls].cap, __ATOMIC_RELAXED))
            got = xfer_take(o, cls, blocks, n);
    }
    return got;
}

/* A copy of up to max of the blocks parked in arena ai's transfer cache of
 * class cls; how many there are (tests/unit/xfer_arena.c checks that a
 * batch parks only with the arena that owns its blocks). */
uint32_t xfer_parked(unsigned ai, unsigned cls, void **out, uint32_t max) {
    tm_xfer_set_t *set = ai < TM_MAX_ARENAS ? xfer_set(ai) : NULL;
    if (!set || !cls || cls > TM_NCLASSES) return 0;
    tm_lock(&set->lock);
    uint32_t cnt = set->x[cls].count;
    tm_ptrs_copy(out, set->x[cls].slots, cnt < max ? cnt : max);
    tm_unlock(&set->lock);
    return cnt;
}

/* Up to max blocks of class cls out of set and back to their arenas, in
 * batches, each taken under the set's lock and flushed without it: a
 * thread that wants a batch meanwhile waits for one copy, not for the
 * arena locks. Returns how many. */
#define XFER_DRAIN_BATCH 256u

static uint32_t xfer_flush_out(tm_xfer_set_t *set, unsigned cls, uint32_t max) {
    void *batch[XFER_DRAIN_BATCH];
    uint32_t done = 0;
    for (uint32_t k; done < max &&
                     (k = xfer_take(set, cls, batch, max - done < XFER_DRAIN_BATCH ? max - done : XFER_DRAIN_BATCH));
         done += k)
        arena_flush(cls, batch, k);
    return done;
}

/* The index of the arena that owns small block p. */
static unsigned block_arena(void *p) { return block_fast((uintptr_t)p) >> TM_FAST_ARENA_SHIFT; }

/* Flush the older n blocks of a bin: each arena's blocks into that
 * arena's transfer cache if it has room, else to the arena. A bin holds
 * blocks of its own arena and of those it freed for other threads, so the
 * batch is split by owner first (in place: the order of a batch does not
 * matter). A chunk has one owner, which cannot change while one of its
 * blocks is out of its slab, so each pass remembers one chunk of the
 * owner it gathers and one of another, and looks an owner up only for a
 * block of neither. (Until 2026-12-07 it remembered the last chunk only:
 * where two threads free each other's blocks, the bins mix two chunks
 * block by block, and a lookup at nearly every block made this loop a
 * third of the slow paths' instructions in xmalloc, callgrind.) Returns
 * whether any block was another arena's than `own` (tm_tc_bin_t.remote). */
static bool bin_flush(unsigned cls, void **blocks, uint32_t n, unsigned own) {
    bool foreign = false;
    while (n) {
        unsigned ai = block_arena(blocks[0]);
        foreign |= ai != own;
        uintptr_t mine = (uintptr_t)blocks[0] & ~TM_CHUNK_MASK;
        uintptr_t other = 0; /* no block lies in the chunk at address 0 */
        uint32_t k = 1; /* blocks[0..k) are ai's */
        while (k < n && ((uintptr_t)blocks[k] & ~TM_CHUNK_MASK) == mine) k++; /* nothing to move yet */
        for (uint32_t i = k; i < n; i++) {
            uintptr_t chunk = (uintptr_t)blocks[i] & ~TM_CHUNK_MASK;
            if (chunk != mine) {
                if (chunk == other) continue;
                if (block_arena(blocks[i]) != ai) {
                    other = chunk;
                    continue;
                }
                mine = chunk;
            }
            if (i != k) { /* none before the first foreign block: usually none */
                void *t = blocks[k];
                blocks[k] = blocks[i];
                blocks[i] = t;
            }
            k++;
        }
        /* An arena no thread is bound to makes no refill that would take
         * a parked batch back: its blocks go to their slabs, which can then
         * empty. (A thread that freed the 65 536 blocks 8 exited threads
         * had left it kept 16.3 MiB parked in their transfer caches,
         * pinning their slabs, until _heapmin: an outside tester's thread
         * pool, 2026-12-06.) */
        tm_arena_t *owner = __atomic_load_n(&tm_arenas[ai], __ATOMIC_ACQUIRE);
        if (!owner || !__atomic_load_n(&owner->nthreads, __ATOMIC_RELAXED) ||
            !xfer_put(ai, cls, blocks, k))
            arena_flush(cls, blocks, k);
        blocks += k;
        n -= k;
    }
    return foreign;
}

/* Empty every transfer cache into the arenas (_heapmin) and give back its
 * slots' pages. With cap 0 meanwhile every put is refused (the block goes
 * to its arena), so once the gets have emptied it no one writes its slots
 * while they are purged; a set's classes reopen after one purge of all
 * their slots. */
void xfer_drain_all(void) {
    for (unsigned ai = 0; ai < TM_MAX_ARENAS; ai++) {
        tm_xfer_set_t *set = xfer_set(ai);
        if (!set) continue;
        uint32_t caps[TM_NCLASSES + 1];
        void **mem[TM_NCLASSES + 1];
        tm_lock(&set->lock);
        for (unsigned c = 1; c <= TM_NCLASSES; c++) {
            caps[c] = set->x[c].cap;
            mem[c] = set->x[c].slots;
            __atomic_store_n(&set->x[c].cap, 0, __ATOMIC_RELAXED); /* no put makes slots now */
        }
        tm_unlock(&set->lock);
        os_batch_t slots = {.n = 0, .released = 0}; /* metadata: not counted */
        for (unsigned c = 1; c <= TM_NCLASSES; c++) {
            xfer_flush_out(set, c, UINT32_MAX);
            if (mem[c]) os_batch_add(&slots, mem[c], mem[c] + xfer_cap[c]);
        }
        os_batch_flush(&slots); /* the set's slots in few calls (os.c) */
        tm_lock(&set->lock);
        for (unsigned c = 1; c <= TM_NCLASSES; c++) __atomic_store_n(&set->x[c].cap, caps[c], __ATOMIC_RELAXED);
        tm_unlock(&set->lock);
    }
}

/* Empty arena ai's transfer cache into the arena: its last thread has
 * exited, and the blocks other threads parked there for its refills would
 * pin their slabs (measured: scripts/demo.sh's arenas each kept about 200
 * KiB of blocks there, in 2 MiB of slab pages, once its threads were
 * gone). */
static void xfer_flush_arena(unsigned ai) {
    tm_xfer_set_t *set = xfer_set(ai);
    if (set)
        for (unsigned c = 1; c <= TM_NCLASSES; c++)
            if (xfer_count(set, c)) xfer_flush_out(set, c, UINT32_MAX);
}

/* Garbage collection of one class's transfer cache in arena ai: blocks
 * that sat there since the last visit (the count did not move) go back to
 * the arena. True if it gave any back. */
static bool xfer_gc(unsigned ai, unsigned cls) {
    tm_xfer_set_t *set = xfer_set(ai);
    if (!set) return false;
    tm_xfer_t *x = &set->x[cls];
    if (!xfer_count(set, cls) && !__atomic_load_n(&x->gc_count, __ATOMIC_RELAXED)) return false;
    tm_lock(&set->lock);
    uint32_t cnt = x->count, idle = cnt && cnt == x->gc_count ? cnt : 0;
    __atomic_store_n(&x->gc_count, idle ? 0 : cnt, __ATOMIC_RELAXED);
    tm_unlock(&set->lock);
    return idle && xfer_flush_out(set, cls, idle) != 0;
}

/* Every transfer cache's garbage collection (the background thread's
 * idle scan, world.c): those that did not move since the last visit go
 * back to their arenas. Caller holds no lock of rank above the trim lock. */
void xfer_gc_all(void) {
    for (unsigned ai = 0; ai < TM_MAX_ARENAS; ai++)
        if (xfer_set(ai))
            for (unsigned c = 1; c <= TM_NCLASSES; c++) (void)xfer_gc(ai, c);
}

static size_t xfer_cached_bytes(void) {
    size_t bytes = 0;
    for (unsigned ai = 0; ai < TM_MAX_ARENAS; ai++) {
        tm_xfer_set_t *set = xfer_set(ai);
        for (unsigned c = 1; set && c <= TM_NCLASSES; c++)
            bytes += (size_t)xfer_count(set, c) * tm_classes[c].size;
    }
    return bytes;
}

/* fork: no other thread makes a set meanwhile (they are made under the
 * registry lock, which the prepare handler holds); the forking thread may
 * (a fork handler's allocation, init.c), and fork_parent leaves that one
 * alone */
void xfer_fork_prepare(void) {
    for (unsigned ai = 0; ai < TM_MAX_ARENAS; ai++)
        if (xfer_sets[ai]) {
            tm_lock(&xfer_sets[ai]->lock);
            xfer_sets[ai]->fork_held = true;
        }
}
void xfer_fork_parent(void) {
    for (unsigned ai = TM_MAX_ARENAS; ai-- > 0;)
        if (xfer_sets[ai] && xfer_sets[ai]->fork_held) {
            xfer_sets[ai]->fork_held = false;
            tm_unlock(&xfer_sets[ai]->lock);
        }
}
void xfer_fork_child(void) {
    for (unsigned ai = 0; ai < TM_MAX_ARENAS; ai++)
        if (xfer_sets[ai]) {
            tm_mutex_init(&xfer_sets[ai]->lock);
            xfer_sets[ai]->fork_held = false;
        }
}

void tcache_registry_lock(void) { tm_lock(&registry_lock); }
void tcache_registry_unlock(void) { tm_unlock(&registry_lock); }
tm_tcache_t *tcache_registry_first(void) { return registry; }
unsigned tcache_count(void) { return __atomic_load_n(&registry_count, __ATOMIC_RELAXED); }

/* A bin starts small, at TC_START_SLOTS blocks (or its class's capacity if
 * that is less), and moves to its class's capacity (scaled by the
 * tcache_scale option, at least 1 unless caching is off) as soon as the
 * thread holds more than that (tcache_malloc_slow, tcache_free_slow). From
 * there it doubles each time it swings from empty to full, up to
 * TC_GROW_MAX times its capacity, but not past tc_grow_bytes() of blocks:
 * 64 KiB up to 512 B, where
 * a grown bin would otherwise hold many blocks a producer/consumer pair
 * keeps cycling, 128 KiB above 10 KiB (the classes of 12-32 KiB, 4 blocks
 * at their capacity: 10 blocks of 12 KiB grown, 4 of 28 and 32 KiB, which
 * do not grow), and 256 KiB in between, where the first capacities are small
 * (16-64 blocks) and a program that handles its 1-8 KiB blocks in batches
 * of 64 swung every batch through the transfer cache (measured: the size
 * sweep's 1 and 2 threads ran 8-9% faster at 256 KiB, same peak RSS; 512
 * KiB gained nothing more). The classes of 513 B-1 KiB were at 64 KiB
 * too (64-102 blocks, 64 for 1 KiB: no growth at all) until 2026-12-04;
 * at 256 KiB the batch workload (1000 blocks of 8-1000 B allocated, then
 * freed: 129 per class of this range) stops swinging through the
 * transfer cache every round -- bench/throughput batch, interleaved
 * medians of 9: 1 thread +25%, 2 threads +29%; callgrind, 1 thread:
 * 58.8M -> 53.2M instructions; peak RSS with 2 threads 4.0 -> 3.6 MiB,
 * as blocks come back from the thread's bin instead of from slabs the
 * transfer cache scattered them over. The cost: larson (random sizes of
 * 16-1024 B, random frees), whose bins of this range now grow in their
 * random walk, holds about 190 KiB more at its peak (4.30 -> 4.48 MiB
 * with 1 thread, 6.66 -> 6.86 with 2; medians of 11), and ran no slower
 * (+10% and +2%, within the noise). See tcache_free_slow. A cache's slots are one
 * mapping in three parts: every bin's start slots, packed (2 KiB: a thread
 * that holds few blocks of each class touches one page of its cache's
 * slots, where the full capacities took five); then each class's room for
 * its capacity, where a bin moves when it first grows; then, for each
 * class that can grow further, room for its largest size. A drain puts
 * every bin back in its start slots and gives back the pages of the
 * grown-bin slots if a bin moved there (slots_grown, slots_purge_grown);
 * those of the capacities' slots go back when the thread exits
 * (slots_first, slots_release_first). A thread that uses few blocks also
 * takes few: a refill asks for at most half the bin (refill_want), 4
 * blocks while it is in its start slots. */
#define TC_GROW_MAX 4
/* the remote large-free queue (tcache_free_large) */
#define TC_RL_PAGES 256 /* 1 MiB of runs at most */
static uint32_t tc_grow_bytes(uint32_t size) {
    return size <= 512 ? 64u << 10 : size <= TM_GROW_RUN_MIN ? 256u << 10 : 128u << 10;
}

static uint32_t bin_cap(unsigned cls) {
    uint64_t cap = (uint64_t)tm_classes[cls].tc_cap * (uint64_t)tm_opt.tcache_scale_pct / 100;
    if (cap == 0 && tm_opt.tcache_scale_pct) cap = 1; /* a 1-block class stays cached */
    return cap > 65535 / TC_GROW_MAX ? 65535 / TC_GROW_MAX : (uint32_t)cap;
}

static uint32_t bin_cap_start(unsigned cls) {
    uint32_t cap = bin_cap(cls);
    return cap < TC_START_SLOTS ? cap : TC_START_SLOTS;
}

/* The growth bound in bytes scales down with tcache_scale as the
 * capacities do (not up: a scale above 100 already raises the capacities
 * it multiplies by TC_GROW_MAX). Until 2026-12-05 it did not, and at
 * tcache_scale:25 a grown bin could reach the default capacity: an outside
 * tester's threads, cycling bursts of 48 sizes up to 8 KiB, held 1.09 MiB
 * of cache each (2.5 at the default scale), where tuning.md promised a
 * quarter. */
static uint32_t bin_cap_max(unsigned cls) {
    uint64_t pct = tm_opt.tcache_scale_pct < 100 ? (uint64_t)tm_opt.tcache_scale_pct : 100;
    uint32_t grow = (uint32_t)((uint64_t)tc_grow_bytes(tm_classes[cls].size) * pct / 100);
    uint32_t cap = bin_cap(cls), by_bytes = grow / tm_classes[cls].size;
    uint32_t max = cap * TC_GROW_MAX < by_bytes ? cap * TC_GROW_MAX : by_bytes;
    return max > cap ? max : cap;
}

/* ---- one bound for all the caches (tcache_total_mb) ----------------------
 * Each cache is bounded on its own (above), which is right for a few
 * threads and too much for hundreds of busy ones: an outside tester's
 * program (128 threads, each cycling bursts of 48 sizes up to 8 KiB)
 * peaked at 398 MiB for 53 MiB live, where tcmalloc, which bounds all its
 * caches together, stayed at 106-110. So the live caches share
 * tcache_total_mb: while the thread count times one cache with every bin
 * grown (full_cache_bytes, 5.5 MiB at the default scale) fits in it,
 * nothing changes; past that, a cache's share (cache_share) bounds first
 * its bins' growth, then their capacities, never below a bin's start
 * size. A bin takes a new bound when it next overflows (it flushes
 * down to it) or when the garbage collection finds it idle; no fast-path
 * work, and the bound is read again at every such slow-path call, so a
 * change of thread count or of the option applies from then on. */
static size_t base_cache_bytes, full_cache_bytes;

/* Caches a trimmer emptied (_heapmin, or the background thread's idle scan)
 * whose owners have made no slow-path call since: they hold nothing, and
 * are left out of the count the bound is shared by, so that the threads at
 * work in a pool of mostly idle ones get the shares. A cache counts again
 * at its owner's next refill or overflow, and leaves the count when its
 * thread exits. Each flag changes under its tc->mu. */
static unsigned drained_unused_caches;

void tcache_mark_drained_locked(tm_tcache_t *tc) {
    if (tc->drained_unused) return;
    tc->drained_unused = true;
    __atomic_add_fetch(&drained_unused_caches, 1, __ATOMIC_RELAXED);
}

unsigned tcache_drained_unused(void) { return __atomic_load_n(&drained_unused_caches, __ATOMIC_RELAXED); }

static void tcache_mark_used_locked(tm_tcache_t *tc) {
    if (likely(!tc->drained_unused)) return;
    tc->drained_unused = false;
    __atomic_sub_fetch(&drained_unused_caches, 1, __ATOMIC_RELAXED);
}

/* the bytes one live cache may hold now (SIZE_MAX: no common bound) */
static size_t cache_share(void) {
    size_t total = (size_t)__atomic_load_n(&tm_opt.tcache_total_mb, __ATOMIC_RELAXED) << 20;
    unsigned n = tcache_count(), idle = __atomic_load_n(&drained_unused_caches, __ATOMIC_RELAXED);
    n = n > idle ? n - idle : 1; /* two counters: read apart, keep at least one */
    if (!total || total / n >= full_cache_bytes) return SIZE_MAX;
    return total / n;
}

/* class cls's capacity under a share: the whole capacity while every bin
 * at its capacity fits in the share (base_cache_bytes, 2.2 MiB at the
 * default scale), scaled down past that, never below the start size */
static uint32_t cap_now(unsigned cls, size_t share) {
    uint32_t cap = bin_cap(cls), start = bin_cap_start(cls);
    if (share >= base_cache_bytes) return cap;
    uint32_t scaled = (uint32_t)((uint64_t)cap * share / base_cache_bytes);
    return scaled > start ? scaled : start;
}

/* its growth bound: growth takes what the share leaves above the
 * capacities, in proportion, and none once the capacities are scaled */
static uint32_t max_now(unsigned cls, size_t share) {
    uint32_t max = bin_cap_max(cls), cap = bin_cap(cls);
    if (share >= full_cache_bytes) return max;
    if (share <= base_cache_bytes) return cap_now(cls, share);
    return cap + (uint32_t)((uint64_t)(max - cap) * (share - base_cache_bytes) /
                            (full_cache_bytes - base_cache_bytes));
}

/* Slot offsets of class c's bin at its start size, at its capacity (0:
 * its capacity is its start size) and grown (0: cannot grow), and the
 * slots of a whole cache: fixed once the options are read (tcache_scale is
 * not settable after start). */
static uint32_t slot_start[TM_NCLASSES + 1], slot_first[TM_NCLASSES + 1], slot_grown[TM_NCLASSES + 1];
static size_t slot_first_start, slot_grown_start, slot_total;

static void slot_layout_init(void) {
    size_t n = 0;
    for (unsigned c = 1; c <= TM_NCLASSES; c++) {
        slot_start[c] = (uint32_t)n;
        n += bin_cap_start(c);
    }
    slot_first_start = n;
    for (unsigned c = 1; c <= TM_NCLASSES; c++) {
        slot_first[c] = bin_cap(c) > bin_cap_start(c) ? (uint32_t)n : 0;
        if (slot_first[c]) n += bin_cap(c);
    }
    slot_grown_start = n;
    for (unsigned c = 1; c <= TM_NCLASSES; c++) {
        slot_grown[c] = bin_cap_max(c) > bin_cap(c) ? (uint32_t)n : 0;
        if (slot_grown[c]) n += bin_cap_max(c);
        base_cache_bytes += (size_t)bin_cap(c) * tm_classes[c].size;
        full_cache_bytes += (size_t)bin_cap_max(c) * tm_classes[c].size;
    }
    slot_total = n;
}

/* Give the pages of tc's grown-bin slots back to the kernel. Only once
 * every bin is back in its start slots (a drain), and while no bin can
 * grow into them: a bin that grew meanwhile would write slots the kernel
 * is zeroing. The owner's own drains (settle, thread exit, fork child)
 * call it with tc->mu held; a trimmer calls tcache_release_grown_slots
 * after dropping tc->mu, with slots_releasing set, so the owner waits for
 * neither the madvise nor its TLB shootdown. */
static void slots_purge_grown(tm_tcache_t *tc) {
    void **slots = tc->slots_mem;
    os_purge_inside(slots + slot_grown_start, slots + slot_total); /* metadata: not counted */
}

/* The same for the slots at the bins' capacities, once the cache's thread
 * has gone (thread exit, fork child): a live thread keeps them, because
 * its next bin to leave its start slots would fault a page in inside a
 * malloc or free (measured: that fault was the worst call the prober of
 * bench/spike_trim saw after a _heapmin, 185-233 us, in 3 runs of 5). */
static void slots_release_first(tm_tcache_t *tc) {
    if (!tc->slots_mem || !tc->slots_first) return;
    void **slots = tc->slots_mem;
    os_purge_inside(slots + slot_first_start, slots + slot_grown_start); /* metadata */
    tc->slots_first = false;
}

/* Up to TC_RECYCLED_WARM exited threads' caches keep their first slots in
 * memory for the next threads (the rest give them back at exit): a
 * program that runs short tasks on threads of their own faulted those
 * pages back in at each thread (an outside tester's 20 000 threads, one
 * after another: 47 881 page faults and 20 000 madvise calls of
 * trimalloc's, against 546 faults for mimalloc; 2.25 -> 1.06 s of user
 * time without the madvise; the first slots are 16 KiB a cache).
 * The recycled list holds the warm caches first, so that the next thread
 * takes one of them: a cold one on top would be taken instead, give its
 * slots back at its exit (the warm count is full) and leave the warm ones
 * unused below it (found by a reviewer: after 32 threads exited at once,
 * none of the next 20 short threads kept its slots). The warm ones are
 * few, so a cold one walks past them. */
static tm_tcache_t **recycled_cold_locked(void) {
    tm_tcache_t **at = &recycled;
    while (*at && (*at)->slots_first) at = &(*at)->next;
    return at;
}

static void recycled_push_locked(tm_tcache_t *tc) {
    tm_tcache_t **at = tc->slots_first ? &recycled : recycled_cold_locked();
    tc->next = *at;
    *at = tc;
    if (tc->slots_first) __atomic_store_n(&recycled_warm, recycled_warm + 1, __ATOMIC_RELAXED);
}

static tm_tcache_t *recycled_pop_locked(void) {
    tm_tcache_t *tc = recycled;
    if (!tc) return NULL;
    recycled = tc->next;
    if (tc->slots_first) __atomic_store_n(&recycled_warm, recycled_warm - 1, __ATOMIC_RELAXED);
    return tc;
}

/* At a thread's exit, with tc->mu held: the cache is emptied, and its
 * slots' pages go back unless fewer than TC_RECYCLED_WARM recycled caches
 * keep theirs (read without the registry lock: threads exiting at once may
 * keep a few more). A cache that stays warm keeps the pages of its
 * grown-bin slots too: until 2026-12-07 they went back at every exit, and
 * the next thread to take the cache faulted them in again as its bins grew
 * (an outside tester's 10 000 threads, one after another, each making 200
 * blocks of 16-2016 B: 18 600 page faults, 80% of them in
 * tcache_free_slow, against glibc's 1 300; one madvise of 56 KiB a
 * thread). _heapmin gives back every recycled cache's slots. */
static void drain_bins_locked(tm_tcache_t *tc);
static void drain_at_exit_locked(tm_tcache_t *tc) {
    /* as recycled_push_locked counts it: a cache without first slots (a
     * class's capacity within its start slots, tcache_scale 50 or less)
     * whose bin grew would otherwise keep its grown slots and never count
     * as warm, in every exited cache (an outside reviewer) */
    bool warm = tc->slots_first && __atomic_load_n(&recycled_warm, __ATOMIC_RELAXED) < TC_RECYCLED_WARM;
    if (warm) {
        drain_bins_locked(tc);
    } else {
        tcache_drain_locked(tc);
        slots_release_first(tc);
    }
}

static void slots_release_grown(tm_tcache_t *tc) {
    if (!tc->slots_grown) return; /* nothing to give back: no madvise */
    slots_purge_grown(tc);
    tc->slots_grown = false;
}

void tcache_release_grown_slots(tm_tcache_t *tc) {
    if (!__atomic_load_n(&tc->slots_releasing, __ATOMIC_RELAXED)) return;
    slots_purge_grown(tc);
    tm_lock(&tc->mu);
    __atomic_store_n(&tc->slots_releasing, false, __ATOMIC_RELAXED);
    tm_unlock(&tc->mu);
}

/* Put bin c of tc at its capacity (as `share`, the caller's one reading of
 * cache_share(), allows, but at least count), in the slots for its
 * capacity, with the count blocks it holds moved there (count <= its full
 * capacity) -- or, with to_start and if they fit, at its start size, in
 * its start slots. The caller decides with the same share: read twice, a
 * bound lowered in between gave a bin the free path had just found
 * room to move for no room at all, and the free then pushed a block past
 * its limit, where the fast path, which stops only at the limit, went on
 * writing into the next bin's slots (found by an outside tester, flipping
 * tcache_total_mb while threads freed: blocks handed out twice). */
static void bin_reset(tm_tcache_t *tc, unsigned c, uint32_t count, bool to_start, size_t share) {
    tm_tc_bin_t *b = &tc->bins[c];
    uint32_t cap = bin_cap_start(c);
    void **to = (void **)tc->slots_mem + slot_start[c];
    if (!cap) return;
    if ((count > cap || !to_start) && slot_first[c]) {
        uint32_t now = cap_now(c, share);
        cap = now > count ? now : count;
        to = (void **)tc->slots_mem + slot_first[c];
        tc->slots_first = true;
    }
    if (b->base != to && count) tm_ptrs_move(to, b->base, count);
    b->base = to;
    b->limit = to + cap;
    b->taken = 0;
    __atomic_store_n(&b->top, to + count, __ATOMIC_RELAXED);
}

/* After a drain a bin's next refill asks for one block, and the batch
 * doubles from there (refill_want): the first refills after a _heapmin
 * take blocks whose pages it has just given back, and a refill of `fill`
 * blocks faulted in up to REFILL_COLD_PAGES (4) pages in one malloc --
 * the worst call another thread saw during a trim (measured with a copy
 * of bench/spike_trim that logs the faults of every call over 100 us: 5
 * faults, 250-320 us, in 5 of 15 runs' worst calls). Ramping up again
 * spreads those faults over the next calls, one or two each. */
static void bin_restart(tm_tcache_t *tc, unsigned c) {
    bin_reset(tc, c, 0, true, SIZE_MAX); /* back to its start size */
    tc->bins[c].fill = 1;
    tc->bins[c].remote = 0; /* marked again by its next foreign block */
}

/* Empty every bin into the arenas, and the queue of large runs; the pages
 * of the grown-bin slots stay. Caller holds tc->mu (or is the only thread,
 * in a fork child) and the owner is not on its fast path. */
static void drain_bins_locked(tm_tcache_t *tc) {
    for (unsigned c = 1; c <= TM_NCLASSES; c++) {
        tm_tc_bin_t *b = &tc->bins[c];
        if (b->top != b->base) arena_flush(c, b->base, tc_bin_count(b));
        bin_restart(tc, c);
    }
    if (tc->rl_n) arena_free_large_batch(tc->rl, tc->rl_n);
    __atomic_store_n(&tc->rl_n, 0, __ATOMIC_RELAXED);
}

/* The same, and the grown-bin slots' pages go back. */
void tcache_drain_locked(tm_tcache_t *tc) {
    drain_bins_locked(tc);
    if (tc->slots_mem) slots_release_grown(tc);
}

/* mallctl "thread.tcache.flush": the calling thread empties its own bins and
 * queue of large runs into the arenas (the cache stays, and refills as
 * usual). A thread without a cache has nothing to flush. */
void tcache_flush_own(void) {
    if (tm_tls.state != TLS_LIVE) return;
    tm_tcache_t *tc = tm_tls.own;
    tm_lock(&tc->mu);
    tcache_settle_locked(tc);
    drain_bins_locked(tc);
    tm_unlock(&tc->mu);
}

/* The most blocks one cache can hold, for the options in force. */
size_t tcache_slots_max(void) { return slot_total; } /* >= the sum of the largest sizes */

/* Where the slots at the bins' capacities lie in a cache's slots: from
 * slot *first_start to slot *grown_start (tests). */
void tcache_slot_regions(size_t *first_start, size_t *grown_start) {
    *first_start = slot_first_start;
    *grown_start = slot_grown_start;
}

/* Blocks in tc's bins. Caller holds tc->mu, so no bin moves; the owner's
 * fast path may still push and pop, so the count is a snapshot (world.c
 * sizes its stop groups with it). */
size_t tcache_blocks_locked(tm_tcache_t *tc) {
    size_t n = 0;
    for (unsigned c = 1; c <= TM_NCLASSES; c++) {
        tm_tc_bin_t *b = &tc->bins[c];
        n += (size_t)(__atomic_load_n(&b->top, __ATOMIC_RELAXED) - b->base);
    }
    return n;
}

/* Move every block out of tc's bins into out[] (class by class, counts[c]
 * of class c) and reset the bins, so that a trimmer can give them to the
 * arenas after dropping tc->mu: the owner then waits only for this copy.
 * Caller holds tc->mu and the owner is off its fast path; out has room for
 * tcache_slots_max() blocks. Returns how many were moved. The grown-bin
 * slots' pages are left to tcache_release_grown_slots, which the caller
 * runs once it has dropped tc->mu. */
size_t tcache_take_locked(tm_tcache_t *tc, void **out, uint32_t counts[]) {
    size_t n = 0;
    counts[0] = 0;
    for (unsigned c = 1; c <= TM_NCLASSES; c++) {
        tm_tc_bin_t *b = &tc->bins[c];
        uint32_t k = tc_bin_count(b);
        counts[c] = k;
        if (k) {
            tm_ptrs_copy(out + n, b->base, k);
            n += k;
        }
        bin_restart(tc, c);
    }
    if (tc->slots_mem && tc->slots_grown) {
        tc->slots_grown = false;
        __atomic_store_n(&tc->slots_releasing, true, __ATOMIC_RELAXED);
    }
    return n;
}

/* Count tc as bound to arena ai (d = 1) or no longer (d = -1). The initial
 * thread is not counted (tc->unbound), but its arena is remembered: the
 * first thread it starts shares it (arena_choose_locked). Registry lock
 * held. */
static void arena_bind_locked(const tm_tcache_t *tc, unsigned ai, int d) {
    if (tc->unbound) {
        if (d > 0) initial_arena = ai;
    } else if (d > 0) {
        arena_bound[ai]++;
    } else {
        arena_bound[ai]--;
    }
}

/* Count a thread bound to arena a (d = 1) or no longer (d = -1): under
 * the registry lock, which every reader but the statistics holds (they
 * read it atomically, with the arena's lock). */
static void arena_count_thread_locked(tm_arena_t *a, int d) {
    __atomic_store_n(&a->nthreads, a->nthreads + (unsigned)d, __ATOMIC_RELAXED);
}

/* The arenas no thread is bound to, as a bitmap; registry lock held. */
static void orphaned_arenas_locked(uint64_t orphans[TM_MAX_ARENAS / 64]) {
    for (unsigned i = 0; i < tm_narenas; i++) {
        tm_arena_t *a = __atomic_load_n(&tm_arenas[i], __ATOMIC_ACQUIRE);
        if (a && !a->nthreads) orphans[i / 64] |= 1ull << (i % 64);
    }
}

/* Each of those gives back what waits in its transfer cache for refills,
 * then its free pages (chunk.c); no lock held. A thread bound to one of
 * them meanwhile only faults in again what it uses. */
static void release_orphaned_arenas(const uint64_t orphans[TM_MAX_ARENAS / 64]) {
    for (unsigned i = 0; i < tm_narenas; i++)
        if (orphans[i / 64] >> (i % 64) & 1) {
            xfer_flush_arena(i);
            arena_release_orphaned(arena_get(i));
        }
}

/* At most one such release per ORPHAN_GAP_MS (or dirty_decay_ms if
 * shorter). A program that runs its work in rounds of threads, all of them
 * exiting at the end of each round, would otherwise give back the
 * workers' pages at every round's end and fault them in again at the
 * next: mimalloc-bench's mstress (rounds of 2 workers a few ms apart) took
 * 1.44x tcmalloc's CPU, 272k page faults against 4.4k, 469 madvise calls
 * of 8 MiB each (an outside tester, 2026-12-05). A last exit within the
 * gap leaves the release pending; the first GC tick or large allocation
 * of any thread (or the background thread's wake-up) after the gap does
 * it, if those arenas are still without a thread (tcache_orphans_tick).
 * The cost: a program that makes no such call afterwards -- a main thread
 * that sleeps, or whose every call hits its cache -- keeps those pages
 * until it does, or until _heapmin (an outside reviewer: 3 rounds of 4
 * threads 50 ms apart, each touching 32 MiB, then an idle main thread:
 * 129-138 MiB stayed, 42 MiB before this change). Both times are guarded
 * by the registry lock; tm_orphan_due is read without it first. */
#define ORPHAN_GAP_MS 1000
static uint64_t orphan_last_ns; /* the last release (0: none yet) */
uint64_t tm_orphan_due;         /* when a skipped one is due (0: none) */

static uint64_t orphan_gap_ns(void) {
    long ms = __atomic_load_n(&tm_opt.dirty_decay_ms, __ATOMIC_RELAXED);
    return (uint64_t)(ms < ORPHAN_GAP_MS ? ms : ORPHAN_GAP_MS) * 1000000u;
}

/* The last thread but the initial one left, or a pending release is due:
 * true if the release is to be made now (the arenas without a thread are
 * in orphans), false if it waits (tm_orphan_due set) or the decay is off.
 * Registry lock held. */
static bool orphans_release_now_locked(uint64_t now, uint64_t orphans[TM_MAX_ARENAS / 64]) {
    if (__atomic_load_n(&tm_opt.dirty_decay_ms, __ATOMIC_RELAXED) < 0) { /* never */
        __atomic_store_n(&tm_orphan_due, 0, __ATOMIC_RELAXED);
        return false;
    }
    uint64_t gap = orphan_gap_ns();
    if (orphan_last_ns && (now < orphan_last_ns || now - orphan_last_ns < gap)) {
        __atomic_store_n(&tm_orphan_due, orphan_last_ns + gap, __ATOMIC_RELAXED);
        return false;
    }
    orphan_last_ns = now ? now : 1;
    __atomic_store_n(&tm_orphan_due, 0, __ATOMIC_RELAXED);
    orphaned_arenas_locked(orphans);
    return true;
}

void tcache_orphans_tick(void) {
    uint64_t due = __atomic_load_n(&tm_orphan_due, __ATOMIC_RELAXED);
    if (!due) return;
    uint64_t now = os_now_ns();
    if (now < due) return;
    uint64_t orphans[TM_MAX_ARENAS / 64] = {0};
    tm_lock(&registry_lock);
    bool go = __atomic_load_n(&tm_orphan_due, __ATOMIC_RELAXED) && orphans_release_now_locked(now, orphans);
    tm_unlock(&registry_lock);
    if (go) release_orphaned_arenas(orphans);
}

static void tcache_destructor(void *arg) {
    tm_tcache_t *tc = arg;
    if (!tc || tc == &tm_tcache_sentinel) return;
    /* already done by the other of the two ways it is called (below) */
    if (tm_tls.state == TLS_DEAD || tm_tls.own != tc) return;
    tm_lock(&tc->mu);
    tm_tls.state = TLS_DEAD; /* from now on no one points tls.tc back at tc */
    __atomic_store_n(&tm_tls.tc, &tm_tcache_sentinel, __ATOMIC_RELEASE);
    drain_at_exit_locked(tc);
    __atomic_store_n(&tc->drain_pending, 0, __ATOMIC_RELAXED);
    tm_unlock(&tc->mu);
    tm_lock(&registry_lock);
    if (tc->prev) tc->prev->next = tc->next;
    else registry = tc->next;
    if (tc->next) tc->next->prev = tc->prev;
    /* Out of the count of emptied caches, once out of the registry: a
     * trimmer walks the registry under its lock, and could flag the cache
     * again until then. (Until 2026-12-05 this came before the registry
     * lock, and threads exiting during _heapmin left flags that no one
     * took back: an outside tester's pool, exiting threads while trimming,
     * counted 700+ emptied caches for one live one, and the bound was
     * gone.) */
    tm_lock(&tc->mu);
    tcache_mark_used_locked(tc);
    tm_unlock(&tc->mu);
    __atomic_store_n(&registry_count, registry_count - 1, __ATOMIC_RELAXED);
    tc->state = TC_STATE_FREE;
    arena_count_thread_locked(tc->arena, -1);
    arena_bind_locked(tc, tc->arena->index, -1);
    recycled_push_locked(tc);
    /* the last thread but the initial one (chunk.c, "arenas left without a
     * thread") */
    uint64_t orphans[TM_MAX_ARENAS / 64] = {0};
    bool last = !registry || (!registry->next && registry->unbound);
    if (last) last = orphans_release_now_locked(os_now_ns(), orphans);
    tm_unlock(&registry_lock);
    if (last) release_orphaned_arenas(orphans);
    /* A decay tick without the cap on what it gives back: no caller of
     * malloc waits for an exiting thread, and in a pool whose threads come
     * and go while the rest idle, the capped ticks of the new threads' slow
     * paths were the only ones (an outside tester: a 313 MiB spike
     * decayed to 233 MiB in 30 s with dirty_decay_ms at 10 s, to 197 MiB
     * at 1 s, 2 MiB a tick). */
    if (!background_running()) arena_decay_tick(SIZE_MAX);
}

/* The thread-exit key's index. glibc calls the key destructors of an
 * exiting thread in rounds (at most PTHREAD_DESTRUCTOR_ITERATIONS, 4), in
 * the order of the keys' indices within a round. A thread whose first
 * allocation came from a destructor in the last round made its cache and
 * set this key after glibc had passed it: tcache_destructor never ran,
 * the cache stayed registered with owner_tls in the dead thread's memory,
 * and the next _heapmin wrote there (found by review, 2026-12-05). With
 * this key after the program's, the same round reaches it after any of
 * theirs that allocates. So it takes index 31, the last that glibc keeps
 * in the thread descriptor itself (keys from 32 on cost each thread an
 * allocation), and keys created later take the indices below, which the
 * spare keys made here hold only until it exists. (glibc's key is its
 * index.) */
#define TC_KEY_INDEX 31u

/* Where index 31 was taken before trimalloc started (a library whose
 * constructor made 31 keys or more, and ran first: the order under
 * LD_PRELOAD and with the static archive), the key lands at 32 or above,
 * and keys from 32 on live in blocks glibc allocates at a thread's first
 * pthread_setspecific of one of them. When that allocation was the
 * thread's first, the cache made inside it set our key in a block of its
 * own, which the outer call then replaced with the block it was
 * allocating: the thread's value for our key was lost, its cache was never
 * emptied at its exit, and the next _heapmin wrote into the dead thread's
 * memory (an outside tester: a library making 40 keys, 300 threads whose
 * first allocation was glibc's for a key of the program's; a crash in
 * _heapmin every run). So such a thread also registers its cache with
 * glibc's C++ thread_local destructors (__cxa_thread_atexit_impl, run
 * before the key destructors), which need no key. Its later allocations,
 * in the key destructors, then run uncached (TLS_DEAD). */
extern int __cxa_thread_atexit_impl(void (*fn)(void *), void *obj, void *dso)
    __attribute__((weak));
extern void *__dso_handle __attribute__((weak));

/* A key destructor of the program's that calls pthread_exit (undefined by
 * POSIX, harmless under glibc's malloc) makes glibc start the thread's exit
 * again, and the second pass runs the key destructors only if a value was
 * set since the round began: the keys not reached yet -- ours, at index
 * 31, among them -- were skipped. The cache stayed registered with its
 * blocks (57 KiB of RSS per exited thread), and the next _heapmin or
 * _heapchk wrote into the dead thread's memory (an outside tester,
 * 2026-12-06: a crash in every run; tests/stress/thread_exit.c). So a
 * second key, made before any other of ours and so usually the process's
 * first (index 0 unless a library made keys before trimalloc started),
 * sets its value again in each round while the thread's cache lives: the
 * round that a pthread_exit cuts short has set a value, and the pass it
 * starts runs ours. It costs an exiting thread one more round over its
 * keys. (Registering the cache's exit with the thread_local destructors,
 * as for a key above 31 below, was tried first: they run before every key
 * destructor, but a thread whose first call comes from a key destructor
 * registers after they ran, and glibc's record of it leaked, 32 bytes a
 * thread -- LeakSanitizer's find in this test.) A key of the program's
 * with an index below this one, whose destructor calls pthread_exit,
 * still loses the cache. */
static void tc_first_key_dtor(void *arg) {
    if (tm_tls.state == TLS_LIVE && tm_tls.own == arg) pthread_setspecific(tc_first_key, arg);
}

static void tc_key_create(void) {
    pthread_key_t spare[TC_KEY_INDEX], k;
    unsigned n = 0;
    tc_first_key_ok = pthread_key_create(&tc_first_key, tc_first_key_dtor) == 0;
    while (n < TC_KEY_INDEX && pthread_key_create(&k, NULL) == 0) {
        if (k >= TC_KEY_INDEX) { /* index 31 is taken: the next free one */
            pthread_key_delete(k);
            break;
        }
        spare[n++] = k;
        if (k == TC_KEY_INDEX - 1) break;
    }
    tc_key_ok = pthread_key_create(&tc_key, tcache_destructor) == 0;
    while (n) pthread_key_delete(spare[--n]);
}

/* _heapmin: the slot arrays of the caches exited threads left for reuse
 * are unmapped (the next thread to take such a cache maps one again). An
 * array is about 84 KiB and a mapping of its own, so the address space
 * kept for them followed the most threads that ever ran at once: 46 MB
 * for good after 512 (found by a tester). The list is taken out under the
 * registry lock and unmapped without it. */
void tcache_release_recycled(void) {
    tm_lock(&registry_lock);
    tm_tcache_t *list = recycled;
    recycled = NULL;
    __atomic_store_n(&recycled_warm, 0, __ATOMIC_RELAXED);
    tm_unlock(&registry_lock);
    if (!list) return;
    tm_tcache_t *last = list;
    for (tm_tcache_t *tc = list; tc; tc = tc->next) {
        meta_free(tc->slots_mem, tc->slots_size);
        tc->slots_mem = NULL;
        tc->slots_first = false;
        tc->slots_grown = false; /* nothing left to give back */
        last = tc;
    }
    tm_lock(&registry_lock);
    tm_tcache_t **at = recycled_cold_locked(); /* below those that exited since, warm or not */
    last->next = *at;
    *at = list;
    tm_unlock(&registry_lock);
}

void tcache_init(void) {
    slot_layout_init();
    xfer_init();
    tc_key_create();
    os_random(&tm_cookie_key, sizeof tm_cookie_key);
    tm_cookie_key |= 1; /* never zero: a zeroed block must not look free */
}

/* Put tc into the registry, which is kept in address order: fork's prepare
 * handler locks every live cache in registry order, and an order that
 * changed from one fork to the next -- a reused cache went to the head,
 * until 2026-12-07 -- took two caches' locks in both orders, which
 * ThreadSanitizer reports as a lock-order inversion (an outside reviewer;
 * no deadlock: nothing else holds two caches' locks, and the handler holds
 * the registry lock). O(live threads) per thread start, under the lock
 * that start takes anyway. */
static void registry_insert_locked(tm_tcache_t *tc) {
    tm_tcache_t *prev = NULL, *next = registry;
    while (next && (uintptr_t)next < (uintptr_t)tc) {
        prev = next;
        next = next->next;
    }
    tc->prev = prev;
    tc->next = next;
    if (next) next->prev = tc;
    if (prev) prev->next = tc;
    else registry = tc;
}

/* A thread makes its cache at its first allocation or free -- but not in
 * the last stage of its exit. glibc runs the key destructors (ours among
 * them) and then, in a thread that exits detached, frees the TLS blocks
 * of other exited threads' stacks that drop out of its stack cache. A
 * thread that had never allocated made its cache there: no destructor
 * came to unregister it, the cache stayed registered with owner_tls in
 * the thread's dead stack, and the next _heapmin wrote into that memory
 * (a crash once glibc unmapped the stack; found by review, 2026-12-05;
 * tests/stress/thread_exit.c). Such calls now run uncached, to and from
 * the arenas directly (TLS_EXITING), and look again every
 * TC_EXITING_RECHECK calls: a thread that blocked SIGCANCEL by a raw
 * system call, or a signal handler's first call, is not exiting, and
 * paying a system call on each of its calls made it 200x slower (found
 * by review). Costs one system call in a thread's first call. */
#define TC_EXITING_RECHECK 256u

static tm_tcache_t *tcache_create(void) {
    if (os_thread_exiting()) {
        tm_tls.state = TLS_EXITING;
        tm_tls.recheck = TC_EXITING_RECHECK;
        return NULL;
    }
    tm_tls.state = TLS_BOOTING;
    tm_lock(&registry_lock);
    tm_tcache_t *tc = recycled_pop_locked();
    tm_unlock(&registry_lock);
    size_t slots_size = slot_total * sizeof(void *);
    if (tc && tc->slots_size < slots_size) { /* option changed: resize */
        meta_free(tc->slots_mem, tc->slots_size);
        tc->slots_mem = NULL;
    }
    if (!tc) {
        tc = meta_alloc(sizeof *tc);
        if (!tc) { tm_tls.state = TLS_NONE; return NULL; }
    }
    if (!tc->slots_mem) {
        tc->slots_mem = meta_alloc(slots_size);
        tc->slots_size = slots_size;
        if (!tc->slots_mem) {
            meta_free(tc, sizeof *tc);
            tm_tls.state = TLS_NONE;
            return NULL;
        }
    }
    tc->bins[0] = (tm_tc_bin_t){0};
    for (unsigned c = 1; c <= TM_NCLASSES; c++) {
        uint32_t cap = bin_cap(c);
        tc->bins[c] = (tm_tc_bin_t){0}; /* NULL base, top and limit if cap is 0 */
        bin_reset(tc, c, 0, true, SIZE_MAX);
        tc->bins[c].fill = (uint16_t)(cap >= 32 ? cap / 16 : 1);
    }
    __atomic_store_n(&tc->drain_pending, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&tc->rl_n, 0, __ATOMIC_RELAXED);
    tc->rl_gc_n = 0;
    tc->gc_tick = 0;
    tc->gc_next = 1;
    tc->idle_seen = 0; /* a new record for the background thread's scan (world.c) */
    tcache_mark_used_locked(tc); /* no lock: not in the registry yet */
    tc->owner_tls = &tm_tls;
    tm_mutex_init(&tc->mu);
    tc->unbound = os_gettid() == os_getpid();
    tm_lock(&registry_lock);
    unsigned ai = arena_choose_locked(arena_bound, initial_arena);
    arena_bind_locked(tc, ai, 1);
    tm_unlock(&registry_lock);
    tc->arena = arena_get(ai);
    if (!tc->arena && (tc->arena = arena_get(0))) {
        tm_lock(&registry_lock);
        arena_bind_locked(tc, ai, -1);
        arena_bind_locked(tc, 0, 1);
        tm_unlock(&registry_lock);
    }
    if (!tc->arena) {
        tm_lock(&registry_lock);
        arena_bind_locked(tc, ai, -1);
        /* kept for the next thread (it was dropped until 2026-12-05:
         * noticed by an outside tester reading the code) */
        tc->state = TC_STATE_FREE;
        recycled_push_locked(tc);
        tm_unlock(&registry_lock);
        tm_tls.state = TLS_NONE;
        return NULL;
    }
    /* Published to trimmers by the registry lock below. From here on a
     * nested allocation (pthread_setspecific) uses the cache itself. */
    tm_tls.own = tc;
    tm_tls.arena = tc->arena->index;
    tm_tls.state = TLS_LIVE;
    tm_lock(&registry_lock);
    arena_count_thread_locked(tc->arena, 1);
    xfer_set_make_locked(tc->arena->index);
    tc->gc_xfer_arena = tc->arena->index;
    tc->state = TC_STATE_LIVE;
    registry_insert_locked(tc);
    __atomic_store_n(&registry_count, registry_count + 1, __ATOMIC_RELAXED);
    tm_unlock(&registry_lock);
    /* May allocate (keys past the first 32): the state is LIVE by now, so
     * that allocation uses the cache just made (see above). */
    if (tc_key_ok) pthread_setspecific(tc_key, tc);
    if (tc_first_key_ok) pthread_setspecific(tc_first_key, tc);
    if (tc_key_ok && (unsigned)tc_key > TC_KEY_INDEX && __cxa_thread_atexit_impl)
        __cxa_thread_atexit_impl(tcache_destructor, tc, &__dso_handle);
    /* under tc->mu: a trimmer may be pointing tls.tc at the sentinel */
    tm_lock(&tc->mu);
    tcache_settle_locked(tc);
    tm_unlock(&tc->mu);
    return tc;
}

/* The arena a thread without a cache uses; NULL if it cannot be made. */
static tm_arena_t *uncached_arena(void) {
    if (tm_tls.state == TLS_LIVE) return tm_tls.own->arena;
    return arena_get(0);
}

static void tcache_gc_tick_large(void);

/* True if the calling thread has no cache and may make one now. */
static bool may_make_cache(void) {
    if (tm_tls.state == TLS_EXITING && --tm_tls.recheck == 0) tm_tls.state = TLS_NONE;
    return tm_tls.state == TLS_NONE;
}

/* The calling thread's arena, for a large allocation. */
tm_arena_t *tcache_arena(void) {
    if (may_make_cache()) {
        tm_init();
        tcache_create();
    }
    if (tm_tls.state == TLS_LIVE) tcache_gc_tick_large();
    return uncached_arena();
}

/* The caller's own cache, made if needed; NULL if the thread runs
 * uncached (booting, exited, or out of memory for a cache). */
static tm_tcache_t *tcache_get_slow(void) {
    if (likely(tm_tls.state == TLS_LIVE)) return tm_tls.own;
    tm_init();
    if (may_make_cache()) return tcache_create();
    return NULL;
}

/* Called by the owner or a trimmer holding tc->mu, with the owner off its
 * fast path: do a drain a trimmer asked for, and point the owner's TLS back
 * at its cache. */
void tcache_settle_locked(tm_tcache_t *tc) {
    if (__atomic_load_n(&tc->drain_pending, __ATOMIC_RELAXED)) {
        tcache_drain_locked(tc);
        __atomic_store_n(&tc->drain_pending, 0, __ATOMIC_RELAXED);
    }
    if (tc->state == TC_STATE_LIVE && tc->owner_tls->state == TLS_LIVE)
        __atomic_store_n(&tc->owner_tls->tc, tc, __ATOMIC_RELEASE);
}

/* ---- garbage collection --------------------------------------------------
 * A cache holds about 2.2 MiB of blocks at most (5.5 once bins grow), and
 * what it holds of a class the thread stopped using stays out of the
 * arenas (and keeps its slab's pages resident) until _heapmin. So every
 * TC_GC_EVERY slow-path calls the owner visits one class, round robin: if
 * the bin holds as many blocks as at its last visit (a class the thread no
 * longer uses keeps its count; one in use moves), it gives back half of
 * them, the older half, and its refill batch halves; each later visit that
 * finds it unchanged gives back half again. The class's transfer cache is
 * visited too (all of it goes back if its count did not move). When the
 * last block of an idle class has gone back, the arena's empty slab of
 * that class goes too. Large allocations count too: one visit per
 * TC_GC_EVERY^2 of them (tcache_gc_tick_large). The fast path does
 * no bookkeeping for this: a program that only ever hits its cache makes no
 * slow-path calls, and keeps its blocks until _heapmin or thread exit. */
#define TC_GC_EVERY 8

static void tcache_gc_locked(tm_tcache_t *tc) {
    /* remote large frees that have waited a whole visit go home */
    if (tc->rl_n && tc->rl_n == tc->rl_gc_n) {
        arena_free_large_batch(tc->rl, tc->rl_n);
        __atomic_store_n(&tc->rl_n, 0, __ATOMIC_RELAXED);
    }
    tc->rl_gc_n = tc->rl_n;
    unsigned cls = tc->gc_next;
    tc->gc_next = cls == TM_NCLASSES ? 1 : cls + 1;
    tm_tc_bin_t *b = &tc->bins[cls];
    uint32_t count = tc_bin_count(b);
    bool flushed = false;
    if (count && count == b->gc_count) {
        uint32_t n = (count + 1) / 2;
        arena_flush(cls, b->base, n);
        tm_ptrs_move(b->base, b->base + n, count - n);
        count -= n;
        __atomic_store_n(&b->top, b->base + count, __ATOMIC_RELAXED);
        b->fill = (uint16_t)(b->fill / 2 ? b->fill / 2 : 1);
        /* a bin that grew past its capacity shrinks by half (count <= cap
         * / 2 already), and back to the slots for its capacity: an idle
         * bin does not go back to its start size (a program that uses a
         * class in bursts would grow it again each time); a drain does */
        size_t share = cache_share();
        uint32_t cap = tc_bin_cap(b), first = cap_now(cls, share);
        if (cap / 2 > first) b->limit = b->base + cap / 2;
        else if (cap > first) bin_reset(tc, cls, count, false, share);
        flushed = true;
    }
    /* An idle bin emptied holds no other arena's block any more: its
     * mark goes (its next foreign block sets it again). Until 2026-12-08
     * a mark stayed for the thread's life, and a thread that had once
     * freed another thread's blocks of a class borrowed in that class
     * for good. */
    if (flushed && !count) b->remote = 0;
    b->gc_count = (uint16_t)count;
    flushed |= xfer_gc(tc->arena->index, cls);
    /* and, in turn, another arena's: one whose threads have all gone
     * keeps what other threads parked there for them */
    if (tm_narenas > 1) {
        unsigned other = tc->gc_xfer_arena = (tc->gc_xfer_arena + 1) % tm_narenas;
        if (other != tc->arena->index) xfer_gc(other, cls);
    }
    /* The last of an idle class went back: the empty slab its arena keeps
     * against thrashing (arena.c) goes too, to the free runs, where the
     * growth purge can give its pages back and other classes and large
     * blocks can use them. (A sweep through the sizes left one such slab
     * in each of the 40 classes there were then, 0.9 MiB.) */
    if (flushed && !count && !xfer_count(xfer_set(tc->arena->index), cls))
        arena_release_idle_slab(tc->arena, cls);
}

/* True when the GC ran: the caller then calls gc_tick_unlocked() once it
 * has dropped tc->mu. */
TM_INLINE bool tcache_gc_tick_locked(tm_tcache_t *tc) {
    if (++tc->gc_tick < TC_GC_EVERY) return false;
    tc->gc_tick = 0;
    tcache_gc_locked(tc);
    return true;
}

/* The part of a GC tick that may make system calls, with no lock held of
 * ours (libc may hold its own: background.c says why no tick starts the
 * background thread): the decay (chunk.c). The decay
 * gives back at most TM_DECAY_TICK_PAGES here, the rest on later ticks:
 * the malloc or free that ticks waits for its madvise calls. Where the
 * background thread runs, it decays the arenas and this thread does not. */
static void gc_tick_unlocked(void) {
    tcache_orphans_tick();
    if (!background_running()) arena_decay_tick(TM_DECAY_TICK_PAGES);
}

/* After every slow-path call, once its locks are dropped: the GC tick if
 * one was due, else the decay's part of it if no tick has read the coarse
 * clock in this epoch (4 to 17 ms; a time-stamp counter read and a load
 * when one has). A tick every TC_GC_EVERY slow-path calls alone was too
 * rare under light traffic that the caches mostly serve: an outside
 * tester's program freed 200 MB, then made 20 calls every 10 ms; the
 * pages, due after dirty_decay_ms (10 s), went back at about 3 MB/s, 2
 * MiB a tick (214 MB still resident 15 s later; jemalloc 34). Each tick
 * still gives back at most TM_DECAY_TICK_PAGES, and at most one an epoch
 * is made, as before under heavy traffic. Not where caching is off
 * (tcache_scale:0, junk, zero): there every call comes here, and the
 * counter read cost 14% of a loop of small mallocs and frees (an outside
 * reviewer); those calls made no tick before either. */
static void slow_path_tick(bool gc, bool cached) {
    if (gc) gc_tick_unlocked();
    else if (cached && !background_running() && arena_decay_epoch_passed()) arena_decay_tick(TM_DECAY_TICK_PAGES);
}

/* A thread that allocates only large blocks for a while (a phase of big
 * buffers after one of small blocks) makes no cache slow-path calls, and
 * the blocks its cache holds of the classes it used before would stay out
 * of the arena through that whole phase -- pinning their slabs, which the
 * arena's growth purge cannot see -- while the large runs fault in fresh
 * pages. So every TC_GC_EVERY^2 (64) large allocations also make one GC
 * visit, as TC_GC_EVERY ticks of TC_GC_EVERY each (measured: the size
 * sweep, 1 thread, peak RSS 6.15 -> 5.96 MiB). The count is the owner's
 * alone, in TLS; tc->mu is taken once per visit (until 2026-12-05 once
 * per tick, 8 large allocations: 1% of the size sweep's samples, the
 * lock's atomic waiting for the sweep's page writes). */
static __thread unsigned large_ticks __attribute__((tls_model("initial-exec")));

static void tcache_gc_tick_large(void) {
    if (++large_ticks < TC_GC_EVERY * TC_GC_EVERY) return;
    large_ticks = 0;
    tm_tcache_t *tc = tm_tls.own;
    tm_lock(&tc->mu);
    tcache_settle_locked(tc);
    tc->gc_tick = TC_GC_EVERY - 1; /* the visit is due */
    bool decay = tcache_gc_tick_locked(tc);
    tm_unlock(&tc->mu);
    if (decay) gc_tick_unlocked();
}

/* Slow start: a class's first refills are small, so a thread that uses few
 * blocks of it pins few; each refill doubles the next, up to half the bin
 * (and never more than room). */
static uint32_t refill_want(tm_tc_bin_t *b, uint32_t room) {
    uint32_t cap = tc_bin_cap(b), want = b->fill, half = cap / 2 ? cap / 2 : 1;
    if (want < 1 || want > half) want = half;
    b->fill = (uint16_t)(want * 2 < half ? want * 2 : half);
    return want < room ? want : room;
}


void *tcache_malloc_slow(size_t size, unsigned cls) {
    __atomic_store_n(&tm_tls.busy, 0, __ATOMIC_RELEASE);
    tm_tcache_t *tc = tcache_get_slow(); /* initialises the allocator if need be */
    /* Before initialisation (a library constructor that runs before ours)
     * the class tables are still zero and the fast path computed class 0. */
    if (unlikely(cls == 0)) cls = size_class_of(size);
    void *p = NULL;
    bool decay = false;
    if (!tc) {
        /* NULL when not even the first arena's metadata could be mapped
         * (a tight RLIMIT_DATA or RLIMIT_AS at the first call): NULL, ENOMEM */
        tm_arena_t *a = uncached_arena();
        if (a) arena_refill(a, cls, &p, 1);
    } else {
        tm_lock(&tc->mu);
        tcache_settle_locked(tc);
        tcache_mark_used_locked(tc);
        tm_tc_bin_t *b = &tc->bins[cls];
        uint32_t cap = tc_bin_cap(b);
        if (cap == 0) /* caching off (tcache_scale:0, junk, zero) */
            arena_refill(tc->arena, cls, &p, 1);
        else {
            if (b->top == b->base) {
                bool start = b->base == (void **)tc->slots_mem + slot_start[cls];
                if (start && b->taken >= TC_START_SLOTS && slot_first[cls] && !tc->slots_releasing) {
                    /* empty again after refills that brought a start
                     * size of blocks, none of which came back: the
                     * thread holds more than its start size, so the bin
                     * moves to its capacity now, if its share allows
                     * more than the start size (the share read once,
                     * here, and only here on this path) */
                    size_t share = cache_share();
                    if (cap_now(cls, share) > cap) {
                        bin_reset(tc, cls, 0, false, share);
                        cap = tc_bin_cap(b);
                        start = false;
                    }
                }
                uint32_t want = refill_want(b, cap);
                uint32_t got = xfer_get(tc->arena->index, cls, b->base, want);
                if (got == 0 && b->remote)
                    got = arena_refill_remote(tc->arena, TM_MAX_ARENAS, cls, b->base, want);
                else if (got == 0)
                    got = arena_refill(tc->arena, cls, b->base, want);
                b->missed = 1;
                if (start) b->taken = (uint8_t)(b->taken + got > 255 ? 255 : b->taken + got);
                __atomic_store_n(&b->top, b->base + got, __ATOMIC_RELAXED);
            }
            if (b->top != b->base) {
                p = b->top[-1];
                __atomic_store_n(&b->top, b->top - 1, __ATOMIC_RELAXED);
            }
            decay = tcache_gc_tick_locked(tc);
        }
        tm_unlock(&tc->mu);
        slow_path_tick(decay, cap != 0);
    }
    if (p) {
        *tm_cookie_slot(p) = 0;
        if (unlikely(tm_opt.junk | tm_opt.zero))
            memset(p, tm_opt.zero ? 0 : 0xa5, tm_classes[cls].size);
    } else {
        errno = ENOMEM;
    }
    return p;
}

void tcache_free_slow(void *p, unsigned cls) {
    __atomic_store_n(&tm_tls.busy, 0, __ATOMIC_RELEASE);
    if (unlikely(tm_opt.junk)) memset(p, 0x5a, tm_classes[cls].size);
    *tm_cookie_slot(p) = tm_cookie_of(p); /* free: carries its cookie */
    tm_tcache_t *tc = tcache_get_slow();
    if (!tc) {
        arena_flush(cls, &p, 1);
        return;
    }
    tm_lock(&tc->mu);
    tcache_settle_locked(tc);
    tcache_mark_used_locked(tc);
    tm_tc_bin_t *b = &tc->bins[cls];
    uint32_t cap = tc_bin_cap(b), count = tc_bin_count(b);
    if (cap >= 2 && count == 0 && block_arena(p) != tc->arena->index) {
        /* Another arena's block into an empty bin (alloc.c says why that
         * comes here): refill the bin first and put the block under what
         * the refill brought, so malloc hands out those before it, and an
         * overflow (which flushes the bottom half) sends it home. */
        b->remote = 1;
        uint32_t want = refill_want(b, cap - 1);
        uint32_t got = xfer_get(tc->arena->index, cls, b->base + 1, want);
        /* borrowing, never from p's arena, whose slabs hold the objects
         * of the thread that handed p over */
        if (got == 0) got = arena_refill_remote(tc->arena, block_arena(p), cls, b->base + 1, want);
        b->base[0] = p;
        __atomic_store_n(&b->top, b->base + 1 + got, __ATOMIC_RELAXED);
        tm_unlock(&tc->mu);
        return;
    }
    if (cap && count >= cap) {
        /* The bin overflows. If it ran dry since it last overflowed, the
         * program's bursts of frees and mallocs of this class are bigger
         * than half the bin, so it swings from empty to full and every
         * swing is a round trip to the transfer cache (a producer that
         * frees in batches, say): it grows to twice its size instead of
         * flushing; an idle bin shrinks back (tcache_gc_locked), and a
         * drain resets it. A bin in its start slots moves to its capacity
         * on its first overflow whether or not it ran dry: the thread
         * holds more than its start size, and one that only frees (a
         * consumer of another thread's blocks) never runs it dry -- left
         * there it flushed every 4 frees (mimalloc-bench's xmalloc-test,
         * 2 producers and 2 consumers of 64 B blocks: 2.3x slower than
         * before the start slots). */
        size_t share = cache_share();
        uint32_t max = max_now(cls, share);
        /* in its start slots, with room for its capacity elsewhere */
        bool start = b->base == (void **)tc->slots_mem + slot_start[cls] && slot_first[cls];
        bool grow = !tc->slots_releasing &&
                    (start ? cap_now(cls, share) > cap : b->missed && cap < max);
        b->missed = 0;
        b->taken = 0;
        if (grow && start) { /* from its start size to its capacity, at once */
            bin_reset(tc, cls, count, false, share);
        } else if (grow) { /* doubled, in the room for its largest size if need be */
            cap = cap * 2 < max ? cap * 2 : max;
            void **grown = (void **)tc->slots_mem + slot_grown[cls];
            if (b->base != grown && cap > bin_cap(cls)) {
                tc->slots_grown = true;
                tm_ptrs_copy(grown, b->base, count);
                b->base = grown;
                __atomic_store_n(&b->top, grown + count, __ATOMIC_RELAXED);
            }
            b->limit = b->base + cap;
        } else if (cap > max) { /* the share shrank: down to it, half full */
            uint32_t n = count - max / 2;
            b->remote |= bin_flush(cls, b->base, n, tc->arena->index);
            tm_ptrs_move(b->base, b->base + n, count - n);
            count -= n;
            b->limit = b->base + max;
            cap = max;
        } else { /* flush the older half (the bottom of the stack) */
            uint32_t n = cap / 2 ? cap / 2 : count;
            b->remote |= bin_flush(cls, b->base, n, tc->arena->index);
            tm_ptrs_move(b->base, b->base + n, count - n);
            count -= n;
        }
    }
    bool decay = false;
    if (cap) {
        tm_assert(count < tc_bin_cap(b)); /* the fast path stops only at the limit */
        b->base[count] = p;
        __atomic_store_n(&b->top, b->base + count + 1, __ATOMIC_RELAXED);
        decay = tcache_gc_tick_locked(tc);
    } else {
        arena_flush(cls, &p, 1);
    }
    tm_unlock(&tc->mu);
    slow_path_tick(decay, cap != 0);
}

/* ---- remote large frees -------------------------------------------------
 * A large run is freed under its arena's lock. When the freeing thread is
 * bound to another arena -- a consumer freeing the buffers a producer
 * allocated -- that lock is the one the producer takes for every
 * allocation, and the two threads fight over it on every call (measured:
 * 2 threads passing each other 8-32 KiB blocks made 15 000 futex calls per
 * 800 000 operations). So such runs wait in the freeing thread's cache and
 * go home together when the queue is full: one hold of each arena's lock
 * per batch (arena_free_large_batch). The queue holds at most TM_RL_MAX
 * runs and TC_RL_PAGES pages (a longer run goes home at once); a run that
 * would take it past either sends home its older half first, and more of
 * its oldest runs if the new one still does not fit. (Until 2026-12-05
 * the whole queue went, and its length adapted after each batch to the
 * bytes the batch held; a tester found that a batch of short runs set it
 * for long ones: 31 runs of 2 MiB queued.) Only the first page of a large
 * block the program holds is queued (its fast[] entry carries
 * TM_FAST_LARGE, which the queueing
 * swaps for TM_FAST_QUEUED); any other address goes to arena_free_large,
 * which reports it at once, and a second free(), realloc() or
 * malloc_usable_size() of a queued block reports a double free. The
 * queue empties with the bins: _heapmin, thread exit, fork, and the
 * garbage collection once it has not moved for a visit. Runs of the
 * thread's own arena, and every run when caching is off, are freed at
 * once (design.md, "Large blocks freed by their own arena's thread", says
 * why: queueing short ones was tried and taken out). Under tcache_total_mb
 * the queue's bound shrinks as the bins' do (rl_bound): until 2026-12-06
 * it stayed 1 MiB, so 128 threads that freed other arenas' runs could park
 * 128 MiB outside the common bound.
 *
 * The queue is the owner's, guarded as its bins are: the owner appends a
 * run that fits and takes back its newest without tc->mu, inside the
 * world-stop handshake (rl_push_owner, tcache_large_reuse); everything else
 * happens under tc->mu, by the owner or by a trimmer that stopped it. */

/* The queue's bound in pages: TC_RL_PAGES while a cache's share of
 * tcache_total_mb covers a cache with every bin grown, scaled down with the
 * share below that (as the bins' growth is, max_now), so the caches and
 * their queues together hold at most (5.5 + 1) / 5.5 = 1.18 times the
 * option's bytes at the default scale. 0: every run goes home at once. */
static uint32_t rl_bound(void) {
    size_t share = cache_share();
    if (share >= full_cache_bytes) return TC_RL_PAGES;
    return (uint32_t)((uint64_t)TC_RL_PAGES * share / full_cache_bytes);
}

/* Pages of the runs in tc's queue: under tc->mu, or by the owner inside
 * the handshake (rl_push_owner). */
static uint32_t queued_pages(const tm_tcache_t *tc) {
    uint32_t n = 0;
    for (unsigned i = 0; i < tc->rl_n; i++) n += tc->rl_pages[i];
    return n;
}

/* Append run p (need pages) at index n of tc's queue: rl[n] is written
 * before rl_n is published, for a reader under mu (statistics) and for a
 * fork child of this moment. */
static void rl_append(tm_tcache_t *tc, unsigned n, void *p, uint32_t need) {
    __atomic_store_n(&tc->rl[n], p, __ATOMIC_RELAXED);
    __atomic_store_n(&tc->rl_pages[n], (uint16_t)need, __ATOMIC_RELAXED);
    __atomic_store_n(&tc->rl_n, n + 1, __ATOMIC_RELEASE);
}

/* Take k runs out of tc's queue from index i on, the others keeping their
 * order (oldest first). Under tc->mu. */
static void rl_cut(tm_tcache_t *tc, unsigned i, unsigned k) {
    unsigned rest = tc->rl_n - i - k;
    tm_ptrs_move(tc->rl + i, tc->rl + i + k, rest);
    for (uint32_t j = 0; j < rest; j++) tc->rl_pages[i + j] = tc->rl_pages[i + k + j];
    __atomic_store_n(&tc->rl_n, tc->rl_n - k, __ATOMIC_RELAXED);
}

/* The owner's lockless push of the claimed run p (need pages) onto its own
 * queue, when it fits: the world-stop handshake guards it as it guards the
 * bins. False: the locked path's job (a trimmer stopped the cache, or the
 * queue is full). */
static bool rl_push_owner(tm_tcache_t *own, void *p, uint32_t need, uint32_t bound) {
    tm_tcache_t *tc = tc_enter();
    uint32_t n = __atomic_load_n(&own->rl_n, __ATOMIC_RELAXED);
    bool ok = tc == own && n < TM_RL_MAX && queued_pages(own) + need <= bound;
    if (ok) rl_append(own, n, p, need);
    tc_leave();
    return ok;
}

void tcache_free_large(tm_chunk_t *c, uint32_t page, void *p) {
    uint32_t *fast = &c->fast[page], f = __atomic_load_n(fast, __ATOMIC_RELAXED);
    if (f & TM_FAST_QUEUED) {
        tm_double_free("free", p); /* waiting in some thread's queue */
        return;
    }
    tm_tcache_t *tc = tcache_get_slow(); /* a thread that only frees gets a cache too */
    uint32_t need = TM_FAST_LARGE_PAGES(f), bound = 0;
    if (!tc || c->arena == tc->arena || bin_cap(1) == 0 || need > (bound = rl_bound())) {
        arena_free_large(c, page, p);
        return;
    }
    /* Claim it: of two threads freeing it at once, one queues it and the
     * other reports the double free. */
    if (!(f & TM_FAST_LARGE) ||
        !__atomic_compare_exchange_n(fast, &f, (f & ~TM_FAST_LARGE) | TM_FAST_QUEUED, false,
                                     __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
        if (f & TM_FAST_QUEUED) tm_double_free("free", p);
        else arena_free_large(c, page, p); /* not a block the program holds: reported */
        return;
    }
    if (rl_push_owner(tc, p, need, bound)) return;
    void *batch[TM_RL_MAX];
    unsigned n = 0;
    tm_lock(&tc->mu);
    tcache_settle_locked(tc);
    uint32_t have = queued_pages(tc);
    if (have + need > bound || tc->rl_n + 1 > TM_RL_MAX) {
        /* no room: the older half goes home, and more of the oldest runs
         * while the new one still does not fit */
        for (; n < (tc->rl_n + 1) / 2; n++) have -= tc->rl_pages[n];
        while (n < tc->rl_n && have + need > bound) have -= tc->rl_pages[n++];
    }
    if (n) {
        tm_ptrs_copy(batch, tc->rl, n);
        rl_cut(tc, 0, n);
    }
    rl_append(tc, tc->rl_n, p, need);
    tm_unlock(&tc->mu);
    if (n) arena_free_large_batch(batch, n);
}

/* Move tc's queued remote large frees to out (room for TM_RL_MAX), for a
 * trimmer to send home after dropping tc->mu. */
unsigned tcache_take_remote_locked(tm_tcache_t *tc, void **out) {
    unsigned n = tc->rl_n;
    tm_ptrs_copy(out, tc->rl, n);
    __atomic_store_n(&tc->rl_n, 0, __ATOMIC_RELAXED);
    return n;
}

/* A block of npages pages from the caller's own queue, taken back for a
 * malloc (the newest first, warm in the CPU cache): a thread that frees
 * other threads' blocks and allocates blocks of the same lengths itself --
 * both ends of a pair passing buffers -- then allocates without an arena
 * lock. The block still counts as held in its arena; its fast[] entry goes
 * back to TM_FAST_LARGE. NULL if none has that length. */
void *tcache_large_reuse(uint32_t npages) {
    if (tm_tls.state != TLS_LIVE) return NULL;
    tm_tcache_t *tc = tm_tls.own;
    if (!__atomic_load_n(&tc->rl_n, __ATOMIC_RELAXED)) return NULL; /* a peek: the owner's own */
    void *p = NULL;
    /* the newest, without the lock if nothing stopped the cache (as
     * rl_push_owner); a reader under mu may still count it a moment */
    tm_tcache_t *now = tc_enter();
    uint32_t n = __atomic_load_n(&tc->rl_n, __ATOMIC_RELAXED);
    if (now == tc && n && tc->rl_pages[n - 1] == npages) {
        p = tc->rl[n - 1];
        __atomic_store_n(&tc->rl_n, n - 1, __ATOMIC_RELAXED);
    }
    tc_leave();
    if (!p) { /* an older one, under mu */
        tm_lock(&tc->mu);
        tcache_settle_locked(tc);
        for (unsigned i = tc->rl_n; i-- > 0;) {
            if (tc->rl_pages[i] != npages) continue;
            p = tc->rl[i];
            rl_cut(tc, i, 1);
            break;
        }
        tm_unlock(&tc->mu);
    }
    if (p) {
        tm_chunk_t *c = chunk_of_entry(pagemap_lookup((uintptr_t)p));
        __atomic_store_n(&c->fast[((uintptr_t)p - c->base) >> TM_PAGE_SHIFT],
                         TM_FAST_LARGE_ENTRY(TM_FAST_LARGE, npages), __ATOMIC_RELAXED);
        tcache_gc_tick_large(); /* a large allocation, as tcache_arena counts them */
    }
    return p;
}

/* Bytes of small blocks in the caches; *queued gets the bytes of the large
 * runs waiting in their remote-free queues (still held in their arenas'
 * counts). Lock order: registry, tc->mu. */
size_t tcache_cached_bytes(size_t *queued) {
    size_t bytes = 0;
    *queued = 0;
    tm_lock(&registry_lock);
    for (tm_tcache_t *tc = registry; tc; tc = tc->next) {
        /* under tc->mu: a bin's base moves only under it (bin_reset, growth),
         * and the owner's fast path keeps top within the bin it sees */
        tm_lock(&tc->mu);
        for (unsigned c = 1; c <= TM_NCLASSES; c++) {
            void **top = __atomic_load_n(&tc->bins[c].top, __ATOMIC_RELAXED);
            if (top > tc->bins[c].base)
                bytes += (size_t)(top - tc->bins[c].base) * tm_classes[c].size;
        }
        /* the owner pushes and pops its newest run without mu
         * (rl_push_owner, tcache_large_reuse): rl_n, then the lengths below
         * it, never the runs themselves -- one just popped may have gone
         * home and its chunk away (a tester's reading, 2026-12-05) */
        for (unsigned i = 0, n = __atomic_load_n(&tc->rl_n, __ATOMIC_ACQUIRE); i < n; i++)
            *queued += (size_t)__atomic_load_n(&tc->rl_pages[i], __ATOMIC_RELAXED) << TM_PAGE_SHIFT;
        tm_unlock(&tc->mu);
    }
    tm_unlock(&registry_lock);
    return bytes + xfer_cached_bytes();
}

/* In a fork child only the forking thread survives. Its registry and every
 * cache lock were held across fork (init.c); the other threads' caches are
 * drained into the arenas so their blocks are not lost, then recycled. */
void tcache_fork_child(void) {
    pthread_mutex_init(&registry_lock, NULL);
    tm_tcache_t *self = tm_tls.state == TLS_LIVE ? tm_tls.own : NULL;
    for (tm_tcache_t *tc = registry, *next; tc; tc = next) {
        next = tc->next;
        tm_mutex_init(&tc->mu);
        tc->fork_held = false;
        if (tc == self) {
            tcache_settle_locked(tc);
            /* the child's initial thread now: not counted (tc->unbound) */
            arena_bind_locked(tc, tc->arena->index, -1);
            tc->unbound = true;
            arena_bind_locked(tc, tc->arena->index, 1);
            continue;
        }
        tcache_mark_used_locked(tc); /* gone: out of the idle count */
        tcache_drain_locked(tc);
        slots_release_first(tc);
        if (tc->prev) tc->prev->next = tc->next;
        else registry = tc->next;
        if (tc->next) tc->next->prev = tc->prev;
        __atomic_store_n(&registry_count, registry_count - 1, __ATOMIC_RELAXED);
        arena_count_thread_locked(tc->arena, -1);
        arena_bind_locked(tc, tc->arena->index, -1);
        tc->state = TC_STATE_FREE;
        __atomic_store_n(&tc->drain_pending, 0, __ATOMIC_RELAXED);
        recycled_push_locked(tc);
    }
}
