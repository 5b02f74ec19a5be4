/*
 * arena.c -- arenas: slabs of small blocks handed to thread caches in
 * batches, large page runs, and the return of blocks freed by any thread.
 *
 * Owner and lock: every field of an arena, and of the chunks, slabs and
 * page entries it owns, changes only under arena->lock. A thread cache
 * refills from its own arena, but flushes each block to the arena that owns
 * it -- found from the block's address -- so remote frees go home in
 * batches, one lock acquisition per arena per batch, with no global lock.
 */
#include "internal.h"

tm_arena_t *tm_arenas[TM_MAX_ARENAS];
unsigned tm_narenas;
static pthread_mutex_t arenas_lock = PTHREAD_MUTEX_INITIALIZER;

tm_arena_t *arena_get(unsigned index) {
    tm_arena_t *a = __atomic_load_n(&tm_arenas[index], __ATOMIC_ACQUIRE);
    if (likely(a)) return a;
    tm_lock(&arenas_lock);
    a = tm_arenas[index];
    if (!a) {
        a = meta_alloc(sizeof(tm_arena_t));
        if (a) {
            tm_mutex_init(&a->lock);
            pthread_cond_init(&a->undropped, NULL);
            a->index = index;
            __atomic_store_n(&tm_arenas[index], a, __ATOMIC_RELEASE);
        }
    }
    tm_unlock(&arenas_lock);
    return a;
}

/* The arena for a new thread: the one with the fewest threads bound to it,
 * the lowest index on a tie; bound[] counts them (the caller adds the new
 * thread). So threads spread over the arenas, and a thread that replaces
 * one that exited (a pool, a server's connection threads) takes over its
 * arena -- and the memory the exited thread left there, resident and warm
 * -- instead of faulting in fresh pages in the next arena round the ring.
 * The process's initial thread is not counted (tcache.c), and its arena,
 * `first` (0 until it has one), wins a tie: the first thread it starts
 * shares its arena. The caller holds the thread-cache registry lock, which
 * serialises every change of bound[], and makes the arena (arena_get)
 * after dropping it. */
unsigned arena_choose_locked(const unsigned bound[], unsigned first) {
    unsigned best = first;
    for (unsigned i = 0; i < tm_narenas && bound[best]; i++)
        if (bound[i] < bound[best]) best = i;
    return best;
}

/* Grow the arena by one chunk: an empty one of another arena's if there
 * is one (chunk.c), else the first chunk of a cached huge mapping
 * (huge.c), else a new mapping. Called and returns with the lock held,
 * but drops it meanwhile. */
static bool arena_grow_locked(tm_arena_t *a) {
    arena_dropped_enter(a);
    arena_unlock(a);
    tm_chunk_t *c = chunk_adopt(a);
    bool adopted = c != NULL, reused = false;
    if (!c) reused = (c = chunk_from_huge_cache(a)) != NULL;
    if (!c) c = chunk_create(a);
    arena_lock(a);
    arena_dropped_leave(a);
    if (!c) return false;
    if (adopted) chunk_attach_as_is_locked(a, c);
    else if (reused) chunk_attach_reused_locked(a, c);
    else chunk_attach_locked(a, c);
    return true;
}

/* ---- slabs ------------------------------------------------------------------ */

/* The slot of the slab whose first page is sp, read without the lock:
 * _heapmin may move a live slab's descriptor meanwhile (arena_compact_slabs). */
TM_INLINE uint32_t slab_slot_read(tm_chunk_t *c, uint32_t sp) {
    return page_index_read(&c->pages[sp]);
}

/* First page of the slab that page entry f (fast[]) names. */
TM_INLINE uint32_t fast_slab_page(uint32_t f) { return TM_FAST_SLAB_OFF(f) >> TM_PAGE_SHIFT; }

tm_slab_t *slab_of(tm_chunk_t *c, uintptr_t p, uint32_t *index_out) {
    uint32_t e = __atomic_load_n(&c->fast[(p - c->base) >> TM_PAGE_SHIFT], __ATOMIC_RELAXED);
    unsigned cls = e & 0xff;
    if (!cls) return NULL;
    uint64_t off = (p - c->base) - TM_FAST_SLAB_OFF(e);
    const tm_class_t *k = &tm_classes[cls];
    uint64_t idx = (off * k->magic) >> 40;
    if (idx * k->size != off || idx >= k->nblocks) return NULL;
    *index_out = (uint32_t)idx;
    return &c->slabs[slab_slot_read(c, fast_slab_page(e))];
}

static void bin_push_locked(tm_arena_bin_t *b, tm_slab_t *s) {
    s->prev = NULL;
    s->next = b->partial;
    if (b->partial) b->partial->prev = s;
    __atomic_store_n(&b->partial, s, __ATOMIC_RELAXED); /* arena_refill_other reads it unlocked */
    s->on_list = 1;
}

static void bin_remove_locked(tm_arena_bin_t *b, tm_slab_t *s) {
    if (s->prev) s->prev->next = s->next;
    else __atomic_store_n(&b->partial, s->next, __ATOMIC_RELAXED);
    if (s->next) s->next->prev = s->prev;
    s->next = s->prev = NULL;
    s->on_list = 0;
}

/* Bitmap words are written under the arena lock but read without it by
 * arena_block_is_free: atomic accesses (plain moves on x86). Release, so
 * that a reader whose acquire load sees a word written after a slab's
 * descriptor moved also sees the move (arena_block_is_free). */
TM_INLINE void bm_store(tm_slab_t *s, unsigned w, uint64_t v) {
    __atomic_store_n(&s->bitmap[w], v, __ATOMIC_RELEASE);
}

/* Mark slab s purged or not (types.h), in its descriptor and in the fast[]
 * entries of its pages, which send free() of its blocks to
 * free_suspect_double while it is. */
static void slab_set_purged_locked(tm_slab_t *s, bool purged) {
    if (s->purged == purged) return;
    s->purged = purged;
    tm_chunk_t *c = slab_chunk(s);
    uint32_t page = (uint32_t)((s->start - c->base) >> TM_PAGE_SHIFT);
    for (uint32_t i = 0; i < tm_classes[s->cls].slab_pages; i++) {
        uint32_t f = c->fast[page + i];
        __atomic_store_n(&c->fast[page + i], purged ? f | TM_FAST_PURGED : f & ~TM_FAST_PURGED,
                         __ATOMIC_RELEASE);
    }
}

/* Is small block p free in its slab's bitmap? Read without the lock, for
 * free() of a block in a purged slab, where the cookie proves nothing: a
 * block the bitmap holds is not the program's to free. (A block that
 * _heapmin holds out of the bitmap while it gives back pages reads as not
 * free: a double free of it in that window goes unseen.) */
