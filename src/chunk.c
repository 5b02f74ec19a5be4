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
 * and the growth purge's budget (below); one cache line each, as arenas
 * exist to keep threads off each other's lines. */
static struct {
    _Alignas(64) size_t resident; /* pages of free runs with the resident bit set */
    size_t credit;                /* pages the growth purge may still release */
    uint64_t credit_ns;           /* when credit was last topped up */
} rss[TM_MAX_ARENAS];

/* Bits [lo, hi) of a 64-bit word, 0 <= lo < hi <= 64. */
static uint64_t bits_mask(uint32_t lo, uint32_t hi) {
    return (hi == 64 ? ~0ull : (1ull << hi) - 1) & (~0ull << lo);
}

static uint32_t count_resident(const tm_chunk_t *c, uint32_t page, uint32_t n) {
    uint32_t r = 0;
    for (uint32_t end = page + n, next; page < end; page = next) {
        next = (page | 63) + 1 < end ? (page | 63) + 1 : end;
        r += (uint32_t)__builtin_popcountll(c->resident[page >> 6] &
                                            bits_mask(page & 63, next - (page & ~63u)));
    }
    return r;
}

static void set_resident(tm_chunk_t *c, uint32_t page, uint32_t n, bool bit) {
    for (uint32_t end = page + n, next; page < end; page = next) {
        next = (page | 63) + 1 < end ? (page | 63) + 1 : end;
        uint64_t m = bits_mask(page & 63, next - (page & ~63u));
        if (bit) c->resident[page >> 6] |= m;
        else c->resident[page >> 6] &= ~m;
    }
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
}

void runs_index_remove_locked(tm_arena_t *a, tm_page_t *head) {
    uint32_t n = head->npages;
    tm_run_link_t *l = page_link(head);
    if (l->prev) page_link(l->prev)->next = l->next;
    else a->runs[n] = l->next;
    if (l->next) page_link(l->next)->prev = l->prev;
    if (!a->runs[n]) a->runs_nonempty[n >> 6] &= ~(1ull << (n & 63));
    l->next = l->prev = NULL;
}

/* Smallest non-empty length >= n, or 0. */
static uint32_t runs_find_locked(tm_arena_t *a, uint32_t n) {
    if (n > TM_CHUNK_PAGES) return 0;
    uint32_t w = n >> 6;
    uint64_t bits = a->runs_nonempty[w] & (~0ull << (n & 63));
    for (;;) {
        if (bits) return w * 64 + (uint32_t)__builtin_ctzll(bits);
        if (++w >= sizeof a->runs_nonempty / sizeof a->runs_nonempty[0]) return 0;
        bits = a->runs_nonempty[w];
    }
}

static void run_mark(tm_chunk_t *c, uint32_t page, uint32_t n, uint8_t kind) {
    tm_page_t *h = &c->pages[page];
    h->kind = kind;
    h->npages = n;
    if (n > 1) {
        tm_page_t *t = &c->pages[page + n - 1];
        t->kind = kind == PAGE_FREE ? PAGE_FREE : PAGE_INTERIOR;
        t->npages = n;
    }
}

