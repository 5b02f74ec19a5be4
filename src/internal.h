/*
 * internal.h -- prototypes shared between trimalloc's files, grouped by the
 * file that defines them, plus attributes, asserts and the lock ranks.
 */
#ifndef TM_INTERNAL_H
#define TM_INTERNAL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* adaptive mutexes, mremap, membarrier */
#endif

#include "types.h"
#include "trimalloc.h"

#include <errno.h>
#include <string.h>
#include <time.h>

/* Everything declared from here to the end of this file is the library's
 * own: hidden, so a global is read with one PC-relative load, not a load
 * of its GOT slot first (the linker relaxes that one to a lea, which is
 * still one instruction more on every fast-path global). The exported
 * functions say TM_EXPORT, which wins. */
#pragma GCC visibility push(hidden)

/* ---- Attributes ------------------------------------------------------------ */
#define TM_EXPORT __attribute__((visibility("default")))
#define TM_INLINE static inline __attribute__((always_inline))
#define TM_NOINLINE __attribute__((noinline))
#define TM_COLD __attribute__((cold, noinline))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* ---- Copies of the allocator's own pointer arrays ------------------------
 * Bins, transfer caches, flush batches, queues and the arenas' kept runs
 * move with these (tcache.c), not with libc's memcpy/memmove (kept for the
 * program's data: realloc, _expand, calloc). libc's are fast for long
 * copies, but their code sits in libc pages of its own: a program that
 * never calls them -- many small ones, and the loops of
 * bench/throughput.c -- had about 120 KiB more of libc resident under
 * trimalloc, for copies of a few dozen pointers (measured 2026-12-07 with
 * ASLR off, `setarch -R`, a program making 100 mallocs: 1624 -> 1508 KiB;
 * glibc's malloc 1260). Both copy n pointers; tm_ptrs_copy goes forward
 * (the ranges do not overlap, or dst is below src), tm_ptrs_move handles
 * any overlap. CMakeLists.txt keeps GCC from turning their loops back into
 * calls. */
void tm_ptrs_copy(void **dst, void *const *src, size_t n);
void tm_ptrs_move(void **dst, void *const *src, size_t n);

#if defined(__SANITIZE_THREAD__)
#define TM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TM_TSAN 1
#endif
#endif
#ifndef TM_TSAN
#define TM_TSAN 0
#endif

/* ---- Asserts ------------------------------------------------------------------
 * TM_DEBUG 0: release; 1: cheap internal checks; 2: expensive walks. Written
 * as `if (TM_DEBUG >= n)` so debug code always compiles. */
#ifndef TM_DEBUG
#ifdef NDEBUG
#define TM_DEBUG 0
#else
#define TM_DEBUG 1
#endif
#endif
#define tm_assert(c)                                                         \
    do {                                                                     \
        if (TM_DEBUG >= 1 && unlikely(!(c)))                                 \
            tm_fatal_assert(__FILE__, __LINE__, #c);                         \
    } while (0)

/* ---- Lock ranks ----------------------------------------------------------------
 * Locks are taken only in increasing rank:
 *   TRIM (_heapmin, fork)  <  THREADS (tcache registry)  <  TCACHE (tc->mu)
 *   <  XFER (per class)  <  ARENA (one at a time, or in index order for walks/fork)
 *   <  HUGE  <  PAGEMAP  <  META
 * No lock is held across mmap/munmap/madvise/mremap, but for the rare
 * leaf-rank maps (pagemap leaf, metadata region) and a drain's madvise of
 * its own cache's grown-bin slots under tc->mu (docs/design.md). */

/* The allocator's busy locks (arenas, transfer caches, thread caches) are
 * held for a few hundred instructions: an adaptive mutex spins briefly
 * before it sleeps, which keeps two threads on two cores out of futex waits. */
TM_INLINE void tm_mutex_init(pthread_mutex_t *m) {
    static const pthread_mutex_t adaptive = PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP;
    *m = adaptive;
}

/* ---- os.c: the only file that talks to the kernel about memory ---------------- */
void *os_map(size_t size);                   /* NULL on failure */
void *os_map_aligned(size_t size, size_t align);
void *os_map_aligned_ex(size_t size, size_t align, size_t *extra); /* *extra: tail left mapped */
int os_unmap(void *p, size_t size);          /* 0 or -1; errno untouched (free) */
int os_purge(void *p, size_t size);          /* pages read zero afterwards; errno untouched */
bool os_in_memory(void *p, size_t size, unsigned char *vec); /* mincore; false: unknown */
void os_huge_pages(void *p, size_t size, bool on); /* THP off (NOHUGEPAGE) or asked for */
size_t os_purge_inside(const void *lo, const void *hi); /* whole pages in [lo, hi); bytes released */
/* Many ranges with as few system calls as the kernel allows (os.c says
 * why): ok[i] tells whether range i was purged; returns the bytes purged. */
typedef struct os_range {
    void *base; /* page-aligned */
    size_t len; /* a page multiple */
} os_range_t;
size_t os_purge_ranges(const os_range_t *r, unsigned n, bool *ok);
/* Between these, os_purge_ranges in the calling thread may use
 * process_madvise (_heapmin only: on checks that no seccomp filter applies
 * to the caller; os.c says why). */
void os_purge_vectors_on(void);
void os_purge_vectors_off(void);
int os_purge_vectors_state(void); /* the caller's: 1 on, 0 off; -1 refused for good */
extern unsigned long os_purge_syscalls; /* calls os_purge_ranges made */
/* A best-effort batch: add the whole pages inside [lo, hi) (merged with
 * the range before when they touch), purged when the batch is full or
 * flushed; returns what it released so far. */
#define OS_BATCH_RANGES 64
typedef struct os_batch {
    os_range_t r[OS_BATCH_RANGES];
    unsigned n;
    size_t released;
} os_batch_t;
void os_batch_add(os_batch_t *b, const void *lo, const void *hi);
size_t os_batch_flush(os_batch_t *b);
int os_protect_none(void *p, size_t size);   /* guard page */
int os_protect_rw(void *p, size_t size);     /* a guard page back into a block */
int os_restore_block(void *p, size_t size);  /* read-write and inherited again */
void *os_remap(void *p, size_t old, size_t new_size, int may_move, void *fixed);
int os_heavy_barrier(void);                  /* membarrier or fallback */
uint64_t os_now_ns(void);
struct timespec os_realtime_after_ms(long ms); /* a deadline for pthread_cond_timedwait */
uint64_t os_now_ns_raw(void); /* by a system call, no libc or vDSO page */
void os_yield(void);
long os_getpid(void);                        /* a system call: libc's is not needed */
long os_gettid(void);                        /* the same */
bool os_thread_exiting(void);                /* past its key destructors (glibc >= 2.34) */
unsigned os_ncpus(void);
void os_random(void *buf, size_t n);
void os_set_fail_after(long n);              /* fault injection: nth map fails */
extern void (*os_purge_probe)(void *p, size_t size); /* tests: runs before each os_purge */
void os_set_fail_from(long n);               /* ... and every one after it */
extern unsigned long os_fail_countdown_active;

/* ---- size_class.c ------------------------------------------------------------ */
extern tm_class_t tm_classes[TM_NCLASSES + 1];
/* What free() needs to know that byte offset off (from the slab's start)
 * is the start of one of the slab's blocks: off % size == 0 and off / size
 * < nblocks. With div[c] = floor(2^64 / size) + 1, off * div[c] (mod 2^64)
 * is (off / size) * e, e = div[c] * size mod 2^64 (1 <= e <= size), when
 * size divides off, and at least div[c] when it does not (for off < 2^32
 * and size < 2^16: Lemire, Kaser and Kurz, "Faster remainder by direct
 * computation", 2019). So one multiply and one compare with lim[c] =
 * nblocks * e, far below div[c], test both: no division, no second
 * branch. div[0] = lim[0] = 1: true only for off == 0. Until 2026-12-06
 * the compare was with div[c], which took the bytes past a slab's last
 * block, in the 15 classes whose slabs leave a tail, for a block (found by
 * an outside tester: free(last + 1) went into the cache, and the next
 * malloc handed out a block overlapping the next slab's first). */
typedef struct tm_class_fast {
    uint64_t div[TM_NCLASSES + 1];
    uint64_t lim[TM_NCLASSES + 1];
} tm_class_fast_t;
extern tm_class_fast_t tm_class_fast;
/* The classes of the sizes up to TM_TINY_MAX, as their bins' byte offsets in
 * a thread cache (class << 5, see tm_tc_bin_t): malloc's fast path indexes
 * the cache with it directly; size_class_of shifts it back. */
extern uint16_t tm_bin_tiny[(TM_TINY_MAX >> 4) + 1];
void size_class_init(void);
/* 1024 < size <= TM_SMALL_MAX: with s = size - 1 and k = floor(log2 s), the class
 * is the j-th of group k where j = (s >> (k - 2)) - 3 (size_class.c). */
TM_INLINE unsigned size_class_of(size_t size) {
    if (likely(size <= TM_TINY_MAX)) return tm_bin_tiny[(size + 15) >> 4] / sizeof(tm_tc_bin_t);
    size_t s = size - 1;
    unsigned k = 63u - (unsigned)__builtin_clzl(s);
    return 8 + (k - 7) * 4 + (unsigned)(s >> (k - 2)) - 3;
}

/* ---- pagemap.c ------------------------------------------------------------------ */
/* The root covers the user half of the address space (47 bits on x86-64,
 * 48 elsewhere), so its last entries are those for the top of it, where
 * the kernel places mappings. */
#define PM_LEAF_BITS 13
#if defined(__x86_64__)
#define PM_ROOT_BITS 12
#else
#define PM_ROOT_BITS 13
#endif
#define PM_ROOT_SHIFT (TM_CHUNK_SHIFT + PM_LEAF_BITS) /* 35 */
#define PM_ROOT_SIZE ((uintptr_t)1 << PM_ROOT_BITS)
#define PM_LEAF_SIZE ((uintptr_t)1 << PM_LEAF_BITS)
/* leaf entry: chunk_t* | 1 for an arena chunk, huge_t* (even) for a huge
 * block, 0 for nothing of ours. */
typedef struct { uintptr_t e[PM_LEAF_SIZE]; } pm_leaf_t;
/* The root holds each leaf's distance from the shared zero leaf, so the
 * all-zero .bss root reads as "every slot -> zero leaf". One base register
 * reaches both. The zero leaf follows the root: a process's lookups of its
 * own blocks (the root's last entries) and of NULL (the zero leaf's first)
 * then share a page, and root[0] starts the pagemap (pagemap.c). */
typedef struct pm_map {
    intptr_t root[PM_ROOT_SIZE];
    pm_leaf_t zero;
} pm_map_t;
extern pm_map_t pm_map;
TM_INLINE uintptr_t pagemap_lookup(uintptr_t a) {
    uintptr_t i1 = a >> PM_ROOT_SHIFT;
    if (unlikely(i1 >= PM_ROOT_SIZE)) return 0;
    pm_leaf_t *leaf = (pm_leaf_t *)((char *)&pm_map.zero +
                                    __atomic_load_n(&pm_map.root[i1], __ATOMIC_ACQUIRE));
    return __atomic_load_n(&leaf->e[(a >> TM_CHUNK_SHIFT) & (PM_LEAF_SIZE - 1)],
                           __ATOMIC_ACQUIRE);
}
/* The hot leaf: the first leaf made, the one nearly every chunk lands in
 * (the kernel places mappings close together, and one leaf covers 32 GiB).
 * Its entries live in .bss (pm_hot_leaf), so free() reads an entry with no
 * load of the root and no load of a leaf pointer: one bounds test against
 * a constant and one load (pagemap.c says what each load cost).
 * pm_hot_first is the chunk index (address >> TM_CHUNK_SHIFT) of entry 0,
 * or, until the leaf exists, PM_HOT_NONE, which puts every address out of
 * range. It is written once, after the leaf's entries are zero and before
 * any entry is set; entries are published with release stores as in every
 * leaf. */
#define PM_HOT_NONE ((uintptr_t)1 << (sizeof(uintptr_t) * 8 - 1)) /* the top bit */
extern uintptr_t pm_hot_first;
extern pm_leaf_t pm_hot_leaf;
/* False if a lies outside the hot leaf; else *e is its entry. */
TM_INLINE bool pagemap_lookup_hot(uintptr_t a, uintptr_t *e) {
    uintptr_t i = (a >> TM_CHUNK_SHIFT) - __atomic_load_n(&pm_hot_first, __ATOMIC_RELAXED);
    if (unlikely(i >= PM_LEAF_SIZE)) return false;
    *e = __atomic_load_n(&pm_hot_leaf.e[i], __ATOMIC_ACQUIRE);
    return true;
}
int pagemap_set(uintptr_t chunk_addr, uintptr_t entry); /* -1 on OOM */
void pagemap_clear(uintptr_t chunk_addr);

/* ---- meta.c: metadata memory, apart from user data ------------------------------- */
void *meta_alloc(size_t size);               /* zeroed, 64-byte aligned */
void meta_free(void *p, size_t size);        /* recycled per size */
size_t meta_mapped(void);
void meta_fork_prepare(void);
void meta_fork_parent(void);
void meta_fork_child(void);

/* ---- chunk.c: chunks, runs, coalescing, purge ------------------------------------ */
tm_chunk_t *chunk_create(tm_arena_t *a);     /* unlocked; NULL on OOM */
bool chunk_destroy(tm_chunk_t *c);           /* unlocked, detached; false if munmap failed */
void chunk_attach_locked(tm_arena_t *a, tm_chunk_t *c);
void chunk_detach_locked(tm_arena_t *a, tm_chunk_t *c);
/* An empty chunk of another arena for a to grow by, detached (no lock
 * held; NULL if none); attaching a detached empty chunk as it is, resident
 * pages and all (an adopted one, or one the kernel would not unmap) */
tm_chunk_t *chunk_adopt(tm_arena_t *a);
void chunk_attach_as_is_locked(tm_arena_t *a, tm_chunk_t *c);
/* A chunk on the first chunk of a cached huge mapping (unlocked; NULL if
 * none), and attaching it: every page resident, none zeroed */
tm_chunk_t *chunk_from_huge_cache(tm_arena_t *a);
void chunk_attach_reused_locked(tm_arena_t *a, tm_chunk_t *c);
/* Take a run of npages aligned to align_pages from the arena's free runs;
 * returns its first page index's chunk and page, or NULL. May drop and
 * retake the arena lock (the growth purge, chunk.c), as arena_grow does. */
tm_chunk_t *run_alloc_locked(tm_arena_t *a, size_t npages, size_t align_pages,
                             uint32_t *page_out, bool *zeroed_out);
void run_free_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t npages);
void run_free_large_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t npages);
void run_stash_flush_locked(tm_arena_t *a); /* the arena's last freed runs, to the index */
void run_fill_resident_locked(tm_chunk_t *c, uint32_t page, uint32_t n, unsigned char fill);
bool run_try_grow_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t npages,
                         uint32_t new_npages);