bool arena_block_is_free(void *p) {
    tm_chunk_t *c = chunk_of_entry(pagemap_lookup((uintptr_t)p));
    uint32_t idx;
    if (!c || !slab_of(c, (uintptr_t)p, &idx)) return false;
    uint32_t sp = fast_slab_page(__atomic_load_n(
        &c->fast[((uintptr_t)p - c->base) >> TM_PAGE_SHIFT], __ATOMIC_RELAXED));
    /* The slot read again after the bitmap word: if the descriptor moved
     * meanwhile, the word may be its old slot's, cleared or reused. A
     * slab's slot only ever goes down, so an unchanged slot means no move. */
    for (;;) {
        uint32_t slot = slab_slot_read(c, sp);
        uint64_t w = __atomic_load_n(&c->slabs[slot].bitmap[idx >> 6], __ATOMIC_ACQUIRE);
        if (slab_slot_read(c, sp) == slot) return (w >> (idx & 63)) & 1;
    }
}

static tm_slab_t *slab_create_locked(tm_arena_t *a, unsigned cls) {
    const tm_class_t *k = &tm_classes[cls];
    uint32_t page;
    bool zeroed;
    tm_chunk_t *c = run_alloc_locked(a, k->slab_pages, 1, &page, &zeroed);
    if (!c) {
        if (!arena_grow_locked(a) ||
            !(c = run_alloc_locked(a, k->slab_pages, 1, &page, &zeroed)))
            return NULL;
    }
    uint32_t slot = chunk_slot_take_locked(a, c, page, k->slab_pages);
    tm_slab_t *s = &c->slabs[slot];
    memset(s, 0, offsetof(tm_slab_t, bitmap)); /* bm_store writes the bitmap */
    tm_page_t *h = &c->pages[page];
    page_set_end(h, PAGE_SLAB, k->slab_pages);
    page_set_index(h, slot);
    if (k->slab_pages > 1) page_set_end(&c->pages[page + k->slab_pages - 1], PAGE_INTERIOR, k->slab_pages);
    s->start = chunk_page_addr(c, page);
    s->cls = (uint16_t)cls;
    s->nblocks = (uint16_t)k->nblocks;
    s->nfree = (uint16_t)k->nblocks;
    /* No cookies yet: writing them would touch every page of the slab now
     * (s->fresh = 0; arena_refill writes each when it first hands it out),
     * so every page is marked fresh: free() asks the bitmap there. */
    for (uint32_t w = 0; w < TM_SLAB_MAX_BLOCKS; w += 64)
        bm_store(s, w >> 6, w >= k->nblocks ? 0 : k->nblocks - w >= 64 ? ~0ull
                                                 : (1ull << (k->nblocks - w)) - 1);
    uint32_t fast = TM_FAST(cls, page, a->index) | TM_FAST_FRESH;
    for (uint32_t i = 0; i < k->slab_pages; i++)
        __atomic_store_n(&c->fast[page + i], fast, __ATOMIC_RELEASE);
    /* read without the lock by arena_refill_other */
    __atomic_store_n(&a->bins[cls].nslabs, a->bins[cls].nslabs + 1, __ATOMIC_RELAXED);
    return s;
}

void slab_set_fresh_locked(tm_slab_t *s, uint32_t fresh) {
    s->fresh = (uint16_t)fresh;
    tm_chunk_t *c = slab_chunk(s);
    const tm_class_t *k = &tm_classes[s->cls];
    uint32_t page = (uint32_t)((s->start - c->base) >> TM_PAGE_SHIFT);
    uint32_t first = slab_fresh_page(fresh, s->nblocks, k->size);
    for (uint32_t i = 0; i < k->slab_pages; i++) {
        uint32_t f = c->fast[page + i], g = i >= first ? f | TM_FAST_FRESH : f & ~TM_FAST_FRESH;
        if (g != f) __atomic_store_n(&c->fast[page + i], g, __ATOMIC_RELEASE);
    }
}

/* Block i of slab s, never handed out (i >= fresh), is being handed out.
 * Every other block that starts on its page gets its cookie now -- the page
 * is being touched anyway -- so fresh can move to the first block that
 * starts on a later page: a page keeps TM_FAST_FRESH only while it holds no
 * block ever handed out, and free() of a block there is always a bad one
 * (the fast path's cookie test holds everywhere else). Returns the new
 * fresh. */
static uint32_t slab_fresh_past_locked(const tm_slab_t *s, uint32_t i, uint32_t size) {
    uintptr_t next_page = ((uintptr_t)i * size + TM_PAGE) & ~(uintptr_t)TM_PAGE_MASK;
    uint32_t f = (uint32_t)((next_page + size - 1) / size);
    if (f > s->nblocks) f = s->nblocks;
    for (uint32_t j = i + 1; j < f; j++) {
        void *q = (void *)(s->start + (uintptr_t)j * size);
        *tm_cookie_slot(q) = tm_cookie_of(q);
    }
    return f;
}

static void slab_destroy_locked(tm_arena_t *a, tm_slab_t *s) {
    tm_chunk_t *c = slab_chunk(s);
    uint32_t page = (uint32_t)((s->start - c->base) >> TM_PAGE_SHIFT);
    const tm_class_t *k = &tm_classes[s->cls];
    __atomic_store_n(&a->bins[s->cls].nslabs, a->bins[s->cls].nslabs - 1, __ATOMIC_RELAXED);
    if (k->slab_pages > 1) page_set_kind(&c->pages[page + k->slab_pages - 1], PAGE_INTERIOR);
    /* every page of a slab has its fast[] entry (free() reads them
     * without the lock: atomic); run_free_locked clears the first */
    for (uint32_t i = page + 1; i < page + k->slab_pages; i++)
        __atomic_store_n(&c->fast[i], 0, __ATOMIC_RELAXED);
    run_free_locked(a, c, page, k->slab_pages);
    s->nblocks = 0;
    chunk_slot_put_locked(c, (uint32_t)(s - c->slabs));
}

/* A refill writes the cookie of each block it hands out that may have none
 * (a fresh block, or any block of a purged slab), and so touches its page,
 * which may not be resident. It stops before a fifth such page. A refill of
 * a 4 KiB class used to fault in a page per block (8-12 pages, 330-540 us
 * while _heapmin madvises, when a fault costs 40-400 us on this VM): the
 * worst stall another thread saw during a trim. A growing program makes
 * more, smaller refills instead. Measured (bench/throughput, interleaved
 * medians of 7, against no cap): the size sweep with 2 threads runs 10-15%
 * slower, with 33% less peak RSS (9.9 -> 6.7 MiB) and 40% more page faults;
 * with 1 thread, and larson, realloc and xmalloc, no change beyond the
 * noise. A cap of 16 pages was slower still there (136 against 159 Mops/s)
 * and kept the RSS. One page was tried too: a large block freed and then
 * reused for a slab came back as that slab's first block at the next
 * malloc, so a double free of the large block freed the new one instead of
 * being caught (tests/bad_input, free-double-large).
 */
#define REFILL_COLD_PAGES 4
#define ARENA_BORROW_SCAN 8 /* other arenas a refill may borrow from */

/* The k-th arena after a (1 <= k <= ARENA_BORROW_SCAN, k < tm_narenas)
 * if it has a slab of class cls with room, else NULL: a hint, read
 * without its lock. The one scan of arenas a refill may borrow from. */