/* Put [page, page+n) back as free, merging with free neighbours. */
static void run_insert_free_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t n,
                                   bool zeroed, bool dirty) {
    /* The run's own first and last page become interior pages if it merges:
     * no stale PAGE_LARGE/PAGE_SLAB may stay inside a free run, or a double
     * free of the old block would look valid. run_mark sets the new ends. */
    c->pages[page].kind = PAGE_INTERIOR;
    c->pages[page + n - 1].kind = PAGE_INTERIOR;
    if (page > 0) {
        tm_page_t *left_tail = &c->pages[page - 1];
        if (left_tail->kind == PAGE_FREE) {
            uint32_t ln = left_tail->npages;
            tm_page_t *lh = &c->pages[page - ln];
            runs_index_remove_locked(a, lh);
            zeroed = zeroed && lh->zeroed;
            dirty = dirty || lh->dirty;
            lh->kind = PAGE_INTERIOR;
            left_tail->kind = PAGE_INTERIOR;
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
            rh->kind = PAGE_INTERIOR;
            c->pages[page + n + rn - 1].kind = PAGE_INTERIOR;
            n += rn;
        }
    }
    run_mark(c, page, n, PAGE_FREE);
    tm_page_t *h = &c->pages[page];
    h->zeroed = zeroed;
    h->dirty = dirty;
    runs_index_insert_locked(a, c, h);
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
 * The cost is a fault for each released page that is used again, and the
 * madvise itself (about 2.4 us a page on the 2-core VM, several times that
 * with many threads, whose TLBs the madvise must shoot down). A budget per
 * arena bounds it whatever the program does: PURGE_BURST pages at once,
 * then PURGE_RATE pages a second, so a footprint that keeps changing shape
 * costs a few milliseconds a second at most. */
#define PURGE_MIN 64u          /* pages (256 KiB) */
#define GROWTH_BIG 64u         /* fresh pages (256 KiB) */
#define PURGE_RATE 256u        /* pages a second (1 MiB/s) */
#define PURGE_BURST 4096u      /* pages (16 MiB) */
#define GROWTH_PURGE_BATCH 64  /* runs per purge */

static size_t active_pages_locked(const tm_arena_t *a) {
    size_t free_pages = 0;
    for (const tm_chunk_t *c = a->chunks; c; c = c->next) free_pages += c->free_pages;
    return a->nchunks * TM_CHUNK_PAGES - free_pages;
}

/* How many idle pages to give back before faulting in `fresh` pages while
 * `idle` resident free pages lie elsewhere; 0 for none. */
static size_t growth_purge_pages_locked(tm_arena_t *a, uint32_t fresh, size_t idle) {
    if (idle < PURGE_MIN) return 0;
    /* the budget; clock_gettime(CLOCK_MONOTONIC) is a vDSO call, not a
     * system call */
    uint64_t now = os_now_ns();
    uint64_t earned = (now - rss[a->index].credit_ns) / (1000000000u / PURGE_RATE);
    size_t credit = rss[a->index].credit;
    if (earned) {
        credit = earned >= PURGE_BURST - credit ? PURGE_BURST : credit + (size_t)earned;
        rss[a->index].credit = credit;
        rss[a->index].credit_ns = now;
    }
    if (credit < PURGE_MIN) return 0;
    if (fresh < GROWTH_BIG && idle < active_pages_locked(a)) return 0;
    return idle < credit ? idle : credit;
}

/* Take the run at `page` of c out of the free state into the one that
 * walkers read as a large block the allocator holds (see growth_purge), or
 * back. Its first page must be out of the index. */
static void run_hold_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t n) {
    run_mark(c, page, n, PAGE_LARGE);
    c->free_pages -= n;
    a->large_allocated += (size_t)n << TM_PAGE_SHIFT;
}

static void run_unhold_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t n) {
    c->free_pages += n;
    a->large_allocated -= (size_t)n << TM_PAGE_SHIFT;
}

/* True if the run held at `page` is still held: only a bad free() of an
 * address inside the heap can have freed it meanwhile. */
static bool run_still_held(const tm_chunk_t *c, uint32_t page, uint32_t n) {
    return c->pages[page].kind == PAGE_LARGE && c->pages[page].npages == n;
}

/* Give back about `want` resident free pages of arena a. While the lock is
 * dropped for the madvise calls the runs are out of the index and held as
 * large blocks of the allocator's own (PAGE_LARGE, counted in
 * large_allocated, not in free_pages): _heapchk, _heapwalk and a concurrent
 * trim all see a consistent heap, no free merges into them and no
 * allocation takes them. Called and returns with the lock held. */