void run_shrink_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t npages,
                       uint32_t new_npages);
void runs_index_insert_locked(tm_arena_t *a, tm_chunk_t *c, tm_page_t *head);
void runs_index_remove_locked(tm_arena_t *a, tm_page_t *head);
TM_INLINE uint32_t chunk_page_index(tm_chunk_t *c, tm_page_t *p) {
    return (uint32_t)(p - c->pages);
}
TM_INLINE uintptr_t chunk_page_addr(tm_chunk_t *c, uint32_t page) {
    return c->base + ((uintptr_t)page << TM_PAGE_SHIFT);
}
TM_INLINE tm_chunk_t *chunk_of_entry(uintptr_t e) {
    return (e & 1) ? (tm_chunk_t *)(e - 1) : NULL;
}
/* Descriptors keep no back pointers (they would grow every page entry): a
 * chunk's page entries fill one page of its page-aligned descriptor, and
 * a slab's start address leads back to its chunk. */
TM_INLINE tm_chunk_t *page_chunk(tm_page_t *h) {
    return (tm_chunk_t *)(((uintptr_t)h & ~(uintptr_t)TM_PAGE_MASK) - offsetof(tm_chunk_t, pages));
}
/* The fast[] entry (types.h) of the page of a, an address in one of our
 * chunks, read as free() reads it: relaxed, since a trimmer may change its
 * flag bits meanwhile. */
