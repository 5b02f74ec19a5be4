/*
 * chunk.c -- chunks and the page runs inside them: carving, freeing with
 * immediate coalescing, and purging free pages back to the kernel.
 *
 * Free runs of an arena are indexed by exact length (1..1024 pages) in
 * doubly linked lists, with a bitmap of non-empty lengths, so a best fit is
 * a bit scan. A run's first and last page entries carry its kind and
 * length; that is what lets a freed run find and merge its neighbours in
 * O(1). Every function with _locked runs under the arena's lock.
 *
 * Resident free pages. Freed pages stay resident (a page fault costs more
 * than the free saves), so an arena's resident size is every page it ever
 * handed out, less what was purged: a free run's pages, once touched, count
 * until _heapmin. To keep that from growing with fragmentation -- a big run
 * that fits in no free run lands on fresh pages while the dirty ones lie
 * idle -- each page of a free run carries a resident bit, and each arena
 * counts its resident free pages; an allocation about to fault in fresh
 * pages first hands idle resident ones back (see "growth purge").
 */
#include "internal.h"

/* ---- residency ----------------------------------------------------------------
 * chunk_t.resident, which nothing else reads, holds a resident bit per
 * page: on every page of a free run, 1 if the page may hold data the
 * kernel keeps (it was handed out since its chunk was mapped or it was last
 * purged), 0 if it is known released. Freeing a run sets it on all its
 * pages; a purge clears it. It says nothing about pages of live runs: a
 * run's bits are rewritten when it is freed. The first page's `dirty` flag
 * stays what other files read: set if any page of the run may be resident.
 * A bitmap, so a run's count is a few popcounts, not a walk of its pages.
 *
 * rss[a->index] holds per arena, under its lock, the resident free pages
 * and how long they have been free (below); one
 * cache line each, as arenas exist to keep threads off each other's lines.
 * Other arenas read them without the lock, to choose whose pages to purge
 * (relaxed atomics: a hint, read again under the lock), and idle_arenas
 * says which arenas have enough of them to be worth a look, so that look
 * reads a few words, not a line per arena.
 *
 * How long pages have been free is counted in epochs of a coarse clock,
 * purge_epoch: at each change of the count, the lowest count of the
 * current epoch and of the one before it are kept, so the lowest count
 * since the previous epoch began -- the pages that stayed free and
 * resident through at least one whole epoch -- is known at any time
 * (idle_pages). The clock is read only where the count changes, that is
 * where a run is freed or resident free pages are taken again. */
#define PURGE_MIN 64u          /* pages (256 KiB) */
#define DECAY_QUARTERS 4       /* a decay window's parts (see "decay") */
static struct {
    _Alignas(64) size_t resident; /* pages of free runs with the resident bit set */
    uint64_t epoch;               /* purge_epoch() at the last change of resident */
    uint64_t change_ns;           /* os_now_ns_raw() at the first change in that epoch */
    size_t low, low_before;       /* the lowest resident in that epoch, in the one before */
    uint64_t fresh_epoch;         /* purge_epoch() when it last faulted in fresh pages */
    uint64_t decay_ns;            /* os_now_ns() when the current decay quarter began */
    size_t decay_low;             /* the lowest resident in that quarter */
    size_t decay_before[DECAY_QUARTERS - 1]; /* the same, in the quarters before it */
    size_t decay_due;             /* pages the decay may still give back */
} rss[TM_MAX_ARENAS];

/* bit i: arena i holds at least PURGE_MIN resident free pages (changed
 * under arena i's lock, only as its count crosses PURGE_MIN). */
static uint64_t idle_arenas[TM_MAX_ARENAS / 64];

/* The coarse clock: on x86 the time-stamp counter / 2^24, an epoch of 4
 * to 17 ms at 1 to 4 GHz (8 ms on the 2.1 GHz test VM) that costs a few
 * nanoseconds to read, with no system call and no page of libc (a small
 * program that frees a run would otherwise fault in libc's clock_gettime
 * and the pages around it); elsewhere CLOCK_MONOTONIC / 2^23 (8.4 ms). */
static uint64_t purge_epoch(void) {
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_ia32_rdtsc() >> 24;
#else
    return os_now_ns() >> 23;
#endif
}

#define RSS_LOAD(i, field) __atomic_load_n(&rss[i].field, __ATOMIC_RELAXED)
#define RSS_STORE(i, field, v) __atomic_store_n(&rss[i].field, (v), __ATOMIC_RELAXED)

static void decay_catch_up_locked(unsigned i, size_t still);
static bool decay_quiet_since(uint64_t change_ns, uint64_t now);

static void resident_set_locked(tm_arena_t *a, size_t v) {
    unsigned i = a->index;
    size_t old = rss[i].resident;
    RSS_STORE(i, resident, v);
    if (v < rss[i].decay_low) RSS_STORE(i, decay_low, v);
    /* Below PURGE_MIN before and after: no clock (a read costs 8 ns on the
     * test VM, a sixth of a 16 KiB malloc+free there). Every reader acts
     * only on PURGE_MIN idle pages or more, and the lows stay right for
     * that: the change that took the count below PURGE_MIN recorded a low
     * below it, and the one that takes it back up records the count it
     * left (`old`) as the low of its epoch. */
    if (old < PURGE_MIN && v < PURGE_MIN) return;
    uint64_t e = purge_epoch();
    if (e > rss[i].epoch) {
        /* `old` pages have stayed free since the last change: for a whole
         * window, after a pause without ticks? (decay_catch_up_locked; the
         * clock once an epoch at most) */
        if (__atomic_load_n(&tm_opt.dirty_decay_ms, __ATOMIC_RELAXED) > 0) {
            uint64_t t = os_now_ns_raw();
            if (decay_quiet_since(rss[i].change_ns, t)) decay_catch_up_locked(i, old < v ? old : v);
            RSS_STORE(i, change_ns, t);
        }
        /* `old` was the count from the last change to now: the lowest of
         * that epoch is low, or old itself if that epoch had no change */
        RSS_STORE(i, low_before, e == rss[i].epoch + 1 ? rss[i].low : old);
        RSS_STORE(i, low, old < v ? old : v);
        RSS_STORE(i, epoch, e);
    } else if (v < rss[i].low) {
        RSS_STORE(i, low, v);
    }
    if ((old >= PURGE_MIN) == (v >= PURGE_MIN)) return;
    uint64_t bit = 1ull << (i & 63);
    if (v >= PURGE_MIN) __atomic_fetch_or(&idle_arenas[i >> 6], bit, __ATOMIC_RELAXED);
    else __atomic_fetch_and(&idle_arenas[i >> 6], ~bit, __ATOMIC_RELAXED);
}

static void resident_add_locked(tm_arena_t *a, size_t n) {
    if (n) resident_set_locked(a, rss[a->index].resident + n);
}

static void resident_sub_locked(tm_arena_t *a, size_t n) {
    if (n) resident_set_locked(a, rss[a->index].resident - n);
}

/* Resident free pages of arena i that have stayed free since epoch `now`
 * - 1 began, at least a whole epoch: the lowest count since then. Exact
 * under i's lock, a hint without it. */
static size_t idle_pages(unsigned i, uint64_t now) {
    uint64_t e = RSS_LOAD(i, epoch);
    size_t low = RSS_LOAD(i, low);
    if (e + 1 < now) return RSS_LOAD(i, resident); /* no change since then */
    if (e + 1 == now) return low;                  /* changes in the epoch before only */
    size_t before = RSS_LOAD(i, low_before);       /* changes in this epoch */
    return before < low ? before : low;
}

/* Bits [lo, hi) of a 64-bit word, 0 <= lo < hi <= 64. */
static uint64_t bits_mask(uint32_t lo, uint32_t hi) {
    return (hi == 64 ? ~0ull : (1ull << hi) - 1) & (~0ull << lo);
}

uint32_t chunk_resident_count(const tm_chunk_t *c, uint32_t page, uint32_t n) {
    uint32_t r = 0;
    for (uint32_t end = page + n, next; page < end; page = next) {
        next = (page | 63) + 1 < end ? (page | 63) + 1 : end;
        uint64_t m = bits_mask(page & 63, next - (page & ~63u)), w = c->resident[page >> 6] & m;
        /* mostly all or none: no popcount then (a library call without
         * -mpopcnt, 20 instructions) */
        r += w == m ? next - page : w ? (uint32_t)__builtin_popcountll(w) : 0;
    }
    return r;
}

void chunk_resident_set(tm_chunk_t *c, uint32_t page, uint32_t n, bool bit) {
    for (uint32_t end = page + n, next; page < end; page = next) {
        next = (page | 63) + 1 < end ? (page | 63) + 1 : end;
        uint64_t m = bits_mask(page & 63, next - (page & ~63u));
        if (bit) c->resident[page >> 6] |= m;
        else c->resident[page >> 6] &= ~m;
    }
}

/* Fill the resident pages of free run [page, page + n) with `fill`
 * (_heapset). The others are left alone: a page whose resident bit is
 * clear reads zero (fresh or purged), and the purges rely on that -- the
 * growth purge gives back only the resident span of a run and then calls
 * the run zeroed if no bit is left, so a clear page written here would be
 * handed to calloc as zero. */
void run_fill_resident_locked(tm_chunk_t *c, uint32_t page, uint32_t n, unsigned char fill) {
    for (uint32_t p = page, end = page + n; p < end;) {
        if (!chunk_resident_count(c, p, 1)) {
            p++;
            continue;
        }
        uint32_t q = p + 1;
        while (q < end && chunk_resident_count(c, q, 1)) q++;
        memset((void *)chunk_page_addr(c, p), fill, (size_t)(q - p) << TM_PAGE_SHIFT);
        p = q;
    }
}

/* The first and one past the last resident page of [page, page + n),
 * which holds one at least (bits outside free runs may be stale, but the
 * first set bit from `page` up and the last from its end down are the
 * run's own). */
static void resident_span(const tm_chunk_t *c, uint32_t page, uint32_t n, uint32_t *lo,
                          uint32_t *hi) {
    uint32_t p = page;
    uint64_t w;
    while (!(w = c->resident[p >> 6] & bits_mask(p & 63, 64))) p = (p | 63) + 1;
    *lo = (p & ~63u) + (uint32_t)__builtin_ctzll(w);
    p = page + n - 1;
    while (!(w = c->resident[p >> 6] & bits_mask(0, (p & 63) + 1))) p = (p & ~63u) - 1;
    *hi = (p & ~63u) + 64 - (uint32_t)__builtin_clzll(w);
}

/* ---- free-run index ------------------------------------------------------ */