static void growth_purge_locked(tm_arena_t *a, size_t want) {
    struct { tm_chunk_t *c; uint32_t page, n; bool purged; } runs[GROWTH_PURGE_BATCH];
    int nruns = 0;
    size_t got = 0;
    for (tm_chunk_t *c = a->chunks; c && got < want && nruns < GROWTH_PURGE_BATCH; c = c->next) {
        for (uint32_t p = 0; p < TM_CHUNK_PAGES && got < want && nruns < GROWTH_PURGE_BATCH;) {
            tm_page_t *h = &c->pages[p]; /* always a run's first page */
            uint32_t n = h->npages, r;
            if (h->kind == PAGE_FREE && h->dirty && (r = count_resident(c, p, n))) {
                runs_index_remove_locked(a, h);
                run_hold_locked(a, c, p, n);
                rss[a->index].resident -= r;
                runs[nruns].c = c;
                runs[nruns].page = p;
                runs[nruns].n = n;
                nruns++;
                got += r;
            }
            p += n;
        }
    }
    if (!nruns) return;
    rss[a->index].credit -= got < rss[a->index].credit ? got : rss[a->index].credit;
    pthread_mutex_unlock(&a->lock);
    for (int i = 0; i < nruns; i++) {
        size_t bytes = (size_t)runs[i].n << TM_PAGE_SHIFT;
        runs[i].purged = os_purge((void *)chunk_page_addr(runs[i].c, runs[i].page), bytes) == 0;
        if (runs[i].purged) stats_add_released(bytes);
    }
    pthread_mutex_lock(&a->lock);
    for (int i = 0; i < nruns; i++) {
        tm_chunk_t *c = runs[i].c;
        uint32_t p = runs[i].page, n = runs[i].n;
        if (!run_still_held(c, p, n)) continue;
        run_unhold_locked(a, c, n);
        set_resident(c, p, n, !runs[i].purged);
        if (!runs[i].purged) rss[a->index].resident += n;
        run_insert_free_locked(a, c, p, n, runs[i].purged, !runs[i].purged);
    }
}

/* Carve npages aligned to align_pages out of the best-fitting free run.
 * May drop and retake the lock for a growth purge, as growing the arena
 * does; the run it chose is held meanwhile, so the purge never makes it
 * fail. */
tm_chunk_t *run_alloc_locked(tm_arena_t *a, size_t npages, size_t align_pages,
                             uint32_t *page_out, bool *zeroed_out) {
    size_t need = npages + (align_pages > 1 ? align_pages - 1 : 0);
    if (need > TM_CHUNK_PAGES) return NULL;
    tm_page_t *h;
    tm_chunk_t *c;
    uint32_t len, page, start, resident;
    for (bool may_purge = true;; may_purge = false) {
        len = runs_find_locked(a, (uint32_t)need);
        if (!len) return NULL;
        h = a->runs[len];
        c = page_chunk(h);
        page = start = chunk_page_index(c, h);
        if (align_pages > 1) {
            uintptr_t addr = chunk_page_addr(c, page);
            uintptr_t al = align_pages << TM_PAGE_SHIFT;
            start = (uint32_t)((((addr + al - 1) & ~(al - 1)) - c->base) >> TM_PAGE_SHIFT);
        }
        resident = count_resident(c, start, (uint32_t)npages);
        runs_index_remove_locked(a, h);
        if (!may_purge || resident == npages) break;
        size_t idle = rss[a->index].resident ? rss[a->index].resident - count_resident(c, page, len) : 0;
        size_t want = growth_purge_pages_locked(a, (uint32_t)npages - resident, idle);
        if (!want) break;
        /* held while the lock is dropped, the run is no free run: its
         * resident pages are counted again when it is one */
        rss[a->index].resident -= count_resident(c, page, len);
        run_hold_locked(a, c, page, len);
        growth_purge_locked(a, want); /* drops the lock */
        if (run_still_held(c, page, len)) {
            run_unhold_locked(a, c, len);
            rss[a->index].resident += count_resident(c, page, len);
            resident = count_resident(c, start, (uint32_t)npages);
            break;
        }
    }
    bool zeroed = h->zeroed, dirty = h->dirty;
    h->kind = PAGE_INTERIOR;
    c->pages[page + len - 1].kind = PAGE_INTERIOR;
    if (start > page) run_insert_free_locked(a, c, page, start - page, zeroed, dirty);
    uint32_t end = start + (uint32_t)npages, rend = page + len;
    if (rend > end) run_insert_free_locked(a, c, end, rend - end, zeroed, dirty);
    for (uint32_t i = start; i < end; i++) c->pages[i].kind = PAGE_INTERIOR;
    rss[a->index].resident -= resident;
    c->free_pages -= (uint32_t)npages;
    *page_out = start;
    *zeroed_out = zeroed;
    return c;
}