static tm_arena_t *lender_at(const tm_arena_t *a, unsigned k, unsigned cls) {
    tm_arena_t *o = __atomic_load_n(&tm_arenas[(a->index + k) % tm_narenas], __ATOMIC_ACQUIRE);
    return o && __atomic_load_n(&o->bins[cls].partial, __ATOMIC_RELAXED) ? o : NULL;
}

/* Whether one of the next ARENA_BORROW_SCAN arenas after a has a slab of
 * class cls with room. */
static bool partial_elsewhere(const tm_arena_t *a, unsigned cls) {
    for (unsigned k = 1; k < tm_narenas && k <= ARENA_BORROW_SCAN; k++)
        if (lender_at(a, k, cls)) return true;
    return false;
}

/* How a refill may take blocks: from a's slabs, making them as needed;
 * the same, but stopping where a's last slab with room ends if another
 * arena has one (the refill of a thread that takes part in remote frees);
 * or only from slabs a already has (borrowing from a, another arena). */
enum refill_mode { REFILL_MAKE, REFILL_MAKE_UNLESS_ELSEWHERE, REFILL_BORROW };

static unsigned refill_locked(tm_arena_t *a, unsigned cls, void **slots, unsigned n,
                              enum refill_mode mode) {
    const uint32_t size = tm_classes[cls].size;
    tm_arena_bin_t *b = &a->bins[cls];
    unsigned got = 0, cold_left = REFILL_COLD_PAGES;
    void *first = NULL; /* the lowest block taken: it goes out last (below) */
    uintptr_t cold_pg = 0;
    bool stop = false;
    while (got < n && !stop) {
        tm_slab_t *s = b->partial;
        if (!s) {
            /* a slab to make: if another arena has one with room, the
             * blocks so far will do, and the next refill borrows there */
            if (mode == REFILL_BORROW ||
                (mode == REFILL_MAKE_UNLESS_ELSEWHERE && got && partial_elsewhere(a, cls)))
                break;
            s = slab_create_locked(a, cls);
            if (!s) break;
            bin_push_locked(b, s);
        }
        uint32_t fresh = s->fresh;
        const bool purged = s->purged;
        const uintptr_t start = s->start;
        const unsigned got0 = got;
        tm_chunk_t *sc = NULL;  /* s's chunk, once a page is marked resident */
        uintptr_t marked = 0;   /* the last page marked: blocks go in address order */
        for (unsigned w = s->hint; w < TM_SLAB_MAX_BLOCKS / 64 && got < n && !stop; w++) {
            uint64_t bits = s->bitmap[w];
            while (bits && got < n) {
                unsigned i = w * 64 + (unsigned)__builtin_ctzll(bits);
                void *p = (void *)(start + (uintptr_t)i * size);
                if (i >= fresh || purged) { /* it may have no cookie: give it one */
                    uintptr_t pg = (uintptr_t)p >> TM_PAGE_SHIFT;
                    if (pg != cold_pg) { /* a new page; the first always gets through */
                        if (!cold_left) {
                            stop = true;
                            break;
                        }
                        cold_left--;
                        cold_pg = pg;
                    }
                    *tm_cookie_slot(p) = tm_cookie_of(p);
                    if (i >= fresh) fresh = slab_fresh_past_locked(s, i, size);
                    /* its pages are in use: a later _heapmin looks at them again */
                    uintptr_t last = ((uintptr_t)p + size - 1) >> TM_PAGE_SHIFT;
                    if (last > marked) {
                        uintptr_t from = pg > marked ? pg : marked + 1;
                        if (!sc) sc = slab_chunk(s);
                        chunk_resident_set(sc, (uint32_t)(from - (sc->base >> TM_PAGE_SHIFT)),
                                           (uint32_t)(last - from + 1), true);
                        marked = last;
                    }
                }
                bits &= bits - 1;
                if (got) slots[n - got] = p; /* from the top down: see below */
                else first = p;
                got++;
            }
            bm_store(s, w, bits);
            if (!bits) s->hint = (uint16_t)(w + 1);
        }
        /* counted per slab: slab_create_locked may drop the lock (chunk
         * growth, growth purge), and a _heapchk then must find the bin's
         * count matching its slabs */
        s->nfree = (uint16_t)(s->nfree - (got - got0));
        b->cur_blocks += got - got0;
        b->nmalloc += got - got0;
        if (fresh != s->fresh) slab_set_fresh_locked(s, fresh);
        if (s->nfree == 0) {
            bin_remove_locked(b, s);
            /* every free block has been handed out, with its cookie */
            slab_set_purged_locked(s, false);
        }
    }
    /* The blocks are taken in address order and stored from slots[n - 1]
     * down, then moved to slots[0..got): a thread cache's bin pops its top
     * first, so the program gets them in address order, as from a bump
     * pointer, and walks what it allocated one after another forwards
     * through memory (design.md, "Thread caches", has the measurements).
     * Stored from slots[0] up until 2026-12-08, they came out backwards
     * within each refill. The first block taken goes to the bottom, out
     * last: it is a fresh slab's first, on a page boundary, and a thread
     * that keeps reusing the first block of each of a few classes (a loop
     * of malloc and free) would have all their cookie words at the same
     * offset in a page, which the CPU takes for a possible overlap of its
     * stores and loads (4K aliasing): bench/throughput tight ran 145 ->
     * 100 M operations a second with it on top (/tmp/s46/tl.c). */
    if (!got) return 0;
    slots[n - got] = first;
    if (got < n) tm_ptrs_move(slots, slots + (n - got), got);
    return got;
}

unsigned arena_refill(tm_arena_t *a, unsigned cls, void **slots, unsigned n) {
    arena_lock(a);
    unsigned got = refill_locked(a, cls, slots, n, REFILL_MAKE);
    arena_unlock(a);
    return got;
}

/* Before arena `own` makes another slab of class cls (it has slabs of the
 * class, none with room), blocks from another arena's slab with room, if
 * one has any: the first of the next ARENA_BORROW_SCAN arenas whose bin
 * has a partial slab (read without its lock, a hint) and whose lock is
 * free (a trylock: one that is busy is in use, and is skipped; no two
 * arena locks are held together). Returns how many, 0 to go on with own's
 * slabs. Used by arena_refill_remote (below). Arena `avoid` lends nothing
 * (TM_MAX_ARENAS: none). An arena with no slab of the class makes its
 * own: a new thread's first blocks do not share cache lines with another
 * thread's (thrash, scratch). Borrowed blocks may share lines with the
 * lender's live blocks, as a producer's blocks do with its consumer's.
 *
 * Why: threads that free each other's blocks (a producer and a consumer;
 * larson's threads, which inherit each other's arrays) keep a population
 * of blocks that circulates between their caches, and each refill drew on
 * the refilling thread's own arena while overflows sent blocks home to
 * both. Nothing pulled the mix back, so the population drifted from one
 * arena to the other: one arena's slabs emptied, their pages resident
 * until the decay, while the other made new slabs and faulted in new
 * pages. bench/throughput xmalloc with 2 threads peaked at 7.7-8.9 MiB
 * against 5.9 in its steady state (a sampler of trimalloc_stats_arena
 * every 0.2 ms: one arena's active bytes fell from 2.96 to 1.13 MiB, its
 * free pages rising to 1.9 MiB, while the other's rose from 2.06 to
 * 3.03). Medians of 5 interleaved runs on the 2-core VM (2026-12-07),
 * peak RSS before -> after: xmalloc 2 threads 7.89 -> 6.87 MiB (glibc
 * 6.48), 8 threads 27.5 -> 23.2; larson 2 threads 5.89 -> 5.3-5.5, 8
 * threads 18.9 -> 15.6-16.6 (the lower figures before the refill under a
 * handed-over block stopped borrowing from its arena); throughput and the
 * other workloads unchanged beyond the noise (tests/unit/borrow.c). */