TM_INLINE uint32_t block_fast(uintptr_t a) {
    const tm_chunk_t *c = chunk_of_entry(pagemap_lookup(a));
    return __atomic_load_n(&c->fast[(a >> TM_PAGE_SHIFT) & (TM_CHUNK_PAGES - 1)],
                           __ATOMIC_RELAXED);
}
/* chunk_t.resident (chunk.c): bit p clear if page p is known not resident.
 * For a free page as chunk.c keeps it; for a live slab's page (arena.c)
 * clear if no block on it was handed out since the slab was carved from
 * pages known not resident, or since _heapmin gave it back; set when a
 * block on it is handed out or _heapset fills it. */
uint32_t chunk_resident_count(const tm_chunk_t *c, uint32_t page, uint32_t n);
void chunk_resident_set(tm_chunk_t *c, uint32_t page, uint32_t n, bool bit);
TM_INLINE tm_chunk_t *slab_chunk(tm_slab_t *s) {
    return chunk_of_entry(pagemap_lookup(s->start));
}
/* The links of the free run whose first page entry is h (types.h). */
TM_INLINE tm_run_link_t *page_link(tm_page_t *h) {
    return &page_chunk(h)->links[(((uintptr_t)h & TM_PAGE_MASK) / sizeof *h) >> 1];
}
/* Writes of a page entry's fields under the lock: each a load and a store
 * of the whole 32-bit word. A narrower store (a byte for kind, zeroed and
 * dirty) followed by a load of the whole word cannot be forwarded from the
 * store buffer, and the load waits until the store retires: perf put
 * 30-45% of run_alloc_locked's, run_insert_free_locked's and
 * arena_alloc_large's samples on such loads in a 16 KiB malloc+free loop.
 * (Relaxed atomics, so that the compiler keeps each access whole.) */