void run_free_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t npages) {
    for (uint32_t i = page; i < page + npages; i++) c->fast[i] = 0;
    set_resident(c, page, npages, true);
    rss[a->index].resident += npages;
    c->free_pages += npages;
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
    rh->kind = PAGE_INTERIOR;
    c->pages[end + rn - 1].kind = PAGE_INTERIOR;
    if (rn > extra) run_insert_free_locked(a, c, end + extra, rn - extra, zeroed, dirty);
    rss[a->index].resident -= count_resident(c, end, extra);
    for (uint32_t i = end; i < end + extra; i++) c->pages[i].kind = PAGE_INTERIOR;
    c->pages[page + npages - 1].kind = PAGE_INTERIOR;
    run_mark(c, page, new_npages, PAGE_LARGE);
    c->free_pages -= extra;
    return true;
}

void run_shrink_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t npages,
                       uint32_t new_npages) {
    c->pages[page + npages - 1].kind = PAGE_INTERIOR;
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
        do {
            pthread_mutex_unlock(&a->lock);
            os_yield();
            pthread_mutex_lock(&a->lock);
        } while ((s = slot_find(c)) < 0);
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
    pthread_mutex_unlock(&a->lock);
    size_t released = os_purge_inside((void *)lo, (void *)hi);
    pthread_mutex_lock(&a->lock);
    c->slab_busy = 0;
    if (!released && hwm > c->slab_hwm) c->slab_hwm = (uint16_t)hwm; /* refused: still there */
    return released;
}

/* ---- chunk lifetime ------------------------------------------------------- */

tm_chunk_t *chunk_create(tm_arena_t *a) {
    void *mem = os_map_aligned(TM_CHUNK, TM_CHUNK);
    if (!mem && heapmin_release_for_retry()) mem = os_map_aligned(TM_CHUNK, TM_CHUNK);
    if (!mem) return NULL;
    tm_chunk_t *c = meta_alloc(sizeof(tm_chunk_t));
    if (!c) {
        os_unmap(mem, TM_CHUNK);
        return NULL;
    }
    c->base = (uintptr_t)mem;
    c->arena = a;
    if (pagemap_set(c->base, (uintptr_t)c | 1) != 0) {
        os_unmap(mem, TM_CHUNK);
        meta_free(c, sizeof *c);
        return NULL;
    }
    return c;
}

void chunk_attach_locked(tm_arena_t *a, tm_chunk_t *c) {
    c->next = a->chunks;
    c->prev = NULL;
    if (a->chunks) a->chunks->prev = c;
    a->chunks = c;
    a->nchunks++;
    c->free_pages = TM_CHUNK_PAGES;
    run_mark(c, 0, TM_CHUNK_PAGES, PAGE_FREE);
    c->pages[0].zeroed = 1;
    c->pages[0].dirty = 0;
    runs_index_insert_locked(a, c, &c->pages[0]);
}