unsigned arena_refill_other(const tm_arena_t *own, unsigned avoid, unsigned cls, void **slots,
                            unsigned n) {
    if (__atomic_load_n(&own->bins[cls].partial, __ATOMIC_RELAXED) ||
        !__atomic_load_n(&own->bins[cls].nslabs, __ATOMIC_RELAXED))
        return 0;
    for (unsigned k = 1; k < tm_narenas && k <= ARENA_BORROW_SCAN; k++) {
        tm_arena_t *a = lender_at(own, k, cls);
        if (!a || a->index == avoid || arena_trylock(a) != 0) continue;
        unsigned got = refill_locked(a, cls, slots, n, REFILL_BORROW);
        arena_unlock(a);
        if (got) return got;
    }
    return 0;
}

/* The refill of a thread cache's bin that has held another arena's blocks
 * (tm_tc_bin_t.remote, tcache.c): blocks borrowed from another arena's slab
 * (arena_refill_other), or else from a's slabs, stopping where a's last
 * slab with room ends if another arena has one, so that the next refill
 * borrows there. Only for the classes whose slab holds at least
 * BORROW_MIN_BLOCKS blocks (every class up to 1 KiB, and the 1536, 1792
 * and 3584-byte ones, whose slabs span 3, 4 and 7 pages): a borrowed
 * block keeps its lender's slab from emptying, and a slab of a few big
 * blocks is pinned by one. bench/throughput sizes with 4 threads (no remote frees, but its
 * threads take batches of each other's transfer caches, so the flag was
 * set on their 4 KiB bins) peaked at 16.2 MiB with the 4 KiB class
 * borrowing, 14.1 without, 13.7 before borrowing (medians of 11,
 * interleaved); borrowing on every refill, not only a marked bin's, 20
 * MiB (larson and xmalloc gained no more). */
#define BORROW_MIN_BLOCKS 8
unsigned arena_refill_remote(tm_arena_t *a, unsigned avoid, unsigned cls, void **slots, unsigned n) {
    if (tm_classes[cls].nblocks < BORROW_MIN_BLOCKS) return arena_refill(a, cls, slots, n);
    unsigned got = arena_refill_other(a, avoid, cls, slots, n);
    if (got) return got;
    arena_lock(a);
    got = refill_locked(a, cls, slots, n, REFILL_MAKE_UNLESS_ELSEWHERE);
    arena_unlock(a);
    return got;
}

/* Count `freed` blocks just set free in slab s's bitmap (the lowest in
 * word `minw`), in s and in its bin b, and place s: on the bin's partial
 * list once it has room; back to the chunk once empty, unless it is the
 * bin's only slab with room (keeps a steady state from thrashing). */
static void slab_settle_locked(tm_arena_t *a, tm_arena_bin_t *b, tm_slab_t *s, uint32_t freed,
                               unsigned minw) {
    if (minw < s->hint) s->hint = (uint16_t)minw;
    s->nfree = (uint16_t)(s->nfree + freed);
    b->nfree += freed;
    b->cur_blocks -= freed;
    if (s->nfree == s->nblocks) {
        if (s->on_list && (b->partial != s || s->next)) {
            bin_remove_locked(b, s);
            slab_destroy_locked(a, s);
        } else if (!s->on_list && b->partial) {
            slab_destroy_locked(a, s);
        } else if (!s->on_list) {
            bin_push_locked(b, s);
        }
    } else if (!s->on_list) {
        bin_push_locked(b, s);
    }
}

/* Blocks returned under one hold of an arena lock, at most: a drain of a
 * whole cache (_heapmin, thread exit) must not keep the threads that share
 * the arena waiting for thousands of them. */
#define FLUSH_BATCH 128u

/* Return n blocks of class cls to their slabs, each arena's under one hold
 * of its lock, which looks at FLUSH_BATCH of them at most (other arenas'
 * included: they wait for their own arena's turn). Every block a thread cache or a
 * transfer cache holds is of its bin's class (free() took the class from
 * the block's page), so the class's constants are read once; a block whose
 * page says otherwise, or that is no block start, is reported as an invalid
 * pointer, one already free in its slab as a double free, and a cookie
 * overwritten since the free as a write after free. The blocks of a batch
 * mostly share chunks and slabs (a burst of frees in allocation order), so
 * the chunk is looked up, and a slab's counts and list placed, only where
 * they change from one block to the next (slab_settle_locked). */