void runs_index_insert_locked(tm_arena_t *a, tm_chunk_t *c, tm_page_t *head) {
    uint32_t n = head->npages;
    tm_run_link_t *l = &c->links[chunk_page_index(c, head) >> 1];
    l->prev = NULL;
    l->next = a->runs[n];
    if (l->next) page_link(l->next)->prev = head;
    a->runs[n] = head;
    a->runs_nonempty[n >> 6] |= 1ull << (n & 63);
    a->runs_words |= 1ull << (n >> 6);
}

void runs_index_remove_locked(tm_arena_t *a, tm_page_t *head) {
    uint32_t n = head->npages;
    tm_run_link_t *l = page_link(head);
    if (l->prev) page_link(l->prev)->next = l->next;
    else a->runs[n] = l->next;
    if (l->next) page_link(l->next)->prev = l->prev;
    if (!a->runs[n] && !(a->runs_nonempty[n >> 6] &= ~(1ull << (n & 63))))
        a->runs_words &= ~(1ull << (n >> 6));
    l->next = l->prev = NULL;
}

/* Smallest non-empty length >= n, or 0: two bit scans, whatever the
 * lengths (a walk of the 17 words took 120 instructions of a 16 KiB
 * malloc+free's 1240 when the only free run was the chunk's long tail). */
static uint32_t runs_find_locked(tm_arena_t *a, uint32_t n) {
    if (n > TM_CHUNK_PAGES) return 0;
    uint32_t w = n >> 6;
    uint64_t bits = a->runs_nonempty[w] & (~0ull << (n & 63));
    if (bits) return w * 64 + (uint32_t)__builtin_ctzll(bits);
    uint64_t words = w + 1 < 64 ? a->runs_words & (~0ull << (w + 1)) : 0;
    if (!words) return 0;
    w = (uint32_t)__builtin_ctzll(words);
    return w * 64 + (uint32_t)__builtin_ctzll(a->runs_nonempty[w]);
}

static void run_mark(tm_chunk_t *c, uint32_t page, uint32_t n, uint8_t kind) {
    page_set_end(&c->pages[page], kind, n);
    if (n > 1) page_set_end(&c->pages[page + n - 1], kind == PAGE_FREE ? PAGE_FREE : PAGE_INTERIOR, n);
}

/* Make [page, page+n), whose ends read PAGE_INTERIOR, one free run as it
 * is: for a piece cut from a free run, whose neighbours are the block cut
 * and what bordered the run, never free (free runs are merged as they
 * form). */
TM_INLINE void run_free_as_is_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t n,
                                bool zeroed, bool dirty) {
    tm_page_t *h = &c->pages[page], e = page_get(h);
    e.kind = PAGE_FREE;
    e.npages = n;
    e.zeroed = zeroed;
    e.dirty = dirty;
    page_put(h, e);
    if (n > 1) page_set_end(&c->pages[page + n - 1], PAGE_FREE, n);
    runs_index_insert_locked(a, c, h);
}

static void chunk_unstash_locked(tm_arena_t *a, tm_chunk_t *c);

/* Put [page, page+n) back as free, merging with free neighbours. */
static void run_insert_free_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t n,
                                   bool zeroed, bool dirty) {
    /* The run's own first and last page become interior pages if it merges:
     * no stale PAGE_LARGE/PAGE_SLAB may stay inside a free run, or a double
     * free of the old block would look valid. run_free_as_is_locked sets
     * the new ends. */
    page_set_kind(&c->pages[page], PAGE_INTERIOR);
    page_set_kind(&c->pages[page + n - 1], PAGE_INTERIOR);
    if (page > 0) {
        tm_page_t *left_tail = &c->pages[page - 1];
        if (left_tail->kind == PAGE_FREE) {
            uint32_t ln = left_tail->npages;
            tm_page_t *lh = &c->pages[page - ln];
            runs_index_remove_locked(a, lh);
            zeroed = zeroed && lh->zeroed;
            dirty = dirty || lh->dirty;
            page_set_kind(lh, PAGE_INTERIOR);
            page_set_kind(left_tail, PAGE_INTERIOR);
            page -= ln;
            n += ln;
        }
    }
    if (page + n < TM_CHUNK_PAGES) {
        tm_page_t *rh = &c->pages[page + n];
        if (rh->kind == PAGE_FREE) {
            uint32_t rn = rh->npages;
            runs_index_remove_locked(a, rh);
            zeroed = zeroed && rh->zeroed;
            dirty = dirty || rh->dirty;
            page_set_kind(rh, PAGE_INTERIOR);
            page_set_kind(&c->pages[page + n + rn - 1], PAGE_INTERIOR);
            n += rn;
        }
    }
    run_free_as_is_locked(a, c, page, n, zeroed, dirty);
    /* the rest of the chunk is free but for the arena's kept runs: them too */
    if (unlikely(c->stash_pages) && c->free_pages + c->stash_pages == TM_CHUNK_PAGES)
        chunk_unstash_locked(a, c);
}

/* ---- growth purge -------------------------------------------------------------
 * An allocation about to fault in fresh pages while the arena holds idle
 * resident ones first gives idle ones back, so the resident size follows
 * what the arena holds now rather than every layout it once had. It does
 * so when at least PURGE_MIN pages are idle and either the growth is big
 * (GROWTH_BIG fresh pages or more: a large run that fits in no resident
 * free run) or the idle pages outnumber the live ones. A free never
 * purges, and a program that reuses what it freed never gets here: only a
 * footprint that changes shape touches fresh pages.
 *
 * The cost is a fault for each released page that is used again (about
 * 10 us a page on the 2-core test VM, madvise and fault together), and
 * each madvise call shoots down the TLBs of every thread of the process
 * (some 30 us more per call there with a second thread running): so the
 * longest runs go first, and a run is purged only as far as wanted, from
 * its end. A budget for the process bounds the cost whatever the program
 * does: PURGE_BURST pages at once, then PURGE_RATE pages a second, so a
 * footprint that keeps changing shape costs a few milliseconds a second at
 * most, however many arenas it spans (purge_budget). One growth gives
 * back at most TM_DECAY_TICK_PAGES of its arena's pages, or as many as it
 * faults in if more: the allocation waits for the madvise calls (as the
 * decay's ticks, below). An arena growing while
 * others hold idle pages purges those too (below, "of other arenas"). */
#define GROWTH_BIG 64u         /* fresh pages (256 KiB) */
#define PURGE_RATE 256u        /* pages a second (1 MiB/s) */
#define PURGE_BURST 4096u      /* pages (16 MiB) */
#define GROWTH_PURGE_BATCH 64  /* runs per purge */

/* Kept by free_pages_add_locked and free_pages_sub_locked (a chunk joins
 * and leaves an arena empty). Until 2026-12-06 a walk of the arena's
 * chunks, at every growth purge's choice: an outside tester's program
 * holding 2 GiB of mixed blocks (803 chunks) spent 28% of its time there,
 * 1.64 s of user time against tcmalloc's 0.55. */
static size_t active_pages_locked(const tm_arena_t *a) { return a->active_pages; }

/* The same without the lock: a hint (other arenas' growth purges) */
static size_t active_pages_peek(const tm_arena_t *a) {
    return __atomic_load_n(&a->active_pages, __ATOMIC_RELAXED);
}

/* The growth purges' budget, one for the process: pages they may still
 * release, and when it was last topped up. Until 2026-12-06 each arena had
 * one, and N arenas purged N times as much: an outside tester's 64 threads
 * of churn on 2 CPUs with narenas:256 (each thread an arena of its own)
 * took 388 000 page faults, 7900 madvise calls and 4.9 s, against 66 000,
 * 1000 and 1.4 s with 4 arenas; 95 000, 900 and 1.5 s now, 66 MB
 * resident after the churn against 71 (4 arenas: as before). Read and
 * written under whichever arena lock the purge holds, in separate
 * relaxed steps, so purges in several arenas at once may each spend it
 * (and a top-up may overwrite a deduction made meanwhile): a bound to
 * within one purge per arena purging at the same moment, never above
 * PURGE_BURST, not an exact one (an outside reviewer measured 0.95-0.97x
 * of the budget released with 1-100 threads purging). */
static struct {
    _Alignas(64) size_t credit;
    uint64_t credit_ns;
} purge_budget;

/* The credit topped up to `now`, with *earned set if any was earned since
 * credit_ns. */
static size_t credit_topped(uint64_t now, bool *earned_out) {
    uint64_t since = __atomic_load_n(&purge_budget.credit_ns, __ATOMIC_RELAXED);
    size_t credit = __atomic_load_n(&purge_budget.credit, __ATOMIC_RELAXED);
    uint64_t earned = now > since ? (now - since) / (1000000000u / PURGE_RATE) : 0;
    *earned_out = earned != 0;
    return earned >= PURGE_BURST - credit ? PURGE_BURST : credit + (size_t)earned;
}

/* What growth_purge_budget would find. */
static size_t credit_peek(uint64_t now) {
    bool earned;
    return credit_topped(now, &earned);
}

static void credit_set(size_t credit) {
    __atomic_store_n(&purge_budget.credit, credit, __ATOMIC_RELAXED);
}

size_t chunk_purge_credit(void) { return credit_peek(os_now_ns()); }

/* Of `idle` resident free pages of an arena, how many the budget lets a
 * growth purge give back now: 0 unless at least PURGE_MIN. */
static size_t growth_purge_budget(size_t idle) {
    if (idle < PURGE_MIN) return 0;
    /* clock_gettime(CLOCK_MONOTONIC) is a vDSO call, not a system call */
    uint64_t now = os_now_ns();
    bool earned;
    size_t credit = credit_topped(now, &earned);
    if (earned) {
        credit_set(credit);
        __atomic_store_n(&purge_budget.credit_ns, now, __ATOMIC_RELAXED);
    }
    if (credit < PURGE_MIN) return 0;
    return idle < credit ? idle : credit;
}

/* How many idle pages to give back before faulting in `fresh` pages while
 * `idle` resident free pages lie elsewhere in the arena; 0 for none. */
static size_t growth_purge_pages_locked(tm_arena_t *a, uint32_t fresh, size_t idle) {
    if (idle < PURGE_MIN) return 0;
    if (fresh < GROWTH_BIG && idle < active_pages_locked(a)) return 0;
    size_t cap = fresh > TM_DECAY_TICK_PAGES ? fresh : TM_DECAY_TICK_PAGES;
    return growth_purge_budget(idle < cap ? idle : cap);
}

/* c->free_pages plus or minus n, keeping a's count of empty chunks
 * (chunk_adopt reads it without the lock, as a hint) and of active pages */