TM_INLINE tm_page_t page_get(const tm_page_t *h) {
    tm_page_t e;
    e.word = __atomic_load_n(&h->word, __ATOMIC_RELAXED);
    return e;
}
TM_INLINE void page_put(tm_page_t *h, tm_page_t e) {
    __atomic_store_n(&h->word, e.word, __ATOMIC_RELAXED);
}
TM_INLINE void page_set_kind(tm_page_t *h, unsigned kind) {
    tm_page_t e = page_get(h);
    e.kind = kind & 0xff;
    page_put(h, e);
}
/* A run end: its kind and length */
TM_INLINE void page_set_end(tm_page_t *h, unsigned kind, uint32_t npages) {
    tm_page_t e = page_get(h);
    e.kind = kind & 0xff;
    e.npages = npages & 0x7ff;
    page_put(h, e);
}
/* A free run's first page: what is known of its bytes */
TM_INLINE void page_set_flags(tm_page_t *h, bool zeroed, bool dirty) {
    tm_page_t e = page_get(h);
    e.zeroed = zeroed;
    e.dirty = dirty;
    page_put(h, e);
}
/* tm_page_t.index, which slab_of reads without the lock: the whole entry
 * is stored at once (the lock is held: nobody else writes it). */
TM_INLINE void page_set_index(tm_page_t *h, uint32_t v) {
    tm_page_t e = *h;
    e.index = v & (TM_CHUNK_PAGES - 1);
    __atomic_store_n(&h->word, e.word, __ATOMIC_RELEASE);
}
TM_INLINE uint32_t page_index_read(tm_page_t *h) {
    tm_page_t e;
    e.word = __atomic_load_n(&h->word, __ATOMIC_ACQUIRE);
    return e.index;
}
/* The slab starting at page p, or NULL if none starts there (lock held). */
TM_INLINE tm_slab_t *chunk_slab(tm_chunk_t *c, uint32_t p) {
    return c->pages[p].kind == PAGE_SLAB ? &c->slabs[c->pages[p].index & (TM_CHUNK_PAGES - 1)]
                                         : NULL;
}
/* The slab pool (chunk.c): take the lowest free slot of c for a slab on
 * the run [page, page + npages) just carved; may drop and retake the lock
 * (only while _heapmin gives pool pages back). Put a slot back. */
uint32_t chunk_slot_take_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t npages);
void chunk_slot_put_locked(tm_chunk_t *c, uint32_t slot);
/* Give back the pool pages of c above its last used slot (slots must be
 * packed: [0, nslabs) in use). Drops and retakes the lock; returns bytes. */
size_t chunk_slab_pool_release_locked(tm_arena_t *a, tm_chunk_t *c);
/* The give-back ended: no pool page busy, a slab waiting for a slot woken. */
void chunk_slab_pool_done_locked(tm_arena_t *a, tm_chunk_t *c);
/* Purge: release free pages of every chunk of arena a; return bytes.
 * *failures counts system calls the kernel refused. */