void arena_flush(unsigned cls, void **blocks, unsigned n) {
    const tm_class_t *k = &tm_classes[cls];
    const uint64_t magic = k->magic;
    const uint32_t size = k->size, nblocks = k->nblocks;
    while (n) {
        tm_chunk_t *c0 = chunk_of_entry(pagemap_lookup((uintptr_t)blocks[0]));
        if (unlikely(!c0)) {
            tm_invalid_pointer("free", blocks[0]);
            blocks++;
            n--;
            continue;
        }
        tm_arena_t *a = c0->arena;
        tm_arena_bin_t *b = &a->bins[cls];
        unsigned keep = 0, i = 0;
        const unsigned end = n < FLUSH_BATCH ? n : FLUSH_BATCH;
        /* the chunk of the block before: under a's lock a chunk of a's
         * stays a's (only chunk_adopt and arena_purge detach one, under its
         * arena's lock) */
        tm_chunk_t *c = c0;
        tm_slab_t *s = NULL; /* the slab of the blocks before, not settled yet */
        uint32_t freed = 0, last_e = 0;
        unsigned minw = 0;
        arena_lock(a);
        /* read again under the lock: c0's arena was read without it, and
         * only a chunk left empty (by a racing double free of a block) can
         * have moved since (a reviewer's interleaving); its blocks then
         * wait for the next round, with their new arena */
        bool mine = c0->arena == a;
        for (; i < end; i++) {
            void *p = blocks[i];
            uintptr_t off = (uintptr_t)p - c->base;
            if (unlikely(off >= TM_CHUNK)) {
                tm_chunk_t *pc = chunk_of_entry(pagemap_lookup((uintptr_t)p));
                if (unlikely(!pc)) {
                    tm_invalid_pointer("free", p);
                    continue;
                }
                c = pc;
                mine = c->arena == a;
                off = (uintptr_t)p - c->base;
                last_e = 0; /* an entry names a slab of its own chunk only */
            }
            if (unlikely(!mine)) {
                blocks[keep++] = p;
                continue;
            }
            /* slab_of's test, inlined with the class's constants read once
             * (a call to it cost 6-8 instructions more a block), and the
             * class checked and the slab looked up only where the page
             * entry changes: every page of a slab has the same entry but
             * for its flags, and an entry names a slab of its own chunk.
             * Looking both up for every block cost 23 instructions more a
             * pair in callgrind_pair's burst row (213.6 -> 190.7). */
            uint32_t e = __atomic_load_n(&c->fast[off >> TM_PAGE_SHIFT], __ATOMIC_RELAXED);
            if (unlikely(e != last_e)) {
                if (unlikely((e & 0xff) != cls)) {
                    tm_invalid_pointer("free", p);
                    continue;
                }
                tm_slab_t *t = &c->slabs[slab_slot_read(c, fast_slab_page(e))];
                if (t != s) {
                    if (s) slab_settle_locked(a, b, s, freed, minw);
                    s = t;
                    freed = 0;
                    minw = TM_SLAB_MAX_BLOCKS / 64;
                }
                last_e = e;
            }
            uint64_t in = off - TM_FAST_SLAB_OFF(e), idx = (in * magic) >> 40;
            if (unlikely(idx * size != in || idx >= nblocks)) {
                tm_invalid_pointer("free", p);
                continue;
            }
            unsigned w = (unsigned)(idx >> 6);
            uint64_t bit = 1ull << (idx & 63), word = s->bitmap[w];
            if (unlikely(word & bit)) {
                tm_double_free("free", p);
                continue;
            }
            uint64_t *slot = tm_cookie_slot(p);
            if (unlikely(*slot != tm_cookie_of(p))) { /* written to after it was freed */
                tm_write_after_free(p);
                *slot = tm_cookie_of(p);
            }
            bm_store(s, w, word | bit);
            if (w < minw) minw = w;
            freed++;
        }
        if (s) slab_settle_locked(a, b, s, freed, minw);
        arena_unlock(a);
        /* other arenas' blocks first, then those not looked at yet */
        if (i < n) tm_ptrs_move(blocks + keep, blocks + i, n - i);
        n = keep + (n - i);
    }
}

/* Give back class cls's empty slab, kept against thrashing, once a thread
 * cache's garbage collection finds the class idle (tcache.c): free runs
 * are what the growth purge can give back. */
void arena_release_idle_slab(tm_arena_t *a, unsigned cls) {
    arena_lock(a);
    tm_arena_bin_t *b = &a->bins[cls];
    tm_slab_t *s = b->partial;
    if (s && !s->next && s->nfree == s->nblocks) {
        bin_remove_locked(b, s);
        slab_destroy_locked(a, s);
    }
    arena_unlock(a);
}

/* Give back the empty slabs the bins keep against thrashing (_heapmin):
 * one hold of the lock per class, so the threads that share the arena wait
 * for one bin's walk at most. */
void arena_release_empty_slabs(tm_arena_t *a) {
    for (unsigned c = 1; c <= TM_NCLASSES; c++) {
        tm_arena_bin_t *b = &a->bins[c];
        arena_lock(a);
        for (tm_slab_t *s = b->partial, *next; s; s = next) {
            next = s->next;
            if (s->nfree == s->nblocks) {
                bin_remove_locked(b, s);
                slab_destroy_locked(a, s);
            }
        }
        arena_unlock(a);
    }
}

/* ---- pages inside slabs ------------------------------------------------------
 * A slab that still holds one block out of the arena keeps its run, but not
 * every page of it: _heapmin gives back each page that holds no byte of a
 * block out of the arena (held by the program or sitting in a cache); the
 * kernel zero-fills it on the next touch. Free blocks there lose their
 * cookie word: the slab is marked purged, the refill writes a cookie into
 * every block of such a slab that it hands out (a block in a cache always
 * has one: free() reads it), and _heapchk accepts a zero cookie word in it.
 * The slab's free tail -- the blocks after the last one out -- needs not
 * even that: lowering slab.fresh to the first of them makes them blocks
 * that were never handed out, which carry no cookie (the refill that first
 * hands one out writes it) and whose contents nothing reads.
 *
 * Per batch of slabs, in address order (chunk and page index are the
 * cursor: bin lists reorder while the lock is dropped), under the arena
 * lock: plan each slab, and take the free blocks that the planned pages
 * overlap -- the whole free tail too, when fresh is lowered -- out of the
 * bitmap, so no refill hands them out and the slab can neither empty nor be
 * destroyed meanwhile. Without the lock: madvise the planned pages, in as
 * few calls as they are contiguous. Under the lock again: the blocks go
 * back, and fresh is lowered. A page given back is recorded as such in
 * its chunk's resident bits (chunk_resident_set) until a refill hands out
 * a block on it or _heapset fills it, and later calls leave it alone: until
 * 2026-12-06 every call gave back, and counted as released, the same pages
 * again (an outside tester: 5 malloc_trim calls in a row each "released"
 * 292 MiB of a heap whose RSS stayed at 200 MiB, each with 780
 * process_madvise calls, and returned 1), and `resident` counted them. */
#define SLAB_PURGE_BATCH 32

typedef struct slab_plan {
    tm_slab_t *s;
    tm_chunk_t *c;                          /* s's chunk */
    uint32_t p0;                            /* s's first page in it */
    uint64_t held[TM_SLAB_MAX_BLOCKS / 64]; /* taken out of the bitmap */
    uint32_t give;                          /* bit k: the slab's page k goes back */
    uint32_t tail;                          /* blocks [tail, nblocks) are free */
    bool lower;                             /* fresh becomes tail: all of them held */
    bool purges;                            /* free blocks under the tail lose cookies */
} slab_plan_t;

/* Bits of the slab pages that bytes [lo, hi) of the slab touch. */
static uint32_t slab_pages_mask(uintptr_t lo, uintptr_t hi) {
    uint32_t first = (uint32_t)(lo >> TM_PAGE_SHIFT), last = (uint32_t)((hi - 1) >> TM_PAGE_SHIFT);
    uint32_t upto = last >= 31 ? ~0u : (2u << last) - 1;
    return upto & ~((1u << first) - 1);
}

static bool slab_block_free(const tm_slab_t *s, uint32_t i) {
    return (s->bitmap[i >> 6] >> (i & 63)) & 1;
}