static void free_pages_add_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t n) {
    __atomic_store_n(&a->active_pages, a->active_pages - n, __ATOMIC_RELAXED);
    if ((c->free_pages += n) == TM_CHUNK_PAGES)
        __atomic_store_n(&a->nempty, a->nempty + 1, __ATOMIC_RELAXED);
}

static void free_pages_sub_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t n) {
    __atomic_store_n(&a->active_pages, a->active_pages + n, __ATOMIC_RELAXED);
    if (c->free_pages == TM_CHUNK_PAGES) __atomic_store_n(&a->nempty, a->nempty - 1, __ATOMIC_RELAXED);
    c->free_pages -= n;
}

/* Take the run at `page` of c out of the free state into the one that
 * walkers read as a large block the allocator holds (see growth_purge), or
 * back. Its first page must be out of the index. */
static void run_hold_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t n) {
    run_mark(c, page, n, PAGE_LARGE);
    free_pages_sub_locked(a, c, n);
    a->large_allocated += (size_t)n << TM_PAGE_SHIFT;
    a->purge_held += (size_t)n << TM_PAGE_SHIFT;
    a->purge_held_resident += (size_t)chunk_resident_count(c, page, n) << TM_PAGE_SHIFT;
}

/* A run held is no longer: back to the free state (unhold), or freed
 * meanwhile by a bad free() (run_still_held false: only the hold's
 * counts). Its resident bits are as they were when it was held: nothing
 * changes a held run's. */
static void run_hold_end_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t n) {
    size_t r = (size_t)chunk_resident_count(c, page, n) << TM_PAGE_SHIFT;
    a->purge_held -= (size_t)n << TM_PAGE_SHIFT;
    a->purge_held_resident -= r < a->purge_held_resident ? r : a->purge_held_resident;
}

static void run_unhold_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t n) {
    free_pages_add_locked(a, c, n);
    a->large_allocated -= (size_t)n << TM_PAGE_SHIFT;
    run_hold_end_locked(a, c, page, n);
}

/* True if the run held at `page` is still held: only a bad free() of an
 * address inside the heap can have freed it meanwhile. */
static bool run_still_held(const tm_chunk_t *c, uint32_t page, uint32_t n) {
    return c->pages[page].kind == PAGE_LARGE && c->pages[page].npages == n;
}

/* Give back about `want` resident free pages of arena a, the longest runs
 * first; returns how many it gave back. While the lock is
 * dropped for the madvise calls the runs are out of the index and held as
 * large blocks of the allocator's own (PAGE_LARGE, counted in
 * large_allocated, not in free_pages): _heapchk, _heapwalk and a concurrent
 * trim all see a consistent heap, no free merges into them and no
 * allocation takes them. Called and returns with the lock held. */
static size_t growth_purge_locked(tm_arena_t *a, size_t want) {
    struct {
        tm_chunk_t *c;
        uint32_t page, n;   /* the run held */
        uint32_t lo, hi, r; /* purge [lo, hi), which holds r resident pages */
    } runs[GROWTH_PURGE_BATCH];
    int nruns = 0;
    size_t got = 0, released = 0;
    run_stash_flush_locked(a); /* a purge sees every free run */
    /* the longest runs first, from the index: fewer madvise calls, each of
     * which must shoot down the TLBs of every thread of the process */
    for (uint32_t w = sizeof a->runs_nonempty / sizeof a->runs_nonempty[0];
         w-- > 0 && got < want && nruns < GROWTH_PURGE_BATCH;) {
        for (uint64_t bits = a->runs_nonempty[w]; bits && got < want && nruns < GROWTH_PURGE_BATCH;) {
            uint32_t n = w * 64 + 63 - (uint32_t)__builtin_clzll(bits);
            bits &= ~(1ull << (n & 63));
            for (tm_page_t *h = a->runs[n], *next; h && got < want && nruns < GROWTH_PURGE_BATCH;
                 h = next) {
                next = page_link(h)->next;
                tm_chunk_t *c = page_chunk(h);
                uint32_t p = chunk_page_index(c, h), r, lo, hi;
                if (!h->dirty || !(r = chunk_resident_count(c, p, n))) continue;
                /* the madvise spans the resident pages only */
                resident_span(c, p, n, &lo, &hi);
                if (r > want - got) {
                    /* only as much of it as is wanted, from its end: a run
                     * is carved from its first page on */
                    for (uint32_t u = hi - 1; lo < u;) { /* the last lo with enough */
                        uint32_t m = lo + (u - lo + 1) / 2;
                        if (chunk_resident_count(c, m, hi - m) >= want - got) lo = m;
                        else u = m - 1;
                    }
                }
                runs_index_remove_locked(a, h);
                run_hold_locked(a, c, p, n);
                runs[nruns].c = c;
                runs[nruns].page = p;
                runs[nruns].n = n;
                runs[nruns].lo = lo;
                runs[nruns].hi = hi;
                runs[nruns].r = chunk_resident_count(c, lo, hi - lo);
                /* only the pages to purge leave the count: the rest stay
                 * idle as they were, and the low-water mark of the count
                 * (idle_pages) must not take them for reused */
                resident_sub_locked(a, runs[nruns].r);
                got += runs[nruns].r;
                nruns++;
            }
        }
    }
    if (!nruns) return 0;
    size_t credit = __atomic_load_n(&purge_budget.credit, __ATOMIC_RELAXED);
    credit_set(got < credit ? credit - got : 0);
    arena_dropped_enter(a);
    arena_unlock(a);
    os_range_t ranges[GROWTH_PURGE_BATCH];
    bool purged[GROWTH_PURGE_BATCH];
    for (int i = 0; i < nruns; i++) {
        ranges[i].base = (void *)chunk_page_addr(runs[i].c, runs[i].lo);
        ranges[i].len = (size_t)(runs[i].hi - runs[i].lo) << TM_PAGE_SHIFT;
    }
    os_purge_ranges(ranges, (unsigned)nruns, purged);
    /* the resident pages given back, as arena_purge counts them: the span
     * may hold pages that were not (until 2026-12-07 they counted too) */
    size_t bytes = 0;
    for (int i = 0; i < nruns; i++)
        if (purged[i]) bytes += (size_t)runs[i].r << TM_PAGE_SHIFT;
    stats_add_released(bytes);
    arena_lock(a);
    arena_dropped_leave(a);
    for (int i = 0; i < nruns; i++) {
        tm_chunk_t *c = runs[i].c;
        uint32_t p = runs[i].page, n = runs[i].n, lo = runs[i].lo;
        if (!run_still_held(c, p, n)) {
            run_hold_end_locked(a, c, p, n);
            continue;
        }
        run_unhold_locked(a, c, p, n);
        if (purged[i]) {
            chunk_resident_set(c, lo, runs[i].hi - lo, false);
            released += runs[i].r;
        } else { /* the kernel refused: every page may hold data */
            resident_add_locked(a, n - chunk_resident_count(c, p, n) + runs[i].r);
            chunk_resident_set(c, p, n, true);
        }
        /* a page with no resident bit reads zero: fresh, or purged */
        bool clean = chunk_resident_count(c, p, n) == 0;
        run_insert_free_locked(a, c, p, n, clean, !clean);
    }
    return released;
}

/* ---- growth purge of other arenas ------------------------------------------
 * An arena about to fault in fresh pages may find idle resident pages not
 * in itself but in other arenas: a producer's blocks freed by a consumer
 * go home to the producer's arena, a thread that has moved on leaves its
 * arena's pages behind. After its own growth purge it gives back idle
 * pages of other arenas too, about as many as it is about to fault in.
 *
 * Another arena's free pages are idle only if they stay free: one whose
 * threads free and allocate again in turn (batches, producer and consumer)
 * has its working set among its free pages between the two, and purging
 * them would cost it a fault per page, again and again. So another arena
 * gives back only pages that have stayed free through a whole epoch of
 * the coarse clock (idle_pages), at least PURGE_MIN of them, and never
 * more than the budget allows. (The runs purged are not necessarily
 * the very pages that stayed free: their number is.)
 *
 * Nor is an arena that is itself faulting in fresh pages (in this epoch or
 * the one before) purged by others: without that rule two arenas whose
 * free runs are reused slowly (throughput realloc --threads 2) purge each
 * other in turn, each refault being a fresh fault that purges the other,
 * until the budget is spent (faults 3.7x, throughput -36% there, with a
 * budget per arena as it was then).
 *
 * Nor is one whose stayed-free pages are fewer than its live ones: those
 * are the holes a working arena's layout leaves, reused as its blocks
 * come and go, not pages left behind (the test its own growth purge makes
 * of a growth that is not big). Until 2026-12-06 any 64 such pages
 * qualified: an outside tester's JSON-like tree build and teardown on 2
 * threads (10 rounds, 20 documents each) had each thread's fresh faults
 * purge the other's holes, 250-330 madvise calls, 7.5-10.4k page faults
 * and 1.5x mimalloc's CPU time; with the rule 24-100 calls and 5.1-7.3k
 * faults (mimalloc 5.4k), peak RSS 21-23 MiB either way. The cost: an
 * arena whose threads went quiet keeps such holes until the decay (an
 * outside reviewer: 38 MiB of holes among 58 MiB live, kept while another
 * thread grew by 40 MiB, peaked at 138 MiB against 122). Telling a quiet
 * arena from a working one by its count of free pages not changing was
 * tried: reuse through the kept runs (run_stash) does not change it.
 *
 * The purges of other arenas spend the same budget as every growth purge
 * (purge_budget): the faults they cost fall on the threads that use the
 * purged pages again, and the budget bounds them for the whole process.
 * The growing thread pays the madvise calls: about as many pages as it is about to fault in
 * (PURGE_MIN at least), in at most GROWTH_PURGE_BATCH runs an arena.
 *
 * Locks: the growing arena's lock is dropped first (the run it is about
 * to use is held, as for its own purge), and each other arena is taken
 * with a trylock -- one that is busy is in use, and is skipped -- and
 * purged as its own growth purge would, its lock dropped for the madvise.
 * So no two arena locks are ever held together. Arenas are visited from
 * self + 1 round the ring until enough pages are given back: one arena,
 * usually. */

/* Another arena's kept runs (the last freed runs, below) count as idle
 * pages when none was kept for a whole epoch (a thread that reuses them
 * keeps some every cycle; only the keeping reads the clock, once per
 * large free, which took a 64 KiB malloc+free pair from 559 to 575
 * instructions, callgrind): the purge frees them into the index first.
 * Until 2026-12-08, when the kept runs went from 1 to 4 MiB, they counted
 * as live pages, and an arena whose freed runs sat there was never a
 * victim (tests/unit/growth_purge.c, tests/api/idle_arenas.c). Read
 * without b's lock: hints, read again under it. */