/* settle: wait for the sections that dropped a's lock (_heapmin; chunk.c) */
size_t arena_purge(tm_arena_t *a, bool settle, unsigned *failures);
size_t chunk_purge_credit(void); /* tests: pages the growth purges may still give back */
/* Give back resident free pages that stayed free for dirty_decay_ms, in
 * every arena whose lock is free, at most max_pages of them together (the
 * rest stays due); no lock held. Returns the pages given back. A thread
 * cache's GC tick passes TM_DECAY_TICK_PAGES, the background thread
 * SIZE_MAX. */
size_t arena_decay_tick(size_t max_pages);
bool arena_decay_epoch_passed(void); /* no tick read the clock in this epoch yet */
#define TM_DECAY_TICK_PAGES 512u /* 2 MiB: about 0.3-1 ms of madvise (chunk.c) */
size_t arena_release_orphaned(tm_arena_t *a); /* its last thread exited; no lock held */

/* ---- background.c: the optional background thread -------------------------------- */
bool background_set(long value);   /* constructor and option setter only: no lock held */
bool background_running(void);     /* the thread runs (or is being started) and the option is on */
void background_fork_child(void);
struct timespec background_interval(long decay_ms); /* the thread's sleep between ticks */

/* ---- arena.c ---------------------------------------------------------------------- */
extern tm_arena_t *tm_arenas[];
extern unsigned tm_narenas;
#define TM_MAX_ARENAS 256
/* chunk_t.fast[] entries (types.h) */
#define TM_FAST_ARENA_SHIFT 22
#define TM_FAST_CLS(f) ((f) & 0xffu)
#define TM_FAST_PURGED 0x100u /* the slab is purged (types.h): free() checks its bitmap */
/* the page holds blocks never handed out (index >= slab.fresh), which carry
 * no cookie: free() checks the bitmap there too, or free() of such a block
 * would put a block the arena still counts free into a cache */
#define TM_FAST_FRESH 0x200u
#define TM_FAST_CHECK (TM_FAST_PURGED | TM_FAST_FRESH)
/* the first page of a large block the program holds (set when the arena
 * hands it out, cleared when it comes back): what a free() by a thread of
 * another arena checks before it queues the block (tcache_free_large) */
#define TM_FAST_LARGE 0x400u
/* replaces TM_FAST_LARGE while the block, freed, waits in a thread's
 * queue: free(), realloc() and malloc_usable_size() report a double free */
#define TM_FAST_QUEUED 0x800u
/* With either flag, the block's length in pages (1..1024) stands in the
 * arena bits: an entry with no class is never read for its arena. */
#define TM_FAST_LARGE_ENTRY(flag, npages) \
    ((uint32_t)(flag) | (uint32_t)((npages) - 1) << TM_FAST_ARENA_SHIFT)
#define TM_FAST_LARGE_PAGES(f) (((f) >> TM_FAST_ARENA_SHIFT) + 1)
#define TM_FAST_SLAB_OFF(f) ((f) & 0x3ff000u) /* the slab's byte offset in its chunk */
#define TM_FAST(cls, page, arena) \
    ((uint32_t)(cls) | (uint32_t)(page) << TM_PAGE_SHIFT | (uint32_t)(arena) << TM_FAST_ARENA_SHIFT)
tm_arena_t *arena_get(unsigned index);        /* creates on first use */
/* A section that drops a's lock while it holds runs or maps a chunk is
 * counted in a->dropped from before the unlock to after the relock (fork's
 * prepare handler waits for it to end: arena.c). Lock held for both. */
TM_INLINE void arena_dropped_enter(tm_arena_t *a) { a->dropped++; }
TM_INLINE void arena_dropped_leave(tm_arena_t *a) {
    if (--a->dropped == 0) pthread_cond_broadcast(&a->undropped);
}
/* a's lock, once no such section is under way (fork, _heapchk, _heapset,
 * _heapwalk: they read every run of the arena) */
void arena_lock_settled(tm_arena_t *a);
void arena_settle_locked(tm_arena_t *a, long max_ms); /* the same wait, a's lock held; max_ms < 0: no bound */
unsigned arena_choose_locked(const unsigned bound[], unsigned first); /* registry lock held */
bool arena_block_is_free(void *p);            /* small block p free in its slab (no lock) */
/* Fill up to n slots of class cls; returns count (0 on OOM). */
unsigned arena_refill(tm_arena_t *a, unsigned cls, void **slots, unsigned n);
unsigned arena_refill_other(const tm_arena_t *own, unsigned avoid, unsigned cls, void **slots,
                            unsigned n);
unsigned arena_refill_remote(tm_arena_t *a, unsigned avoid, unsigned cls, void **slots, unsigned n);
/* Return n blocks of class cls (from any arenas) to their slabs. */
void arena_flush(unsigned cls, void **blocks, unsigned n);
void *arena_alloc_large(tm_arena_t *a, size_t size, size_t align, bool zero);
void arena_free_large(tm_chunk_t *c, uint32_t page, void *p);
size_t arena_free_large_batch(void **runs, unsigned n); /* bytes freed */
/* 0 unless a large block the program holds starts at page; *freed (if not
 * NULL) says whether free() would call it a double free */