/* Plan slab s and take its blocks out; false if it has nothing to give. */
static bool slab_plan_hold_locked(tm_slab_t *s, slab_plan_t *pl) {
    const uint32_t size = tm_classes[s->cls].size, npages = tm_classes[s->cls].slab_pages;
    if (s->nfree == 0 || s->nfree == s->nblocks) return false; /* full, or empty */
    uint32_t tail = s->nblocks;
    while (tail && slab_block_free(s, tail - 1)) tail--;
    uint32_t keep = 0;
    for (uint32_t i = 0; i < tail; i++) {
        uintptr_t off = (uintptr_t)i * size;
        if (!slab_block_free(s, i)) keep |= slab_pages_mask(off, off + size);
    }
    uint32_t give = (npages >= 32 ? ~0u : (1u << npages) - 1) & ~keep;
    /* not the pages an earlier call gave back that no block has used since */
    tm_chunk_t *c = slab_chunk(s);
    uint32_t p0 = (uint32_t)((s->start - c->base) >> TM_PAGE_SHIFT);
    for (uint32_t g = give; g; g &= g - 1)
        if (!chunk_resident_count(c, p0 + (uint32_t)__builtin_ctz(g), 1)) give &= ~(g & -g);
    if (!give) return false;
    pl->s = s;
    pl->c = c;
    pl->p0 = p0;
    pl->give = give;
    pl->tail = tail;
    pl->lower = tail < s->fresh;
    memset(pl->held, 0, sizeof pl->held);
    for (uint32_t i = 0; i < s->nblocks; i++) {
        uintptr_t off = (uintptr_t)i * size;
        if (slab_block_free(s, i) &&
            ((slab_pages_mask(off, off + size) & give) || (i >= tail && pl->lower)))
            pl->held[i >> 6] |= 1ull << (i & 63);
    }
    for (unsigned w = 0; w < TM_SLAB_MAX_BLOCKS / 64; w++) {
        bm_store(s, w, s->bitmap[w] & ~pl->held[w]);
        s->nfree = (uint16_t)(s->nfree - (unsigned)__builtin_popcountll(pl->held[w]));
    }
    /* Free blocks on the given pages lose their cookie words (the free
     * tail's get fresh lowered instead): from now on free() of a block of
     * this slab asks the bitmap, not the cookie, whether it is free. */
    pl->purges = true;
    slab_set_purged_locked(s, true);
    return true;
}

static void slab_put_back_locked(tm_arena_t *a, const slab_plan_t *pl) {
    tm_slab_t *s = pl->s;
    for (unsigned w = 0; w < TM_SLAB_MAX_BLOCKS / 64; w++) {
        if (!pl->held[w]) continue;
        bm_store(s, w, s->bitmap[w] | pl->held[w]);
        s->nfree = (uint16_t)(s->nfree + (unsigned)__builtin_popcountll(pl->held[w]));
        if (w < s->hint) s->hint = w & 7;
    }
    /* Every block from the tail on was held, so all are free, and fresh
     * did not move meanwhile (a refill hands out blocks in index order, so
     * it could reach fresh only through them): they become blocks never
     * handed out. Without lower, an unheld block past fresh may have been
     * handed out meanwhile, and fresh must stay where the refill left it. */
    if (pl->lower) slab_set_fresh_locked(s, pl->tail);
    /* a refill may have emptied the bitmap meanwhile and cleared purged */
    if (pl->purges) slab_set_purged_locked(s, true);
    /* A block freed meanwhile may have emptied it: it stays on the list,
     * as the bins' spare empty slabs do, for the next _heapmin to free. */
    if (!s->on_list) bin_push_locked(&a->bins[s->cls], s);
}

/* Caller holds the trim lock, so no chunk of a is unmapped meanwhile.
 * *failures (if given) counts the batches the kernel refused in part: a
 * _heapmin whose only pages to give back are inside slabs, all refused,
 * returns -1 with ENOSYS (until 2026-12-07 it returned 0; an outside
 * tester, reading the code). */
size_t arena_purge_slab_pages(tm_arena_t *a, unsigned *failures) {
    size_t released = 0;
    tm_chunk_t *c = NULL;
    uint32_t from = 0; /* in chunk c, the pages before this one are done */
    for (bool first = true;; first = false) {
        slab_plan_t plan[SLAB_PURGE_BATCH];
        int n = 0;
        arena_lock(a);
        if (first) c = a->chunks;
        int seen = 0; /* slabs looked at: bounds the hold, even where few give pages */
        while (c && seen < SLAB_PURGE_BATCH) {
            uint32_t p = 0;
            while (p < TM_CHUNK_PAGES && seen < SLAB_PURGE_BATCH) {
                tm_page_t *h = &c->pages[p];
                uint32_t np = h->npages;
                tm_assert(np >= 1);
                if (np == 0) break; /* not a run's first page: leave the chunk */
                if (p >= from && h->kind == PAGE_SLAB) {
                    seen++;
                    n += slab_plan_hold_locked(chunk_slab(c, p), &plan[n]);
                }
                p += np;
            }
            if (seen == SLAB_PURGE_BATCH && p < TM_CHUNK_PAGES) {
                from = p; /* the rest of c in the next batch */
                break;
            }
            c = c->next; /* chunks stay: only _heapmin, which is us, unmaps them */
            from = 0;
        }
        arena_unlock(a);
        if (!seen) break;
        os_batch_t batch = {.n = 0, .released = 0}; /* contiguous pages merge */
        for (int k = 0; k < n; k++) {
            for (uint32_t pg = 0; pg < 32; pg++) {
                if (!((plan[k].give >> pg) & 1)) continue;
                uintptr_t at = plan[k].s->start + ((uintptr_t)pg << TM_PAGE_SHIFT);
                os_batch_add(&batch, (void *)at, (void *)(at + TM_PAGE));
            }
        }
        size_t got = os_batch_flush(&batch), planned = 0;
        released += got;
        if (!n) continue;
        for (int k = 0; k < n; k++) planned += (size_t)__builtin_popcount(plan[k].give) << TM_PAGE_SHIFT;
        if (got < planned && failures) (*failures)++;
        arena_lock(a);
        for (int k = 0; k < n; k++) {
            /* gone, unless the kernel refused some (then all stay marked,
             * for the next call to try again) */
            if (got == planned)
                for (uint32_t g = plan[k].give; g; g &= g - 1)
                    chunk_resident_set(plan[k].c, plan[k].p0 + (uint32_t)__builtin_ctz(g), 1, false);
            slab_put_back_locked(a, &plan[k]);
        }
        arena_unlock(a);
    }
    stats_add_released(released);
    return released;
}

/* ---- packing slab descriptors -------------------------------------------------
 * Live slabs are scattered over their chunk's slab pool in the order they
 * were made: after a spike, the few survivors would keep most pool pages
 * resident. _heapmin moves each descriptor in a slot at or above the
 * chunk's count of slabs to the lowest free slot, so the live ones fill
 * [0, nslabs), and then gives back the pool pages above (chunk.c).
 *
 * Who holds a slab pointer: under the arena lock, the bins' partial lists
 * (fixed up here); across a dropped lock, only _heapmin's own page purge
 * (arena_purge_slab_pages, done before this) -- refills take their slab
 * after the lock is back. Without the lock, slab_of and
 * arena_block_is_free read a slot from the slab's first page entry: the
 * copy is complete before the entry names it (release), the old slot's
 * bitmap is cleared after, and arena_block_is_free reads the slot again
 * after the bitmap to notice a move. */