static size_t stash_idle(const tm_arena_t *b, uint64_t epoch) {
    if (__atomic_load_n(&b->stash_epoch, __ATOMIC_RELAXED) + 1 >= epoch) return 0;
    return __atomic_load_n(&b->stash_pages, __ATOMIC_RELAXED);
}

/* b's pages in runs that are not free and not kept: its blocks' and slabs' */
static size_t live_pages(const tm_arena_t *b) {
    size_t active = active_pages_peek(b), kept = __atomic_load_n(&b->stash_pages, __ATOMIC_RELAXED);
    return active > kept ? active - kept : 0;
}

/* The next arena after step *k from self round the ring, self excluded,
 * that idle_arenas names and whose idle pages and budget look worth a
 * purge, read without its lock; NULL when none is left. *now_ns is read
 * on the first need of it. */
static tm_arena_t *purge_victim_next(unsigned self, unsigned *k, uint64_t epoch,
                                     uint64_t *now_ns) {
    for (unsigned n = tm_narenas; ++*k < n;) {
        unsigned i = (self + *k) % n;
        uint64_t w = __atomic_load_n(&idle_arenas[i >> 6], __ATOMIC_RELAXED);
        if (!((w >> (i & 63)) & 1)) {
            if (!w) *k += (i | 63) < n ? 63 - (i & 63) : n - 1 - i; /* the rest of the word */
            continue;
        }
        size_t idle = idle_pages(i, epoch);
        if (idle < PURGE_MIN) continue;
        if (RSS_LOAD(i, fresh_epoch) + 1 >= epoch) continue; /* growing itself */
        if (!*now_ns) *now_ns = os_now_ns();
        if (credit_peek(*now_ns) < PURGE_MIN) continue;
        tm_arena_t *b = __atomic_load_n(&tm_arenas[i], __ATOMIC_ACQUIRE);
        if (b && idle + stash_idle(b, epoch) >= live_pages(b)) return b;
    }
    return NULL;
}

/* Give back about `fresh` idle pages of other arenas, from victim b on.
 * Called with no arena lock held. Returns the pages given back. */
static size_t growth_purge_others(unsigned self, tm_arena_t *b, unsigned k, uint64_t epoch,
                                  uint64_t now_ns, uint32_t fresh) {
    size_t got = 0;
    for (; b && got < fresh; b = purge_victim_next(self, &k, epoch, &now_ns)) {
        if (arena_trylock(b) != 0) continue;
        size_t idle = idle_pages(b->index, epoch) + stash_idle(b, epoch);
        if (idle < live_pages(b)) { /* its live pages came back meanwhile */
            arena_unlock(b);
            continue;
        }
        size_t need = fresh - got > PURGE_MIN ? fresh - got : PURGE_MIN;
        if (idle > need) idle = need;
        size_t want = growth_purge_budget(idle);
        if (want) got += growth_purge_locked(b, want); /* drops b's lock */
        arena_unlock(b);
    }
    return got;
}

/* ---- decay ----------------------------------------------------------------------
 * Without it, a free page stays resident until _heapmin, or until a growth
 * purge wants it: a program that shrinks after a spike and never calls
 * _heapmin, nor grows again, keeps the spike's pages for good. So resident
 * free pages that stay free for dirty_decay_ms (10 s by default; jemalloc
 * has the same option and default) are given back.
 *
 * Each arena keeps the lowest value of its count of resident free pages
 * in each quarter of dirty_decay_ms (decay_low, kept by
 * resident_set_locked, for the current quarter; decay_before for the three
 * before it). When a quarter of at least dirty_decay_ms / 4 closes, the
 * lowest of the last four quarters' values -- the pages that stayed free
 * and resident through all four, at least dirty_decay_ms -- fall due, the
 * longest runs first (the growth purge's own code, which drops the lock for
 * its madvise calls); a new quarter begins with the current count. So a
 * page goes back between 1 and 1.25 times dirty_decay_ms after it was
 * freed, if ticks come often enough (one window of the full length was
 * tried first: between 1 and 2 times, 17 s for 10 s in tuning.md's demo).
 *
 * By default no thread of the allocator's own runs it (background.c has
 * the option): a thread cache's garbage collection tick (every TC_GC_EVERY
 * slow-path calls, tcache.c) calls arena_decay_tick() once it has dropped
 * its cache lock, and that looks at every arena -- an idle thread's arena
 * decays on the ticks of the threads still working.
 *
 * When nothing is due a tick costs a read of the time-stamp counter, and
 * once an epoch of the coarse clock a system call for the time and a
 * relaxed load per arena; an arena whose lock is busy is skipped until the
 * next tick. A thread cache's tick gives back at most TM_DECAY_TICK_PAGES
 * pages of all arenas together, the rest staying due for the next ticks,
 * and starts from the next arena each time, so every arena has its turn.
 * Until 2026-12-06 a tick gave back up to GROWTH_PURGE_BATCH runs an arena,
 * however long: an outside tester's server-like program (4 workers, 300
 * MiB spikes, then light traffic) saw its malloc and free calls take 10-48
 * ms of CPU each in bursts as the spike decayed, 61 calls of 5 ms or more
 * in 20 s with dirty_decay_ms:2000 (10 with the decay off, 2 for glibc);
 * madvise costs about 0.5 us a page here. The background thread, which
 * no caller waits for, gives back all that is due. Pages that are given
 * back cost a fault each when used again: -1 turns this off, 0 gives back
 * whatever stayed free since the last tick. */
static uint64_t decay_epoch; /* purge_epoch() at the last tick that read the clock */
static unsigned decay_first; /* the arena the next tick visits first */

/* Close arena i's current quarter, `spans` quarter lengths long, at `now`:
 * the lowest count of the quarters that cover the last dirty_decay_ms
 * (this one alone for dirty_decay_ms 0) falls due, and a new quarter begins
 * with the current count. A quarter that no tick closed in time -- every
 * thread idle, or every call a cache hit -- is as long as the pause, and
 * enters the history as that many quarters, up to all four (until
 * 2026-12-06 as one: the quarters before the pause then set the minimum
 * at the next close; decay_catch_up_locked has the rest). Under the
 * arena's lock. */
static void decay_close_quarter_locked(unsigned i, uint64_t now, uint64_t spans, bool whole_window) {
    const size_t low = rss[i].decay_low;
    const unsigned k = spans >= DECAY_QUARTERS ? DECAY_QUARTERS : spans ? (unsigned)spans : 1;
    size_t hist[DECAY_QUARTERS]; /* the newest first */
    for (unsigned q = 0; q < DECAY_QUARTERS; q++) hist[q] = q < k ? low : rss[i].decay_before[q - k];
    size_t due = low;
    for (unsigned q = 0; q < DECAY_QUARTERS; q++) {
        if (whole_window && hist[q] < due) due = hist[q];
        if (q < DECAY_QUARTERS - 1) RSS_STORE(i, decay_before[q], hist[q]);
    }
    /* what was due and the ticks' cap left, as far as it stayed free
     * through this quarter, stays due */
    size_t left = rss[i].decay_due < low ? rss[i].decay_due : low;
    if (left > due) due = left;
    RSS_STORE(i, decay_due, due);
    RSS_STORE(i, decay_low, rss[i].resident);
    RSS_STORE(i, decay_ns, now);
}

/* `still` resident free pages of arena i have stayed free for a whole
 * window without the count changing -- a pause in which no tick came
 * (every thread idle, or every call a cache hit), seen at the first change
 * after it, under the arena's lock. The quarter the pause left open also
 * holds the time before those pages were freed, so its low and the
 * history say fewer: they are raised to `still`, and that many fall due
 * now. Until 2026-12-06 they waited four more quarters after calls resumed
 * (an outside tester's server kept a 311 MiB spike 10 s into its light
 * traffic after a 30 s pause, then gave it back in ticks that made its
 * calls slow). */
/* True if no change of the count since the epoch whose first change was at
 * change_ns (0: none yet) can be younger than dirty_decay_ms at `now`: the
 * changes later in that epoch are not timed, so an epoch's length at most
 * (2^24 cycles of the time-stamp counter, 17 ms at 1 GHz) is added. The
 * option is read here: a window raised at run time counts at once. */
#define EPOCH_MAX_NS 20000000ull
static bool decay_quiet_since(uint64_t change_ns, uint64_t now) {
    long ms = __atomic_load_n(&tm_opt.dirty_decay_ms, __ATOMIC_RELAXED);
    return ms > 0 && change_ns && now > change_ns &&
           now - change_ns >= (uint64_t)ms * 1000000u + EPOCH_MAX_NS;
}

static void decay_catch_up_locked(unsigned i, size_t still) {
    if (still <= rss[i].decay_low) return;
    RSS_STORE(i, decay_low, still);
    for (unsigned q = 0; q < DECAY_QUARTERS - 1; q++)
        if (rss[i].decay_before[q] < still) RSS_STORE(i, decay_before[q], still);
    if (still > rss[i].decay_due) RSS_STORE(i, decay_due, still);
}

bool arena_decay_epoch_passed(void) {
    return __atomic_load_n(&decay_epoch, __ATOMIC_RELAXED) != purge_epoch();
}