size_t arena_large_usable(tm_chunk_t *c, uint32_t page, bool *freed);
bool arena_large_resize_in_place(tm_chunk_t *c, uint32_t page, size_t new_size);
void arena_release_empty_slabs(tm_arena_t *a); /* takes the lock, per class */
/* Set slab s's fresh mark and the TM_FAST_FRESH bits of its pages. */
void slab_set_fresh_locked(tm_slab_t *s, uint32_t fresh);
/* The first page of slab s (0-based) that holds a block at or past fresh. */
TM_INLINE uint32_t slab_fresh_page(uint32_t fresh, uint32_t nblocks, uint32_t size) {
    return fresh >= nblocks ? UINT32_MAX : (uint32_t)(((uintptr_t)fresh * size) >> TM_PAGE_SHIFT);
}
void arena_release_idle_slab(tm_arena_t *a, unsigned cls);
size_t arena_purge_slab_pages(tm_arena_t *a, unsigned *failures); /* free pages inside live slabs */
/* Pack each chunk's slab descriptors into its lowest slots and give back
 * the slab pool pages above them (_heapmin; trim lock held). */
size_t arena_compact_slabs(tm_arena_t *a);
void arena_fork_prepare(void);
void arena_fork_parent(void);
void arena_fork_child(void);
/* For the block at p in chunk c: returns its slab and block index, or NULL
 * if p is not the start of a block. */
tm_slab_t *slab_of(tm_chunk_t *c, uintptr_t p, uint32_t *index_out);

/* ---- huge.c ------------------------------------------------------------------------- */
void *huge_alloc(size_t size, size_t align, bool zero);
void huge_free(tm_huge_t *h, void *p);
bool huge_cached_at(uintptr_t a); /* a is a block start inside a freed, cached mapping */
void *huge_realloc(tm_huge_t *h, void *p, size_t size, bool *grown_zero, bool *refused);
bool huge_resize_in_place(tm_huge_t *h, void *p, size_t size, bool *refused);
size_t huge_release_cache(unsigned *failures); /* unmap cached huge mappings */
void *huge_take_chunk(void); /* a cached mapping's first chunk for an arena, or NULL */
size_t huge_allocated(void);
size_t huge_mapped(void);
void huge_totals(size_t *live, size_t *mapped); /* both in one reading */
void huge_fork_prepare(void);
void huge_fork_parent(void);
void huge_fork_child(void);
typedef void (*huge_visit_fn)(tm_huge_t *h, void *arg);
void huge_foreach_locked(huge_visit_fn fn, void *arg);
void huge_lock(void);
void huge_unlock(void);

/* ---- tcache.c ------------------------------------------------------------------------ */
extern __thread tm_tls_t tm_tls __attribute__((tls_model("initial-exec")));
enum { TLS_NONE = 0, TLS_BOOTING, TLS_LIVE, TLS_DEAD, TLS_EXITING };
extern tm_tcache_t tm_tcache_sentinel;
/* The owner's half of the world-stop handshake (world.c): busy = 1, then
 * read which cache to use. A trimmer that wants this cache first points
 * tm_tls.tc at the sentinel, then runs a membarrier, then waits for busy ==
 * 0. Used by the fast paths (alloc.c) and the owner's lockless use of its
 * large-run queue (tcache.c); nothing between the two may block. */