static void slab_move_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t from, uint32_t to) {
    tm_slab_t *s = &c->slabs[from], *d = &c->slabs[to];
    memcpy(d, s, offsetof(tm_slab_t, bitmap));
    for (unsigned w = 0; w < TM_SLAB_MAX_BLOCKS / 64; w++) bm_store(d, w, s->bitmap[w]);
    if (d->on_list) {
        if (d->prev) d->prev->next = d;
        else __atomic_store_n(&a->bins[d->cls].partial, d, __ATOMIC_RELAXED);
        if (d->next) d->next->prev = d;
    }
    page_set_index(&c->pages[(d->start - c->base) >> TM_PAGE_SHIFT], to);
    for (unsigned w = 0; w < TM_SLAB_MAX_BLOCKS / 64; w++) bm_store(s, w, 0);
    memset(s, 0, offsetof(tm_slab_t, bitmap));
    c->slab_used[from >> 6] &= ~(1ull << (from & 63));
    c->slab_used[to >> 6] |= 1ull << (to & 63);
}

static void chunk_pack_slabs_locked(tm_arena_t *a, tm_chunk_t *c) {
    uint32_t k = c->nslabs, to = 0;
    for (uint32_t w = k >> 6; w < TM_CHUNK_PAGES / 64; w++) {
        uint64_t used = c->slab_used[w];
        if (w == k >> 6) used &= ~0ull << (k & 63);
        for (; used; used &= used - 1) {
            uint32_t from = w * 64 + (uint32_t)__builtin_ctzll(used);
            while ((c->slab_used[to >> 6] >> (to & 63)) & 1) to++; /* a free one below k */
            tm_assert(to < k);
            slab_move_locked(a, c, from, to);
        }
    }
}

size_t arena_compact_slabs(tm_arena_t *a) {
    size_t released = 0;
    arena_lock(a);
    /* chunks stay while the lock is dropped: only _heapmin unmaps them */
    for (tm_chunk_t *c = a->chunks; c; c = c->next) {
        chunk_pack_slabs_locked(a, c);
        released += chunk_slab_pool_release_locked(a, c); /* drops the lock */
    }
    arena_unlock(a);
    return released;
}

/* ---- large runs -------------------------------------------------------------- */

void *arena_alloc_large(tm_arena_t *a, size_t size, size_t align, bool zero) {
    size_t npages = (size + TM_PAGE_MASK) >> TM_PAGE_SHIFT;
    size_t align_pages = align > TM_PAGE ? align >> TM_PAGE_SHIFT : 1;
    uint32_t page;
    bool zeroed;
    arena_lock(a);
    tm_chunk_t *c = run_alloc_locked(a, npages, align_pages, &page, &zeroed);
    if (!c) {
        if (!arena_grow_locked(a) ||
            !(c = run_alloc_locked(a, npages, align_pages, &page, &zeroed))) {
            arena_unlock(a);
            return NULL;
        }
    }
    page_set_end(&c->pages[page], PAGE_LARGE, (uint32_t)npages);
    if (npages > 1) page_set_end(&c->pages[page + npages - 1], PAGE_INTERIOR, (uint32_t)npages);
    /* run_free_locked clears it */
    __atomic_store_n(&c->fast[page], TM_FAST_LARGE_ENTRY(TM_FAST_LARGE, npages), __ATOMIC_RELAXED);
    a->large_allocated += npages << TM_PAGE_SHIFT;
    a->large_nmalloc++;
    arena_unlock(a);
    void *p = (void *)chunk_page_addr(c, page);
    if (zero && !zeroed) memset(p, 0, npages << TM_PAGE_SHIFT);
    return p;
}

/* Free the large run at page of c; 0 and no change if none starts there
 * (*kind_out then says what does). */
static size_t large_free_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, void *p,
                                unsigned *kind_out) {
    tm_page_t *h = &c->pages[page];
    *kind_out = h->kind;
    if (unlikely(h->kind != PAGE_LARGE)) return 0;
    uint32_t n = h->npages;
    if (unlikely(tm_opt.junk)) memset(p, 0x5a, (size_t)n << TM_PAGE_SHIFT);
    a->large_allocated -= (size_t)n << TM_PAGE_SHIFT;
    a->large_nfree++;
    if (n > 1) page_set_kind(&c->pages[page + n - 1], PAGE_INTERIOR);
    run_free_large_locked(a, c, page, n);
    return (size_t)n << TM_PAGE_SHIFT;
}

/* Whether a large-run address the program does not hold (its entry f has
 * no TM_FAST_LARGE; kind is its page's) was freed before, as opposed to
 * never a block start: queued by a remote free, a free run, or a run the
 * allocator holds for itself while it purges (PAGE_LARGE with no flag:
 * run_hold_locked). */
static bool large_was_freed(uint32_t f, unsigned kind) {
    return (f & TM_FAST_QUEUED) || kind == PAGE_LARGE || kind == PAGE_FREE || kind == PAGE_UNUSED;
}

static void large_free_report(uint32_t f, unsigned kind, void *p) {
    if (large_was_freed(f, kind)) tm_double_free("free", p);
    else tm_invalid_pointer("free", p);
}

/* A free by a thread of the block's own arena (or with caching off). It
 * takes the block's TM_FAST_LARGE first, as a thread of another arena does
 * when it queues the block (tcache_free_large, with a CAS and without this
 * lock): of two threads freeing one block at the same moment, one frees or
 * queues it and the other is reported (a double free, or an invalid
 * pointer once the winner merged the run with a free neighbour). Before 2026-12-05 this
 * path read only pages[].kind, so a queueing CAS between the other
 * thread's test and this free went unseen, and the run was freed twice
 * (found by a tester: 3-9 blocks handed out twice per 40 000 racing double
 * frees; tests/stress/double_free_race.c). */