size_t arena_decay_tick(size_t max_pages) {
    long ms = __atomic_load_n(&tm_opt.dirty_decay_ms, __ATOMIC_RELAXED);
    if (ms < 0) return 0;
    /* the clock once an epoch at most (4 to 17 ms), but at every tick
     * for 0; a system call, not libc's clock_gettime (os.c says why) */
    uint64_t e = purge_epoch(), seen = __atomic_load_n(&decay_epoch, __ATOMIC_RELAXED);
    if (ms > 0) { /* one thread an epoch: the one that moves it on */
        if (seen == e ||
            !__atomic_compare_exchange_n(&decay_epoch, &seen, e, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return 0;
    } else {
        __atomic_store_n(&decay_epoch, e, __ATOMIC_RELAXED);
    }
    uint64_t now = os_now_ns_raw(), quarter = (uint64_t)ms * (1000000u / DECAY_QUARTERS);
    size_t given = 0;
    unsigned n = tm_narenas, first = __atomic_fetch_add(&decay_first, 1, __ATOMIC_RELAXED) % n;
    for (unsigned j = 0; j < n; j++) {
        unsigned i = (first + j) % n;
        tm_arena_t *a = __atomic_load_n(&tm_arenas[i], __ATOMIC_ACQUIRE);
        if (!a) continue;
        uint64_t began = RSS_LOAD(i, decay_ns);
        if (RSS_LOAD(i, decay_due) < PURGE_MIN && began <= now && now - began < quarter) continue;
        if (arena_trylock(a) != 0) continue;
        began = rss[i].decay_ns;
        /* no change of the count for a whole window: the same catch-up as
         * at a change (resident_set_locked), before a quarter closes */
        if (decay_quiet_since(rss[i].change_ns, now)) decay_catch_up_locked(i, rss[i].resident);
        /* A quarter another tick began after our clock read is not
         * closed again: until 2026-12-06 began > now closed it at once,
         * and the oldest of the four quarters left the history early, so
         * pages free for three quarters of dirty_decay_ms could go back
         * (found by an outside reviewer, by reading). */
        if (began <= now && now - began >= quarter) {
            run_stash_flush_locked(a); /* counted from now on, like any free run */
            decay_close_quarter_locked(i, now, quarter ? (now - began) / quarter : 1, ms > 0);
        }
        size_t due = rss[i].decay_due;
        if (due >= PURGE_MIN && max_pages - given >= PURGE_MIN) {
            /* 0 while the lock is dropped: no other tick takes the same pages */
            RSS_STORE(i, decay_due, 0);
            const uint64_t quarter_began = rss[i].decay_ns;
            size_t got;
            /* A call gives back GROWTH_PURGE_BATCH runs at most; no call for
             * fewer than PURGE_MIN pages; and none once a thread waits for
             * the arena to settle (fork, _heapchk: arena.c), which would
             * otherwise wait for all that is due (a reviewer measured fork
             * taking 440-460 ms against 14-24 with the background thread
             * giving back 20 000 one-page runs). */
            do {
                size_t want = due < max_pages - given ? due : max_pages - given;
                got = growth_purge_locked(a, want); /* drops the lock */
                given += got;
                due -= got < due ? got : due;
            } while (got && due && max_pages - given >= PURGE_MIN && !a->settlers);
            /* what is left stays due, unless nothing more could be given
             * back (no resident run left, or the kernel refused), or a
             * tick closed a quarter while the lock was dropped: its count
             * is the newer one (this tick's used to overwrite it) */
            if (got && due && rss[i].decay_ns == quarter_began) RSS_STORE(i, decay_due, due);
        }
        arena_unlock(a);
    }
    return given;
}

/* ---- arenas left without a thread ------------------------------------------------
 * A program whose worker threads have all exited keeps their arenas' free
 * pages resident until they have been free for dirty_decay_ms and a slow
 * path of some thread then ticks the decay -- and a program back to its
 * main thread may make no such call again. So when the last thread but
 * the initial one exits (tcache.c, release_orphaned_arenas), every arena
 * left without a thread gives back at once what other threads parked in
 * its transfer cache, the empty slabs its bins keep against thrashing, and
 * all but ORPHAN_KEEP of its free pages, the longest runs first (the growth
 * purge's code, which drops the lock for its madvise calls). ORPHAN_KEEP
 * stays warm for the threads of the next burst. dirty_decay_ms:-1 (never
 * give back) turns this off too. The main thread's arena keeps its pages:
 * the main thread goes on allocating.
 *
 * Not at every exit that leaves an arena without a thread: a program that
 * runs short tasks on threads of their own, one at a time or a few at
 * once, would fault in again what each task uses (measured, a thread that
 * allocates and frees 2 MiB of 4 KiB blocks, 300 in turn while another
 * thread stays alive: 150-250 -> 2700 us a thread; glibc 5400). As it is,
 * each such thread takes over the arena the one before it left, warm
 * (arena_choose_locked), or shares the main thread's arena.
 * Measured, scripts/demo.sh, RSS once its 8 threads have exited: 20.3 ->
 * 10.9-11.4 MiB (glibc 6.1; the rest is the main thread's arena, the 1 MiB
 * kept in each of the 3 others, and metadata). At most once a second, so
 * that rounds of threads do not fault their pages in again every round
 * (tcache.c, ORPHAN_GAP_MS). */
#define ORPHAN_KEEP 256u /* pages (1 MiB) */

size_t arena_release_orphaned(tm_arena_t *a) {
    if (__atomic_load_n(&tm_opt.dirty_decay_ms, __ATOMIC_RELAXED) < 0) return 0;
    arena_release_empty_slabs(a);
    size_t got = 0;
    arena_lock(a);
    run_stash_flush_locked(a); /* counted with the rest: ORPHAN_KEEP is all it keeps */
    for (size_t res, g; (res = rss[a->index].resident) > ORPHAN_KEEP && !a->settlers; got += g)
        if (!(g = growth_purge_locked(a, res - ORPHAN_KEEP))) break; /* drops the lock */
    arena_unlock(a);
    return got;
}

/* ---- the last freed runs -----------------------------------------------------
 * A program that frees large blocks and then asks for blocks of the same
 * lengths -- a loop over 16 KiB buffers, batches of buffers of one size,
 * a producer's buffers -- had every pair pay for the run going into the
 * free-run index (merged with its neighbours, its resident bits and count
 * updated) and for carving it out again: callgrind counted 964
 * instructions a 16 KiB malloc+free pair, half of them there. So the arena
 * keeps its last TM_STASH_SLOTS freed large runs of at most STASH_MAX
 * pages, STASH_MAX pages together, as they are (a->stash, oldest first:
 * still marked PAGE_LARGE, the fast[] entry zero, as a run a purge holds
 * reads), and a run allocation of exactly one's length takes the newest
 * such. Any other run allocation first frees them all into the index, as
 * free() would have -- unless the index has a run for it resident
 * throughout -- and so does a resize in place, every purge (growth,
 * decay quarter, orphan, _heapmin) and _heapset: they never make the
 * arena carve fresh pages while it holds resident ones, and never stand
 * in the way of a block growing in place. (Until 2026-12-06 every
 * allocation of another length freed them: with random lengths none
 * stayed kept, and a block carved from the index starts where the last
 * carve ended, on a page the program may never have written. An outside
 * tester's program that replaces random blocks of 32-64 KiB among 20 000
 * and writes their first and last bytes peaked at 734 MB against
 * mimalloc's 249; 373 MB now. A kept run is a block's pages as they were,
 * its first and last page where the next block of its length writes them
 * again.) Until 2026-12-08 it kept 16 runs and 1 MiB (256 pages) at
 * most; with 64 and 4 MiB, the size sweep (bench/throughput sizes, whose
 * batches of large blocks of one length did not fit) faults in 1330
 * pages instead of 3190 with the same peak RSS and runs about a third
 * faster (1 thread: 75-78 -> 101-105 M operations/s; callgrind counts the
 * same instructions, 70.5 against 70.7 million at --scale 0.1: the
 * difference is the page faults after the growth purge gave the runs
 * back), and alloc-test (design.md) with blocks of 32-64 KiB only peaks
 * at 79 MB instead of 100 (mimalloc 29); the realloc benchmark and an
 * outside tester's vector-growth and web-server programs unchanged. A
 * free() of one again reads PAGE_LARGE with no TM_FAST_LARGE: a double
 * free, as for any freed run;
 * _heapwalk lists them free; _heapchk counts them apart from
 * large_allocated. */
#define STASH_MAX 1024u /* pages (4 MiB) */

/* Free the m runs out[], already out of a->stash, into the index. The
 * counts go first: the frees check them (run_insert_free_locked). */
static void stash_free_locked(tm_arena_t *a, const struct tm_stashed *out, unsigned m) {
    for (unsigned i = 0; i < m; i++) {
        __atomic_store_n(&a->stash_pages, a->stash_pages - out[i].n, __ATOMIC_RELAXED);
        out[i].c->stash_pages -= out[i].n;
    }
    for (unsigned i = 0; i < m; i++) run_free_locked(a, out[i].c, out[i].page, out[i].n);
}

/* The kept runs move as words with the pointer arrays' copies (internal.h:
 * not libc's memcpy/memmove), two to an entry on 64-bit targets
 * (-fno-strict-aliasing); elsewhere an entry at a time. */
#define STASH_IN_WORDS (sizeof(struct tm_stashed) == 2 * sizeof(void *))
#define STASH_WORDS(p) ((void **)(void *)(p))
static void stash_copy(struct tm_stashed *dst, const struct tm_stashed *src, unsigned n) {
    if (STASH_IN_WORDS) {
        tm_ptrs_copy(STASH_WORDS(dst), (void *const *)(const void *)src, 2 * (size_t)n);
        return;
    }
    for (unsigned i = 0; i < n; i++) dst[i] = src[i];
}

void run_stash_flush_locked(tm_arena_t *a) {
    struct tm_stashed out[TM_STASH_SLOTS];
    unsigned n = a->nstash;
    stash_copy(out, a->stash, n);
    a->nstash = 0;
    stash_free_locked(a, out, n);
}

/* A chunk is never kept from being empty by kept runs alone: an empty
 * chunk is what another arena adopts (chunk_adopt) and _heapmin unmaps,
 * and threads that take turns at bursts of large blocks, each in its own
 * arena, tripled their peak RSS when up to 16 kept runs, one in each of
 * the last burst's chunks, kept every chunk of it in its arena (an outside
 * reviewer's program: 75 -> 224 MiB). So once a chunk's other pages are
 * all free, its kept runs are freed too (run_insert_free_locked). */
static void chunk_unstash_locked(tm_arena_t *a, tm_chunk_t *c) {
    struct tm_stashed out[TM_STASH_SLOTS];
    unsigned k = 0, m = 0;
    for (unsigned i = 0; i < a->nstash; i++) {
        if (a->stash[i].c == c) out[m++] = a->stash[i];
        else a->stash[k++] = a->stash[i];
    }
    a->nstash = k;
    stash_free_locked(a, out, m);
}

/* Free the large run [page, page + n) of c, whose last page reads
 * PAGE_INTERIOR: kept with the arena's last freed runs if short enough,
 * the oldest of them freed for room. */
void run_free_large_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t n) {
    if (n > STASH_MAX) {
        run_free_locked(a, c, page, n);
        return;
    }
    if (c->free_pages + c->stash_pages + n == TM_CHUNK_PAGES) { /* the chunk's last block */
        if (c->stash_pages) chunk_unstash_locked(a, c);
        run_free_locked(a, c, page, n);
        return;
    }
    unsigned k = 0; /* the oldest ones that make room */
    for (uint32_t pages = a->stash_pages; a->nstash - k == TM_STASH_SLOTS || pages + n > STASH_MAX; k++)
        pages -= a->stash[k].n;
    if (k) {
        struct tm_stashed out[TM_STASH_SLOTS];
        stash_copy(out, a->stash, k);
        a->nstash -= k;
        stash_copy(a->stash, a->stash + k, a->nstash); /* forward: dst below src */
        /* (a chunk's free and kept pages together stay as they were, so
         * no chunk empties here, c included) */
        stash_free_locked(a, out, k);
    }
    /* atomic: as in run_free_locked */
    __atomic_store_n(&c->fast[page], 0, __ATOMIC_RELAXED);
    a->stash[a->nstash++] = (struct tm_stashed){c, page, n};
    __atomic_store_n(&a->stash_pages, a->stash_pages + n, __ATOMIC_RELAXED);
    __atomic_store_n(&a->stash_epoch, purge_epoch(), __ATOMIC_RELAXED);
    c->stash_pages += n;
}

/* The newest of the last freed runs that is npages long, out of the stash
 * and reading as a carved run does (every page PAGE_INTERIOR; its last one
 * is), or NULL. */
static tm_chunk_t *run_stash_take_locked(tm_arena_t *a, uint32_t npages, uint32_t *page_out) {
    for (unsigned i = a->nstash; i-- > 0;) {
        if (a->stash[i].n != npages) continue;
        tm_chunk_t *c = a->stash[i].c;
        *page_out = a->stash[i].page;
        __atomic_store_n(&a->stash_pages, a->stash_pages - npages, __ATOMIC_RELAXED);
        c->stash_pages -= npages;
        for (unsigned last = --a->nstash; i < last; i++) a->stash[i] = a->stash[i + 1];
        page_set_kind(&c->pages[*page_out], PAGE_INTERIOR);
        /* Its pages were a block's, so they may be resident, whatever
         * their bits said before that block was carved: a slab made of
         * them is purged by those bits and counted by them (until
         * 2026-12-06 a slab cut from a kept run that had been carved from
         * fresh pages kept them out of _heapmin's reach and out of the
         * resident statistic; an outside reviewer). A large block's bits
         * are set again when it is freed (run_free_locked). */
        chunk_resident_set(c, *page_out, npages, true);
        return c;
    }
    return NULL;
}

/* The first page at or after `page` of c aligned to align_pages. */
static uint32_t run_aligned_start(tm_chunk_t *c, uint32_t page, size_t align_pages) {
    if (align_pages <= 1) return page;
    uintptr_t addr = chunk_page_addr(c, page), al = align_pages << TM_PAGE_SHIFT;
    return (uint32_t)((((addr + al - 1) & ~(al - 1)) - c->base) >> TM_PAGE_SHIFT);
}

/* Whether the free run run_alloc_locked would carve npages aligned to
 * align_pages out of (need pages with the alignment's slack) may be
 * resident on every page the block takes. */
static bool index_fit_resident_locked(tm_arena_t *a, size_t need, size_t npages, size_t align_pages) {
    uint32_t len = need <= TM_CHUNK_PAGES ? runs_find_locked(a, (uint32_t)need) : 0;
    if (!len) return false;
    tm_page_t *h = a->runs[len];
    tm_chunk_t *c = page_chunk(h);
    uint32_t start = run_aligned_start(c, chunk_page_index(c, h), align_pages);
    return chunk_resident_count(c, start, (uint32_t)npages) == npages;
}

/* Carve npages aligned to align_pages out of the best-fitting free run.
 * May drop and retake the lock for a growth purge, as growing the arena
 * does; the run it chose is held meanwhile, so the purge never makes it
 * fail. */
tm_chunk_t *run_alloc_locked(tm_arena_t *a, size_t npages, size_t align_pages,
                             uint32_t *page_out, bool *zeroed_out) {
    size_t need = npages + (align_pages > 1 ? align_pages - 1 : 0);
    if (a->nstash) {
        /* (page alignment is every run's) */
        tm_chunk_t *sc = align_pages <= 1 ? run_stash_take_locked(a, (uint32_t)npages, page_out) : NULL;
        if (sc) {
            *zeroed_out = false;
            return sc;
        }
        /* a run of another length: carved from the index, with the kept
         * runs freed into it first unless it has a fit resident throughout */
        if (!index_fit_resident_locked(a, need, npages, align_pages)) run_stash_flush_locked(a);
    }
    if (need > TM_CHUNK_PAGES) return NULL;
    tm_page_t *h;
    tm_chunk_t *c;
    uint32_t len, page, start, resident;
    bool dropped = false; /* the lock was, for a purge: a neighbour may be free now */
    for (bool may_purge = true;; may_purge = false) {
        len = runs_find_locked(a, (uint32_t)need);
        if (!len) return NULL;
        h = a->runs[len];
        c = page_chunk(h);
        page = chunk_page_index(c, h);
        start = run_aligned_start(c, page, align_pages);
        resident = chunk_resident_count(c, start, (uint32_t)npages);
        runs_index_remove_locked(a, h);
        if (!may_purge || resident == npages) break;
        uint32_t fresh = (uint32_t)npages - resident;
        size_t idle = rss[a->index].resident ? rss[a->index].resident - chunk_resident_count(c, page, len) : 0;
        size_t want = growth_purge_pages_locked(a, fresh, idle);
        unsigned k = 0;
        uint64_t epoch = purge_epoch(), now_ns = 0;
        RSS_STORE(a->index, fresh_epoch, epoch);
        tm_arena_t *victim = purge_victim_next(a->index, &k, epoch, &now_ns);
        if (!want && !victim) break;
        /* held while the lock is dropped, the run is no free run: its
         * resident pages are counted again when it is one */
        resident_sub_locked(a, chunk_resident_count(c, page, len));
        run_hold_locked(a, c, page, len);
        arena_dropped_enter(a);
        dropped = true;
        size_t got = want ? growth_purge_locked(a, want) : 0; /* drops the lock */
        if (victim && got < fresh) {
            arena_unlock(a);
            growth_purge_others(a->index, victim, k, epoch, now_ns, fresh - (uint32_t)got);
            arena_lock(a);
        }
        arena_dropped_leave(a);
        if (run_still_held(c, page, len)) {
            run_unhold_locked(a, c, page, len);
            resident_add_locked(a, chunk_resident_count(c, page, len));
            resident = chunk_resident_count(c, start, (uint32_t)npages);
            break;
        }
        run_hold_end_locked(a, c, page, len);
    }
    /* Only a run's ends carry a kind (types.h): with the free run's ends
     * cleared, every page of the new run reads PAGE_INTERIOR, and the
     * caller marks its ends (_heapchk checks the interior) */
    bool zeroed = h->zeroed, dirty = h->dirty;
    page_set_kind(h, PAGE_INTERIOR);
    page_set_kind(&c->pages[page + len - 1], PAGE_INTERIOR);
    uint32_t end = start + (uint32_t)npages, rend = page + len;
    if (unlikely(dropped)) {
        if (start > page) run_insert_free_locked(a, c, page, start - page, zeroed, dirty);
        if (rend > end) run_insert_free_locked(a, c, end, rend - end, zeroed, dirty);
    } else {
        if (start > page) run_free_as_is_locked(a, c, page, start - page, zeroed, dirty);
        if (rend > end) run_free_as_is_locked(a, c, end, rend - end, zeroed, dirty);
    }
    resident_sub_locked(a, resident);
    free_pages_sub_locked(a, c, (uint32_t)npages);
    *page_out = start;
    *zeroed_out = zeroed;
    return c;
}

/* Free the run [page, page + npages), whose fast[] entries are 0 but the
 * first's (a slab clears the others first, slab_destroy_locked; a large
 * block has no other). */
void run_free_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t npages) {
    /* atomic: a large block's first entry is also written without the lock
     * (tcache_free_large), if only by a bad concurrent free */
    __atomic_store_n(&c->fast[page], 0, __ATOMIC_RELAXED);
    chunk_resident_set(c, page, npages, true);
    resident_add_locked(a, npages);
    free_pages_add_locked(a, c, npages);
    run_insert_free_locked(a, c, page, npages, false, true);
}