TM_INLINE tm_tcache_t *tc_enter(void) {
#if TM_TSAN
    __atomic_store_n(&tm_tls.busy, 1, __ATOMIC_SEQ_CST);
    return __atomic_load_n(&tm_tls.tc, __ATOMIC_SEQ_CST);
#else
    __atomic_store_n(&tm_tls.busy, 1, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    return __atomic_load_n(&tm_tls.tc, __ATOMIC_ACQUIRE);
#endif
}
TM_INLINE void tc_leave(void) { __atomic_store_n(&tm_tls.busy, 0, __ATOMIC_RELEASE); }
TM_INLINE uint32_t tc_bin_count(const tm_tc_bin_t *b) { return (uint32_t)(b->top - b->base); }
TM_INLINE uint32_t tc_bin_cap(const tm_tc_bin_t *b) { return (uint32_t)(b->limit - b->base); }
extern uint64_t tm_cookie_key;
/* A free small block's cookie -- its address xor tm_cookie_key -- lives in
 * the block's second word, bytes 8..15 (every class is at least 16 B, and
 * blocks are 16-byte aligned, so those bytes share a cache line with the
 * first word, the one a program touches first). Not the first word: a check
 * of it right after the program's own narrow write there stalls on store
 * forwarding (measured: 1.7x slower malloc+free loops). Not the last word:
 * for blocks above 64 B that is a second cache line that malloc and free
 * would touch and the program may never. */
TM_INLINE uint64_t *tm_cookie_slot(void *p) { return (uint64_t *)((char *)p + sizeof(uint64_t)); }
TM_INLINE uint64_t tm_cookie_of(const void *p) { return (uintptr_t)p ^ tm_cookie_key; }
TM_COLD void *tcache_malloc_slow(size_t size, unsigned cls); /* sets ENOMEM */
TM_COLD void tcache_free_slow(void *p, unsigned cls);
void tcache_free_large(tm_chunk_t *c, uint32_t page, void *p);
void *tcache_large_reuse(uint32_t npages); /* a queued block of npages, or NULL */
unsigned tcache_take_remote_locked(tm_tcache_t *tc, void **out); /* tc->mu held; <= TM_RL_MAX */
void tcache_settle_locked(tm_tcache_t *tc);
void tcache_drain_locked(tm_tcache_t *tc);  /* tc->mu held; empty every bin */
void tcache_flush_own(void);                 /* the caller empties its own cache (mallctl) */
size_t tcache_slots_max(void);
#define TC_START_SLOTS 8 /* a bin's size until the thread holds more (tcache.c) */
#define TC_RECYCLED_WARM 4u /* exited threads' caches that keep their capacity slots (tcache.c) */
void tcache_slot_regions(size_t *first_start, size_t *grown_start); /* tests */
size_t tcache_blocks_locked(tm_tcache_t *tc); /* tc->mu held; a snapshot */
size_t tcache_take_locked(tm_tcache_t *tc, void **out, uint32_t counts[]); /* tc->mu held */
void tcache_release_grown_slots(tm_tcache_t *tc); /* after take_locked, tc->mu dropped */
size_t tcache_cached_bytes(size_t *queued); /* small; *queued: large runs in remote-free queues */
unsigned tcache_count(void);
void tcache_release_recycled(void);      /* _heapmin: unmap exited threads' slot arrays */
void tcache_orphans_tick(void);          /* a deferred release of arenas left without a thread */
extern uint64_t tm_orphan_due;           /* when it is due (0: none pending; tcache.c) */
TM_INLINE void tcache_orphans_poll(void) {
    if (unlikely(__atomic_load_n(&tm_orphan_due, __ATOMIC_RELAXED))) tcache_orphans_tick();
}
void tcache_registry_lock(void);
void tcache_registry_unlock(void);
tm_tcache_t *tcache_registry_first(void);
void tcache_fork_child(void);
void xfer_drain_all(void);                   /* transfer caches -> arenas */
uint32_t xfer_parked(unsigned ai, unsigned cls, void **out, uint32_t max); /* a copy, for tests */
void xfer_fork_prepare(void);
void xfer_fork_parent(void);
void xfer_fork_child(void);
void tcache_init(void);
tm_arena_t *tcache_arena(void);              /* the calling thread's arena */

/* ---- alloc.c --------------------------------------------------------------------------- */
void *tm_malloc_impl(size_t size);
void tm_free_impl(void *p);
void *tm_alloc_aligned(size_t align, size_t size, bool zero);
unsigned tm_class_aligned(size_t size, size_t align); /* alloc.c; 0: no class */
size_t tm_usable_size(void *p, const char *caller); /* aborts on bad pointer */
void *tm_realloc_impl(void *p, size_t size, bool *tail_zero); /* tail_zero may be NULL */
void tm_cxx_init(void);                      /* decide the C++ operators' mode (drop-in build) */
void tm_fill_grown(void *p, size_t old); /* zero:1 / junk:1 fill for bytes gained in place */

/* ---- world.c: stop-the-world handshake ---------------------------------------------- */
/* Drain every thread cache into the arenas; returns nanoseconds other
 * threads were held (the longest single hold). Caller holds the trim lock. */
uint64_t world_drain_all_caches(void);
extern unsigned long world_wait_windows, world_busy_skipped; /* the world stop's waits (tests) */
unsigned world_drain_idle_caches(uint64_t now); /* background thread; returns caches drained */
void xfer_gc_all(void);                          /* tcache.c */
void tcache_mark_drained_locked(tm_tcache_t *tc); /* a trimmer emptied it (tcache.c) */
unsigned tcache_drained_unused(void);             /* live caches so marked */

/* ---- heapmin.c ---------------------------------------------------------------------- */
void heapmin_lock(void);
void heapmin_unlock(void);
bool heapmin_trylock(void); /* true: the trim lock is now held */
void heapmin_fork_child(void);
extern unsigned long heapmin_turns_passed; /* trim-lock turns passed over (tests) */
unsigned long heapmin_waiters(void);       /* trim-lock waiters (tests) */
bool heapmin_release_for_retry(void); /* after a failed mapping; true if worth retrying */

/* ---- init.c --------------------------------------------------------------------------- */
extern volatile int tm_initialized;
TM_COLD void tm_init_slow(void);
TM_INLINE void tm_init(void) {
    if (unlikely(!tm_initialized)) tm_init_slow();
}

/* The fork handlers are registered at start-up (init.c says why).
 * tm_fork_ready is 2 once they are; every allocator lock is taken through
 * tm_lock or tm_trylock, which register them first if they are not yet (a
 * fork child of a process that forked while registering them). */
extern volatile int tm_fork_ready;
void tm_fork_register(void);
TM_INLINE void tm_fork_check(void) {
    if (unlikely(__atomic_load_n(&tm_fork_ready, __ATOMIC_ACQUIRE) != 2)) tm_fork_register();
}
/* While this thread forks (tm_tls.forking, between our prepare handler and
 * our parent or child handler) it holds every allocator lock, taken by
 * fork_prepare, and no other thread can be inside: its own allocations --
 * made by the prepare, parent and child handlers that glibc runs in that
 * window -- then take and release nothing (init.c says why). */
TM_INLINE void tm_lock(pthread_mutex_t *m) {
    if (unlikely(tm_tls.forking)) return;
    tm_fork_check();
    pthread_mutex_lock(m);
}
TM_INLINE int tm_trylock(pthread_mutex_t *m) {
    if (unlikely(tm_tls.forking)) return 0;
    tm_fork_check();
    return pthread_mutex_trylock(m);
}
TM_INLINE void tm_unlock(pthread_mutex_t *m) {
    if (unlikely(tm_tls.forking)) return;
    pthread_mutex_unlock(m);
}

/* An arena's lock: its mutex, or nothing while the process has one thread,
 * as glibc's own malloc skips its arena locks. glibc keeps
 * __libc_single_threaded non-zero only while the caller is the only
 * thread, and only the caller can start another (pthread_create clears it
 * first, and synchronises with the new thread), which no code of the
 * allocator does while it holds an arena. `bare` says how the holder took
 * the lock, for its unlock, and is read and written by the holder only.
 * With no mutex taken, nothing may wait on `undropped` (nobody else can be
 * in a section that dropped the lock). A weak reference: a C library
 * without the variable (before glibc 2.32) always takes the mutex. A 16
 * KiB malloc+free pair in a loop, one thread: 63 -> 50 ns (2026-12-06). */
extern char __libc_single_threaded __attribute__((weak, visibility("default")));
TM_INLINE bool tm_one_thread(void) {
    return &__libc_single_threaded && __atomic_load_n(&__libc_single_threaded, __ATOMIC_RELAXED);
}
TM_INLINE void arena_lock(tm_arena_t *a) {
    if (unlikely(tm_tls.forking)) return;
    tm_fork_check();
    if (tm_one_thread()) a->bare = true;
    else pthread_mutex_lock(&a->lock);
}
TM_INLINE int arena_trylock(tm_arena_t *a) {
    if (unlikely(tm_tls.forking)) return 0;
    tm_fork_check();
    if (!tm_one_thread()) return pthread_mutex_trylock(&a->lock);
    a->bare = true;
    return 0;
}
TM_INLINE void arena_unlock(tm_arena_t *a) {
    if (unlikely(tm_tls.forking)) return;
    if (a->bare) a->bare = false;
    else pthread_mutex_unlock(&a->lock);
}
/* ---- options.c ------------------------------------------------------------------------ */
typedef struct tm_opts {
    long narenas;
    long tcache_scale_pct;
    long tcache_total_mb;
    long huge_threshold;
    long junk;
    long zero;
    long guard;
    long abort_on_error;
    long stats_print;
    long verbose;
    long huge_cache_mb;
    long decay_ms;
    long dirty_decay_ms;
    long background_thread;
    long thp;
} tm_opts_t;
extern tm_opts_t tm_opt;
/* An option trimalloc_option_set may change while other threads run
 * (options.c: the settable ones), read once: a relaxed atomic load, as
 * the store is (ThreadSanitizer reported the plain reads: a tester). */
#define TM_OPT_NOW(field) __atomic_load_n(&tm_opt.field, __ATOMIC_RELAXED)
void options_init(void);
void options_print_verbose(void); /* for verbose:1 (the caller checks), once start-up has settled them */

/* ---- stats.c ---------------------------------------------------------------------------- */
typedef struct tm_global_stats {
    uint64_t released_bytes;      /* atomically updated */
    uint64_t heapmin_calls;
    uint64_t heapmin_bytes;
    uint64_t heapmin_last_pause_ns;
    uint64_t heapmin_max_pause_ns;
    uint64_t idle_drains;         /* caches the background thread drained (world.c), atomic */
} tm_global_stats_t;
extern tm_global_stats_t tm_gstats;
typedef struct stats_sink {
    int fd;                                  /* when cb is NULL */
    void (*cb)(void *opaque, const char *s); /* jemalloc's write callback */
    void *opaque;
} stats_sink_t;
void stats_print_to(const stats_sink_t *o, int json); /* trimalloc_stats_print's report */
void stats_add_released(size_t bytes);
void stats_print_at_exit(void);

/* ---- diag.c: messages and aborts that never allocate ---------------------------------- */
/* Report a bad pointer passed to `call`. Abort (the default) or, with the
 * option abort_on_error:0, warn and return: the caller then ignores the
 * call (the block is leaked rather than corrupted). */
TM_COLD void tm_invalid_pointer(const char *call, const void *p);
TM_COLD void tm_double_free(const char *call, const void *p);
TM_COLD void tm_write_after_free(const void *p); /* a free block's cookie changed */
TM_COLD void tm_fatal(const char *msg) __attribute__((noreturn));
TM_COLD void tm_fatal_assert(const char *file, int line, const char *cond)
    __attribute__((noreturn));
void tm_warn(const char *msg1, const char *msg2);
/* Format into buf without allocating; returns length. Supports %s %zu %lu
 * %llu %d %u %p %x. */
int tm_snprintf(char *buf, size_t n, const char *fmt, ...);
void tm_write_fd(int fd, const char *s, size_t n);

/* Wait (a's lock held) for the sections that dropped it to signal: never
 * with the lock taken bare (arena_lock). */
TM_INLINE void arena_wait_undropped(tm_arena_t *a) {
    tm_assert(!a->bare);
    pthread_cond_wait(&a->undropped, &a->lock);
}

#pragma GCC visibility pop

#endif /* TM_INTERNAL_H */