void arena_free_large(tm_chunk_t *c, uint32_t page, void *p) {
    tm_arena_t *a = c->arena;
    unsigned kind;
    size_t freed = 0;
    arena_lock(a);
    uint32_t f = __atomic_load_n(&c->fast[page], __ATOMIC_RELAXED);
    if (a->bare) { /* one thread: nobody queues it meanwhile */
        if (f & TM_FAST_LARGE) __atomic_store_n(&c->fast[page], f & ~TM_FAST_LARGE, __ATOMIC_RELAXED);
    } else {
        while ((f & TM_FAST_LARGE) &&
               !__atomic_compare_exchange_n(&c->fast[page], &f, f & ~TM_FAST_LARGE, false,
                                            __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
        }
    }
    if (f & TM_FAST_LARGE) {
        freed = large_free_locked(a, c, page, p, &kind);
    } else {
        /* Not a block the program holds (large_was_freed says which kind
         * of address): reported, not freed. Until 2026-12-05 a run the
         * allocator holds while it purges was freed here, under the
         * purge's madvise, by a late double free (a reviewer's finding). */
        kind = c->pages[page].kind;
    }
    arena_unlock(a);
    if (unlikely(!freed)) large_free_report(f, kind, p);
}

/* Free n large blocks queued by a thread of another arena
 * (tcache_free_large), as arena_flush does small ones: one hold of each
 * arena's lock per FLUSH_BATCH blocks. Each address is looked up and
 * checked again under the lock (a queued block is one the program held, so
 * this only catches the allocator's own mistakes); a bad one is reported
 * once the lock is dropped. Returns the bytes freed. */
size_t arena_free_large_batch(void **runs, unsigned n) {
    size_t bytes = 0;
    while (n) {
        tm_chunk_t *c0 = chunk_of_entry(pagemap_lookup((uintptr_t)runs[0]));
        if (unlikely(!c0)) {
            tm_invalid_pointer("free", runs[0]);
            runs++;
            n--;
            continue;
        }
        tm_arena_t *a = c0->arena;
        unsigned keep = 0, i = 0, done = 0, kind = 0;
        void *bad = NULL;
        arena_lock(a);
        for (; i < n && done < FLUSH_BATCH && !bad; i++) {
            tm_chunk_t *c = chunk_of_entry(pagemap_lookup((uintptr_t)runs[i]));
            if (c && c->arena == a) {
                uint32_t page = (uint32_t)(((uintptr_t)runs[i] - c->base) >> TM_PAGE_SHIFT);
                size_t freed = large_free_locked(a, c, page, runs[i], &kind);
                if (!freed) bad = runs[i];
                bytes += freed;
                done++;
            } else {
                runs[keep++] = runs[i];
            }
        }
        arena_unlock(a);
        if (bad) large_free_report(0, kind, bad);
        /* other arenas' runs first, then those not looked at yet */
        if (i < n) tm_ptrs_move(runs + keep, runs + i, n - i);
        n = keep + (n - i);
    }
    return bytes;
}

/* Usable size of the large block at page, 0 if none starts there. */
size_t arena_large_usable(tm_chunk_t *c, uint32_t page, bool *freed) {
    tm_arena_t *a = c->arena;
    size_t r = 0;
    arena_lock(a);
    tm_page_t *h = &c->pages[page];
    uint32_t f = __atomic_load_n(&c->fast[page], __ATOMIC_RELAXED);
    /* the program holds it only with TM_FAST_LARGE (arena_free_large) */
    if (h->kind == PAGE_LARGE && (f & TM_FAST_LARGE)) r = (size_t)h->npages << TM_PAGE_SHIFT;
    if (freed) *freed = !r && large_was_freed(f, h->kind); /* as free() names it */
    arena_unlock(a);
    return r;
}

bool arena_large_resize_in_place(tm_chunk_t *c, uint32_t page, size_t new_size) {
    tm_arena_t *a = c->arena;
    uint32_t nn = (uint32_t)((new_size + TM_PAGE_MASK) >> TM_PAGE_SHIFT);
    bool ok = false;
    arena_lock(a);
    tm_page_t *h = &c->pages[page];
    uint32_t f = __atomic_load_n(&c->fast[page], __ATOMIC_RELAXED);
    if (h->kind == PAGE_LARGE && (f & TM_FAST_LARGE)) { /* a block the program holds */
        uint32_t n = h->npages;
        if (nn == n) ok = true;
        else if (nn < n) {
            run_shrink_locked(a, c, page, n, nn);
            a->large_allocated -= (size_t)(n - nn) << TM_PAGE_SHIFT;
            ok = true;
        } else {
            run_stash_flush_locked(a); /* it may be the free run the block grows into */
            if (run_try_grow_locked(a, c, page, n, nn)) {
                a->large_allocated += (size_t)(nn - n) << TM_PAGE_SHIFT;
                ok = true;
            }
        }
        /* a CAS: a racing free() from another arena's thread may have
         * queued the block meanwhile, and its entry must stay QUEUED */
        if (ok && nn != n)
            __atomic_compare_exchange_n(&c->fast[page], &f, TM_FAST_LARGE_ENTRY(TM_FAST_LARGE, nn),
                                        false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    }
    arena_unlock(a);
    return ok;
}

/* ---- fork ----------------------------------------------------------------------- */

/* Each arena's lock, once no section that dropped it is under way: a
 * growth purge or decay tick holds runs as the allocator's own while it
 * madvises them, and a thread growing the arena maps a chunk; forked
 * meanwhile, a child kept those runs as allocated for good (found by
 * review, 2026-12-05: 3 of 300 children, 12-15 MiB each) and never
 * attached the chunk. Such a section takes no lock that this handler
 * holds: other arenas' locks only with trylock, and the huge, pagemap and
 * metadata locks come after the arenas here. (A fork from a signal handler
 * that interrupted such a section of its own thread would wait for good;
 * one that interrupted a locked section always did.) */
void arena_lock_settled(tm_arena_t *a) {
    arena_lock(a);
    arena_settle_locked(a, -1);
}

/* max_ms < 0: for as long as it takes (fork, _heapchk, _heapset,
 * _heapwalk). _heapmin (arena_purge) waits max_ms at most, and not while
 * the arena is held bare (only a signal handler of the one thread could
 * meet a section then): sections that keep overlapping keep the count
 * above zero, and the broadcast comes only at zero, so an unbounded wait
 * there could hold the trim lock, and fork and _heapchk behind it, as long
 * as they went on (an outside reviewer, by reading). Past the bound the
 * purge goes on without them. */
void arena_settle_locked(tm_arena_t *a, long max_ms) {
    if (likely(!a->dropped) || (max_ms >= 0 && a->bare)) return;
    struct timespec until = {0, 0};
    if (max_ms >= 0) until = os_realtime_after_ms(max_ms);
    /* blocks (a yield loop hung a SCHED_FIFO forker whose CPU the
     * section's lower-priority thread then never got back), with
     * cancellation off: pthread_cond_wait is a cancellation point, and a
     * thread with a cancel pending was cancelled here, inside fork() or
     * _heapchk(), unwinding with this lock and its caller's held; the
     * process then hung (an outside tester, 2026-12-06; tests/unit/cancel.c) */
    int cancel;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    a->settlers++; /* the decay's and the orphans' loops of sections stop for us */
    while (a->dropped) {
        if (max_ms < 0) arena_wait_undropped(a);
        else if (pthread_cond_timedwait(&a->undropped, &a->lock, &until) == ETIMEDOUT) break;
    }
    a->settlers--;
    pthread_setcancelstate(cancel, NULL);
}

void arena_fork_prepare(void) {
    tm_lock(&arenas_lock);
    for (unsigned i = 0; i < TM_MAX_ARENAS; i++)
        if (tm_arenas[i]) {
            arena_lock_settled(tm_arenas[i]);
            tm_arenas[i]->fork_held = true;
        }
}

void arena_fork_parent(void) {
    for (unsigned i = TM_MAX_ARENAS; i-- > 0;) /* not one made during the fork */
        if (tm_arenas[i] && tm_arenas[i]->fork_held) {
            tm_arenas[i]->fork_held = false;
            arena_unlock(tm_arenas[i]);
        }
    tm_unlock(&arenas_lock);
}

void arena_fork_child(void) {
    for (unsigned i = 0; i < TM_MAX_ARENAS; i++)
        if (tm_arenas[i]) {
            tm_mutex_init(&tm_arenas[i]->lock);
            tm_arenas[i]->bare = false; /* taken bare by a one-thread parent */
            tm_arenas[i]->fork_held = false;
            pthread_cond_init(&tm_arenas[i]->undropped, NULL);
        }
    pthread_mutex_init(&arenas_lock, NULL);
}