bool run_try_grow_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t npages,
                         uint32_t new_npages) {
    uint32_t end = page + npages, extra = new_npages - npages;
    if (end >= TM_CHUNK_PAGES) return false;
    tm_page_t *rh = &c->pages[end];
    if (rh->kind != PAGE_FREE || rh->npages < extra) return false;
    uint32_t rn = rh->npages;
    bool zeroed = rh->zeroed, dirty = rh->dirty;
    runs_index_remove_locked(a, rh);
    page_set_kind(rh, PAGE_INTERIOR);
    page_set_kind(&c->pages[end + rn - 1], PAGE_INTERIOR);
    if (rn > extra) run_free_as_is_locked(a, c, end + extra, rn - extra, zeroed, dirty);
    resident_sub_locked(a, chunk_resident_count(c, end, extra));
    page_set_kind(&c->pages[page + npages - 1], PAGE_INTERIOR);
    run_mark(c, page, new_npages, PAGE_LARGE);
    free_pages_sub_locked(a, c, extra);
    return true;
}

void run_shrink_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t npages,
                       uint32_t new_npages) {
    page_set_kind(&c->pages[page + npages - 1], PAGE_INTERIOR);
    run_mark(c, page, new_npages, PAGE_LARGE);
    run_free_locked(a, c, page + new_npages, npages - new_npages);
}

/* ---- the slab pool -----------------------------------------------------------
 * A chunk's slab descriptors are slots of chunk_t.slabs, whose pages start
 * with the chunk's header. A new slab takes the lowest free slot, and
 * _heapmin moves live descriptors down into the lowest slots
 * (arena_compact_slabs) and then gives back every pool page above the last
 * one in use, so a chunk with a few live slabs keeps one or two pool pages
 * resident however many slabs it once had. slab_hwm bounds what a give-back
 * has to cover: no slot at or above it was used since the last one.
 *
 * The give-back drops the lock for its madvise, and a page being given
 * back must not be written meanwhile: its pages are marked in slab_busy,
 * and no slot on them is handed out. A slab made in that chunk meanwhile
 * takes a free slot below them; only if there is none (every slot below
 * in use) does it wait, holding its run as PAGE_UNUSED, for the give-back
 * to end. */
_Static_assert(offsetof(tm_chunk_t, pages) % TM_PAGE == 0, "page entries start a page");
_Static_assert(offsetof(tm_chunk_t, links) % TM_PAGE == 0, "links start a page");
_Static_assert(offsetof(tm_chunk_t, base) % TM_PAGE == 0, "the header starts a page");
_Static_assert(sizeof(tm_page_t) == 4 && sizeof(tm_slab_t) == 64, "descriptor sizes");
_Static_assert(sizeof(((tm_chunk_t *)0)->pages) == TM_PAGE, "page entries fill their page");
_Static_assert(sizeof(tm_chunk_t) > 65536, "a chunk descriptor has a mapping of its own (meta.c)");