void chunk_detach_locked(tm_arena_t *a, tm_chunk_t *c) {
    tm_assert(c->free_pages == TM_CHUNK_PAGES);
    runs_index_remove_locked(a, &c->pages[0]);
    rss[a->index].resident -= count_resident(c, 0, TM_CHUNK_PAGES);
    if (c->prev) c->prev->next = c->next;
    else a->chunks = c->next;
    if (c->next) c->next->prev = c->prev;
    a->nchunks--;
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
static void run_purge_descriptor(tm_chunk_t *c, uint32_t page, uint32_t n) {
    os_purge_inside(&c->pages[page + 1], &c->pages[page + n - 1]);
    os_purge_inside(&c->links[(page + 1) >> 1], &c->links[(page + n) >> 1]);
}


/* ---- purge ------------------------------------------------------------------
 * Under the lock, take dirty free runs out of the index (their first/last
 * page marked PAGE_UNUSED so neighbours do not merge into them) and detach
 * empty chunks; drop the lock for the madvise/munmap calls -- the runs'
 * pages, and the descriptor pages that describe only them -- then take the
 * lock again to put the purged runs back, zeroed and clean. Repeats in
 * batches until nothing dirty is left. No lock is held across a system
 * call. */
#define PURGE_BATCH 64

size_t arena_purge(tm_arena_t *a, bool unmap_empty, unsigned *failures) {
    size_t released = 0;
    bool may_unmap = unmap_empty;
    if (unmap_empty) arena_release_empty_slabs(a); /* holds of its own: it walks every bin */
    /* Each round goes on where the last one stopped -- chunk c, its pages
     * from `from` on -- instead of walking again, under the lock, the runs
     * it already made clean. c stays valid while the lock is dropped:
     * chunks are detached only here, and callers hold the trim lock. */
    tm_chunk_t *c = NULL;
    uint32_t from = 0;
    for (int round = 0; round < 1 << 16; round++) {
        struct { tm_chunk_t *c; uint32_t page, n; } runs[PURGE_BATCH];
        tm_chunk_t *empty[PURGE_BATCH];
        int nruns = 0, nempty = 0;
        pthread_mutex_lock(&a->lock);
        if (round == 0) c = a->chunks;
        while (c && nruns < PURGE_BATCH && nempty < PURGE_BATCH) {
            tm_chunk_t *next = c->next;
            if (may_unmap && c->free_pages == TM_CHUNK_PAGES) {
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
                    rss[a->index].resident -= count_resident(c, p, n);
                    h->kind = PAGE_UNUSED;
                    c->pages[p + n - 1].kind = PAGE_UNUSED;
                    runs[nruns].c = c;
                    runs[nruns].page = p;
                    runs[nruns].n = n;
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
        pthread_mutex_unlock(&a->lock);
        if (nruns == 0 && nempty == 0) break;
        int kept = 0;
        for (int i = 0; i < nempty; i++) {
            if (chunk_destroy(empty[i])) released += TM_CHUNK;
            else empty[kept++] = empty[i];
        }
        bool purged[PURGE_BATCH];
        for (int i = 0; i < nruns; i++) {
            size_t bytes = (size_t)runs[i].n << TM_PAGE_SHIFT;
            purged[i] = os_purge((void *)chunk_page_addr(runs[i].c, runs[i].page), bytes) == 0;
            if (purged[i]) {
                released += bytes;
                stats_add_released(bytes);
                run_purge_descriptor(runs[i].c, runs[i].page, runs[i].n);
            }
        }
        unsigned failed = (unsigned)kept;
        for (int i = 0; i < nruns; i++) failed += !purged[i];
        if (nruns || kept) {
            pthread_mutex_lock(&a->lock);
            for (int i = 0; i < kept; i++) { /* munmap refused: contents stay */
                chunk_attach_locked(a, empty[i]);
                empty[i]->pages[0].zeroed = 0;
                empty[i]->pages[0].dirty = 1;
                set_resident(empty[i], 0, TM_CHUNK_PAGES, true);
                rss[a->index].resident += TM_CHUNK_PAGES;
            }
            /* a run the kernel would not purge keeps its dirty bytes */
            for (int i = 0; i < nruns; i++) {
                set_resident(runs[i].c, runs[i].page, runs[i].n, !purged[i]);
                if (!purged[i]) rss[a->index].resident += runs[i].n;
                run_insert_free_locked(a, runs[i].c, runs[i].page, runs[i].n, purged[i],
                                       !purged[i]);
            }
            pthread_mutex_unlock(&a->lock);
        }
        if (failures) *failures += failed;
        if (failed) break; /* the kernel refuses: do not spin on the same runs */
    }
    return released;
}