/* Pool page (counted from the header's page) that holds slot s. */
static uint32_t pool_page(uint32_t s) {
    return (uint32_t)((offsetof(tm_chunk_t, slabs) - offsetof(tm_chunk_t, base) +
                       (size_t)s * sizeof(tm_slab_t)) >> TM_PAGE_SHIFT);
}
_Static_assert(((offsetof(tm_chunk_t, slabs) - offsetof(tm_chunk_t, base) +
                 TM_CHUNK_PAGES * sizeof(tm_slab_t)) >> TM_PAGE_SHIFT) < 32,
               "slab_busy has a bit per pool page");

/* The lowest free slot not on a page being given back, or -1. */
static int32_t slot_find(const tm_chunk_t *c) {
    for (uint32_t w = 0; w < TM_CHUNK_PAGES / 64; w++) {
        for (uint64_t f = ~c->slab_used[w]; f; f &= f - 1) {
            uint32_t s = w * 64 + (uint32_t)__builtin_ctzll(f);
            if (!((c->slab_busy >> pool_page(s)) & 1)) return (int32_t)s;
        }
    }
    return -1;
}

uint32_t chunk_slot_take_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t npages) {
    int32_t s = slot_find(c);
    if (unlikely(s < 0)) {
        /* a run was just carved, so fewer than TM_CHUNK_PAGES slabs live:
         * the free slots are all on pages being given back */
        tm_assert(c->slab_busy != 0);
        run_mark(c, page, npages, PAGE_UNUSED); /* no free merges into it */
        /* counted as a dropped section: fork and _heapchk wait for it
         * (until 2026-12-05 they did not: a child kept the run PAGE_UNUSED
         * for good, and _heapchk reported it as a broken node) */
        arena_dropped_enter(a);
        /* blocks until the release wakes it, with cancellation off (as
         * arena_lock_settled): until 2026-12-06 this loop yielded, and a
         * SCHED_FIFO thread here kept a lower-priority _heapmin on its CPU
         * from ever finishing the release (an outside tester, with a delay
         * added to the release to widen the window: 1-1.3 s stalls, bounded
         * only by the kernel's real-time throttling) */
        int cancel;
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
        while ((s = slot_find(c)) < 0) arena_wait_undropped(a);
        pthread_setcancelstate(cancel, NULL);
        arena_dropped_leave(a);
    }
    c->slab_used[s >> 6] |= 1ull << (s & 63);
    c->nslabs++;
    if ((uint32_t)s >= c->slab_hwm) c->slab_hwm = (uint16_t)(s + 1);
    return (uint32_t)s;
}

void chunk_slot_put_locked(tm_chunk_t *c, uint32_t slot) {
    tm_assert((c->slab_used[slot >> 6] >> (slot & 63)) & 1);
    c->slab_used[slot >> 6] &= ~(1ull << (slot & 63));
    c->nslabs--;
}

void chunk_slab_pool_done_locked(tm_arena_t *a, tm_chunk_t *c) {
    c->slab_busy = 0;
    pthread_cond_broadcast(&a->undropped); /* a chunk_slot_take_locked waiting */
}

size_t chunk_slab_pool_release_locked(tm_arena_t *a, tm_chunk_t *c) {
    uint32_t k = c->nslabs, hwm = c->slab_hwm;
    if (TM_DEBUG >= 1)
        for (uint32_t s = k; s < TM_CHUNK_PAGES; s++)
            tm_assert(!((c->slab_used[s >> 6] >> (s & 63)) & 1));
    if (hwm <= k) return 0;
    /* whole pages from the one after slot k - 1's to the end of slot hwm - 1's;
     * the mapping is whole pages, so the last one is inside it */
    uintptr_t lo = ((uintptr_t)&c->slabs[k] + TM_PAGE_MASK) & ~(uintptr_t)TM_PAGE_MASK;
    uintptr_t hi = ((uintptr_t)&c->slabs[hwm] + TM_PAGE_MASK) & ~(uintptr_t)TM_PAGE_MASK;
    c->slab_hwm = (uint16_t)k;
    if (hi <= lo) return 0;
    uintptr_t pool = (uintptr_t)&c->base;
    uint32_t p0 = (uint32_t)((lo - pool) >> TM_PAGE_SHIFT), p1 = (uint32_t)((hi - pool) >> TM_PAGE_SHIFT);
    c->slab_busy = (uint32_t)(((1ull << p1) - 1) & ~((1ull << p0) - 1));
    arena_unlock(a);
    size_t released = os_purge_inside((void *)lo, (void *)hi);
    arena_lock(a);
    chunk_slab_pool_done_locked(a, c);
    if (!released && hwm > c->slab_hwm) c->slab_hwm = (uint16_t)hwm; /* refused: still there */
    return released;
}

/* ---- chunk lifetime ------------------------------------------------------- */

/* A chunk's descriptor and pagemap entry for the chunk-aligned mapping
 * mem; on failure the mapping goes back (counted as released if it was
 * counted as mapped before: one taken from the huge cache). */
static tm_chunk_t *chunk_make(tm_arena_t *a, void *mem, bool reused) {
    /* Slabs and runs are carved, purged and faulted in 4 KiB at a time; a
     * transparent huge page would make 2 MiB resident for the first block
     * and bring purged pages back behind _heapmin's back (os.c). The thp
     * option trades that for fewer faults and TLB misses (options.md). */
    long thp = __atomic_load_n(&tm_opt.thp, __ATOMIC_RELAXED); /* settable at run time */
    if (thp != 1) os_huge_pages(mem, TM_CHUNK, thp == 2);
    tm_chunk_t *c = meta_alloc(sizeof(tm_chunk_t));
    if (c) {
        c->base = (uintptr_t)mem;
        c->arena = a;
        c->thp = thp != 0;
        if (pagemap_set(c->base, (uintptr_t)c | 1) == 0) return c;
        meta_free(c, sizeof *c);
    }
    if (os_unmap(mem, TM_CHUNK) == 0 && reused) stats_add_released(TM_CHUNK);
    return NULL;
}

tm_chunk_t *chunk_create(tm_arena_t *a) {
    void *mem = os_map_aligned(TM_CHUNK, TM_CHUNK);
    if (!mem && heapmin_release_for_retry()) mem = os_map_aligned(TM_CHUNK, TM_CHUNK);
    return mem ? chunk_make(a, mem, false) : NULL;
}

tm_chunk_t *chunk_from_huge_cache(tm_arena_t *a) {
    void *mem = huge_take_chunk();
    return mem ? chunk_make(a, mem, true) : NULL;
}

/* Put empty chunk c, whose one free run is marked, in a's list and index. */
static void chunk_link_locked(tm_arena_t *a, tm_chunk_t *c) {
    c->arena = a;
    c->next = a->chunks;
    c->prev = NULL;
    if (a->chunks) a->chunks->prev = c;
    a->chunks = c;
    a->nchunks++;
    __atomic_store_n(&a->nempty, a->nempty + 1, __ATOMIC_RELAXED);
    runs_index_insert_locked(a, c, &c->pages[0]);
}

void chunk_attach_locked(tm_arena_t *a, tm_chunk_t *c) {
    c->free_pages = TM_CHUNK_PAGES;
    run_mark(c, 0, TM_CHUNK_PAGES, PAGE_FREE);
    page_set_flags(&c->pages[0], true, false);
    chunk_link_locked(a, c);
}

/* Attach empty chunk c, whose one free run is marked, with old bytes on
 * its pages: every page resident (an upper bound) and dirty, so the decay
 * and the purges count and give them back, and none zeroed, so calloc
 * clears what it hands out. A chunk the kernel would not unmap
 * (arena_purge), or one taken from the huge cache. */
static void chunk_attach_dirty_locked(tm_arena_t *a, tm_chunk_t *c) {
    page_set_flags(&c->pages[0], false, true);
    chunk_resident_set(c, 0, TM_CHUNK_PAGES, true);
    chunk_attach_as_is_locked(a, c);
}

/* Its pages held a huge block's bytes, and those in memory stay. */
void chunk_attach_reused_locked(tm_arena_t *a, tm_chunk_t *c) {
    c->free_pages = TM_CHUNK_PAGES;
    run_mark(c, 0, TM_CHUNK_PAGES, PAGE_FREE);
    chunk_attach_dirty_locked(a, c);
}

void chunk_detach_locked(tm_arena_t *a, tm_chunk_t *c) {
    tm_assert(c->free_pages == TM_CHUNK_PAGES);
    runs_index_remove_locked(a, &c->pages[0]);
    resident_sub_locked(a, chunk_resident_count(c, 0, TM_CHUNK_PAGES));
    if (c->prev) c->prev->next = c->next;
    else a->chunks = c->next;
    if (c->next) c->next->prev = c->prev;
    a->nchunks--;
    __atomic_store_n(&a->nempty, a->nempty - 1, __ATOMIC_RELAXED);
}

/* ---- empty chunks move to the arena that grows --------------------------------
 * Each thread's arena grows on its own. When threads take turns at a burst
 * -- each allocates, frees everything, hands over to the next -- every
 * arena ends up holding a burst's worth of empty, resident chunks, and the
 * growth purge of other arenas gives back only what the budget allows:
 * an outside tester's 4 threads taking turns at 200 MiB bursts of 8-64 KiB
 * blocks peaked at 928 MiB, where tcmalloc, with one page heap for all
 * threads, took 272 (2026-12-06; 240 since). So an arena that must grow
 * first takes an empty chunk of another arena, the one with the most
 * resident pages found: no mapping, no page faults for the pages still
 * resident, and the donor's resident free pages go with it (a purged one
 * still saves the mapping). They are no working set of the donor's that a
 * purge would cost faults: the donor, growing again, takes one back the
 * same way. (Bursts of small blocks leave few chunks empty: the blocks the
 * caches keep are spread over all of them.) Only under the trim lock,
 * taken with a trylock (arena_purge, _heapchk and _heapwalk walk an
 * arena's chunks with its lock dropped and rely on no chunk leaving
 * meanwhile), and each donor's lock with a trylock with the growing
 * arena's lock dropped: no two arena locks are held together. A donor is
 * looked at only if it counts an empty chunk (nempty, read without its
 * lock), and the walk of its chunks stops at the ADOPT_SCAN-th empty one
 * (a fully resident one at once). */
#define ADOPT_SCAN 64

tm_chunk_t *chunk_adopt(tm_arena_t *a) {
    unsigned n = tm_narenas;
    if (n < 2 || !heapmin_trylock()) return NULL;
    tm_chunk_t *got = NULL;
    for (unsigned k = 1; k < n && !got; k++) {
        unsigned i = (a->index + k) % n;
        tm_arena_t *b = __atomic_load_n(&tm_arenas[i], __ATOMIC_ACQUIRE);
        if (!b || !__atomic_load_n(&b->nempty, __ATOMIC_RELAXED) || arena_trylock(b) != 0)
            continue;
        /* the empty chunk with the most resident pages of the first
         * ADOPT_SCAN empty ones */
        uint32_t best = 0;
        unsigned seen = 0;
        for (tm_chunk_t *c = b->chunks; c && seen < ADOPT_SCAN && best < TM_CHUNK_PAGES; c = c->next) {
            if (c->free_pages != TM_CHUNK_PAGES) continue;
            uint32_t r = chunk_resident_count(c, 0, TM_CHUNK_PAGES);
            if (!got || r > best) best = r, got = c;
            seen++;
        }
        if (got) chunk_detach_locked(b, got);
        arena_unlock(b);
    }
    heapmin_unlock();
    return got;
}

/* Attach chunk c, detached empty (by chunk_adopt from another arena, or by
 * arena_purge when the kernel refused to unmap it), as it is: its one free
 * run keeps its zeroed and dirty flags and its pages their resident bits. */
void chunk_attach_as_is_locked(tm_arena_t *a, tm_chunk_t *c) {
    chunk_link_locked(a, c);
    resident_add_locked(a, chunk_resident_count(c, 0, TM_CHUNK_PAGES));
}

bool chunk_destroy(tm_chunk_t *c) {
    pagemap_clear(c->base);
    if (os_unmap((void *)c->base, TM_CHUNK) != 0) {
        pagemap_set(c->base, (uintptr_t)c | 1); /* still ours: put it back */
        return false;
    }
    stats_add_released(TM_CHUNK);
    meta_free(c, sizeof *c);
    return true;
}

/* Give back the pages of chunk c's descriptor that describe only the free
 * run [page, page + n), which arena_purge holds out of the index and has
 * just purged: the page entries strictly inside the run (its first and
 * last entries carry its length, which walks read while it is held) and
 * the links that belong to its pages alone (links[i] serves pages 2i and
 * 2i + 1). Until the run is put back nobody reads or writes them -- no slab
 * or large block is cut from a run out of the index, and a neighbour freed
 * meanwhile looks only at the run's end entries and its own links -- so
 * the madvise needs no lock. They read zero afterwards, which is what they
 * hold once the run is back: an interior entry is PAGE_INTERIOR (0), and
 * links are written when a run is put in the index. Entries of live runs are never given back,
 * even those that describe nothing: a large block shrunk in place, or a
 * freed slab's run cut again, would write them while the lock is dropped.
 * (Slab descriptors are not per page: see the slab pool.) Best effort: a
 * refusal leaves them as they were. */
static void run_purge_descriptor(os_batch_t *b, tm_chunk_t *c, uint32_t page, uint32_t n) {
    os_batch_add(b, &c->pages[page + 1], &c->pages[page + n - 1]);
    os_batch_add(b, &c->links[(page + 1) >> 1], &c->links[(page + n) >> 1]);
}


/* ---- purge ------------------------------------------------------------------
 * Under the lock, take dirty free runs out of the index (their first/last
 * page marked PAGE_UNUSED so neighbours do not merge into them) and detach
 * empty chunks; drop the lock for the madvise/munmap calls -- the runs'
 * pages, and the descriptor pages that describe only them -- then take the
 * lock again to put the purged runs back, zeroed and clean. Repeats in
 * batches until nothing dirty is left. No lock is held across a system
 * call.
 *
 * A growth purge (the decay, an arena about to grow, one left without a
 * thread) holds the runs it gives back as large blocks while it has the
 * lock dropped (growth_purge_locked), and gives back only as many pages as
 * it wants, from the runs' ends: a purge that walked past them left the
 * rest dirty and their chunks, empty once they came back, mapped. An
 * outside tester's loop (workers free 240 MiB, then _heapmin with the
 * background thread's decay at 5 ms) found 4 MiB dirty and 9 empty chunks
 * after 1-5 calls in 30 (2026-12-06). So with `settle` (_heapmin,
 * malloc_trim) it waits for the sections that dropped the lock
 * (as _heapchk does, but PURGE_SETTLE_MS at most: arena_settle_locked)
 * before it starts, and if one is under way when it finds nothing left,
 * waits and walks the arena again (PURGE_RESCANS times at most: sections
 * that keep starting cannot hold it for good). Not for a failed mapping's retry (heapmin_release_for_retry),
 * which may come from inside such a section of its own. */
#define PURGE_BATCH 64
#define PURGE_RESCANS 4
#define PURGE_SETTLE_MS 250 /* each wait at most: sections that keep overlapping (arena.c) */

size_t arena_purge(tm_arena_t *a, bool settle, unsigned *failures) {
    size_t released = 0;
    unsigned rescans = 0;
    arena_release_empty_slabs(a); /* holds of its own: it walks every bin */
    /* Each round goes on where the last one stopped -- chunk c, its pages
     * from `from` on -- instead of walking again, under the lock, the runs
     * it already made clean. c stays valid while the lock is dropped:
     * chunks are detached only here, and callers hold the trim lock. */
    tm_chunk_t *c = NULL;
    uint32_t from = 0;
    for (int round = 0; round < 1 << 16; round++) {
        struct {
            tm_chunk_t *c;
            uint32_t page, n; /* the run out of the index */
            uint32_t lo, hi, r; /* purge [lo, hi), which holds its r resident pages */
        } runs[PURGE_BATCH];
        tm_chunk_t *empty[PURGE_BATCH];
        int nruns = 0, nempty = 0;
        arena_lock(a);
        if (round == 0) {
            if (settle) arena_settle_locked(a, PURGE_SETTLE_MS);
            c = a->chunks;
            run_stash_flush_locked(a);
        }
    walk:
        while (c && nruns < PURGE_BATCH && nempty < PURGE_BATCH) {
            tm_chunk_t *next = c->next;
            if (c->free_pages == TM_CHUNK_PAGES) {
                chunk_detach_locked(a, c);
                empty[nempty++] = c;
                c = next;
                from = 0;
                continue;
            }
            uint32_t p = 0; /* run heads are found from the chunk's first page */
            while (p < TM_CHUNK_PAGES && nruns < PURGE_BATCH) {
                tm_page_t *h = &c->pages[p]; /* always a run's first page */
                uint32_t n = h->npages;
                tm_assert(n >= 1);
                if (p >= from && h->kind == PAGE_FREE && h->dirty) {
                    runs_index_remove_locked(a, h);
                    uint32_t r = chunk_resident_count(c, p, n), lo = p, hi = p;
                    resident_sub_locked(a, r);
                    /* only the pages that may be resident (a run freed next
                     * to a purged one is dirty as a whole); the whole run
                     * where the kernel may back it with huge pages, which
                     * hold pages trimalloc never touched (counted as
                     * released are still the r pages: a lower bound there) */
                    if (r && c->thp) hi = p + n;
                    else if (r) resident_span(c, p, n, &lo, &hi);
                    page_set_kind(h, PAGE_UNUSED);
                    page_set_kind(&c->pages[p + n - 1], PAGE_UNUSED);
                    runs[nruns].c = c;
                    runs[nruns].page = p;
                    runs[nruns].n = n;
                    runs[nruns].lo = lo;
                    runs[nruns].hi = hi;
                    runs[nruns].r = r;
                    nruns++;
                }
                p += n;
            }
            if (p < TM_CHUNK_PAGES) { /* the batch is full: the rest of c next round */
                from = p;
                break;
            }
            c = next;
            from = 0;
        }
        if (nruns == 0 && nempty == 0 && settle && a->dropped && rescans < PURGE_RESCANS) {
            arena_settle_locked(a, PURGE_SETTLE_MS); /* the runs it held are back: walk again */
            rescans++;
            c = a->chunks;
            from = 0;
            run_stash_flush_locked(a);
            goto walk;
        }
        arena_unlock(a);
        if (nruns == 0 && nempty == 0) break;
        int kept = 0;
        for (int i = 0; i < nempty; i++) {
            if (chunk_destroy(empty[i])) released += TM_CHUNK;
            else empty[kept++] = empty[i];
        }
        /* a run with no resident page needs no call: it is clean as it is */
        bool purged[PURGE_BATCH], done[PURGE_BATCH];
        os_range_t ranges[PURGE_BATCH];
        unsigned nranges = 0;
        for (int i = 0; i < nruns; i++) {
            if (runs[i].lo == runs[i].hi) continue;
            ranges[nranges].base = (void *)chunk_page_addr(runs[i].c, runs[i].lo);
            ranges[nranges++].len = (size_t)(runs[i].hi - runs[i].lo) << TM_PAGE_SHIFT;
        }
        os_purge_ranges(ranges, nranges, done);
        size_t bytes = 0; /* the resident pages given back: the span's others were not */
        for (int i = 0, k = 0; i < nruns; i++) {
            purged[i] = runs[i].lo == runs[i].hi || done[k++];
            if (purged[i]) bytes += (size_t)runs[i].r << TM_PAGE_SHIFT;
        }
        released += bytes;
        stats_add_released(bytes);
        os_batch_t desc = {.n = 0, .released = 0}; /* metadata: not counted */
        for (int i = 0; i < nruns; i++)
            if (purged[i] && runs[i].r) run_purge_descriptor(&desc, runs[i].c, runs[i].page, runs[i].n);
        os_batch_flush(&desc);
        unsigned failed = (unsigned)kept;
        for (int i = 0; i < nruns; i++) failed += !purged[i];
        if (nruns || kept) {
            arena_lock(a);
            for (int i = 0; i < kept; i++) /* munmap refused: contents stay */
                chunk_attach_dirty_locked(a, empty[i]);
            /* a run the kernel would not purge keeps its dirty bytes */
            for (int i = 0; i < nruns; i++) {
                chunk_resident_set(runs[i].c, runs[i].page, runs[i].n, !purged[i]);
                if (!purged[i]) resident_add_locked(a, runs[i].n); /* each page may hold data */
                run_insert_free_locked(a, runs[i].c, runs[i].page, runs[i].n, purged[i],
                                       !purged[i]);
            }
            arena_unlock(a);
        }
        if (failures) *failures += failed;
        if (failed) break; /* the kernel refuses: do not spin on the same runs */
    }
    return released;
}
