/*
 * heap_crt.c -- Microsoft's CRT heap family on trimalloc:
 *   _heapchk, _heapset   a full consistency check of every arena, chunk,
 *                        run, slab and huge block (_heapset then fills
 *                        free memory with a byte);
 *   _heapwalk            every block, free or used, in address order;
 *   _heapadd             unsupported (-1, ENOSYS), as in today's CRT;
 *   _msize, _expand, _recalloc;
 *   _aligned_*           the (offset-)aligned family, on one header scheme.
 * docs/crt.md gives the return codes, the behaviour while other threads
 * allocate, and where we differ from Microsoft.
 *
 * Locks. _heapchk, _heapset and every _heapwalk call hold the trim lock
 * (heapmin_lock, the lowest rank) from start to end. That keeps _heapmin
 * out, and with it the only code that takes free runs out of the index
 * while it drops the arena lock (the purge marks them PAGE_UNUSED) and the
 * only code that unmaps chunks: so every chunk we meet stays mapped. The
 * other sections that drop an arena's lock while they hold runs in a
 * transient state (a growth, a growth purge, a new slab waiting for its
 * pool slot) are counted in a->dropped, and we take each arena's lock
 * once none is under way (arena_lock_settled), so every run is settled
 * whenever we hold its arena's lock. Arena locks are then taken one at a
 * time, never two at once, and the huge lock after them; pagemap reads
 * take no lock.
 *
 * What the checker calls what (the first damage found is returned):
 *   _HEAPBADBEGIN  an arena's own header disagrees with what it heads: its
 *                  chunk list, chunk count, empty-chunk count or active-page
 *                  count, its free-run index bitmap, a bin's
 *                  partial list or counters (nslabs, cur_blocks), the large
 *                  byte count, the total of live huge bytes; and, for
 *                  _heapwalk, a run header it cannot step over.
 *   _HEAPBADPTR    a descriptor pointer that does not point back: a chunk
 *                  or huge block whose pagemap entry is not its descriptor,
 *                  a slab descriptor that names another run, a free-run
 *                  index entry or partial-list slab outside the arena.
 *   _HEAPBADNODE   a run or block is damaged: runs that do not tile their
 *                  chunk, bad page kinds or run tails, uncoalesced free
 *                  neighbours, a free run missing from the index, slab
 *                  counts or fast[] entries that disagree, a chunk's
 *                  free_pages, or a free small block whose cookie the
 *                  program overwrote (see "Cookies" below).
 */
#include "internal.h"

#define PTR_SZ sizeof(void *)

static bool pow2(size_t x) { return x && !(x & (x - 1)); }

static bool is_page_run_kind(uint8_t k) {
    return k == PAGE_FREE || k == PAGE_SLAB || k == PAGE_LARGE;
}

/* ---- Cookies --------------------------------------------------------------
 * Every free small block -- in a thread cache or in its slab -- carries its
 * cookie (its address xor a per-process key) in its second word: the
 * refill that first hands it out, free() and the return to the slab all
 * write it, and malloc clears it. A free block in a slab bitmap without it
 * was written by the program after it was freed. Blocks a slab never
 * handed out (index >= fresh) have none and are never checked; in a slab
 * where _heapmin gave back pages of free blocks (purged), a cookie word
 * reading zero is accepted (a write of zeros there after free is missed).
 *
 * The return to the slab writes the cookie afresh, so a write into a block
 * while it sits in a thread cache is repaired, not seen, when the cache is
 * drained (our own drain included): we see writes into blocks that are
 * back in their slab -- after a drain (_heapchk, _heapwalk, _heapmin), a
 * cache overflow or the thread's exit.
 *
 * Block i (at b) of slab sl, free in its bitmap, is damaged if its cookie
 * word is wrong: no cookie is due past fresh, and in a purged slab the word
 * may read zero (types.h). */
static bool slab_block_damaged(const tm_slab_t *sl, uint32_t i, uintptr_t b) {
    if (i >= sl->fresh) return false;
    uint64_t w = *(const volatile uint64_t *)tm_cookie_slot((void *)b);
    return w != (b ^ tm_cookie_key) && !(sl->purged && w == 0);
}

/* Pages inside a run (not its first or last) read PAGE_INTERIOR: a stale
 * PAGE_FREE would mislead coalescing, a stale PAGE_LARGE or PAGE_SLAB would
 * let a double free of an old block pass, and carving a run does not
 * rewrite them (run_alloc_locked). */
static bool interior_kind_ok(uint8_t k) { return k == PAGE_INTERIOR; }

/* ---- "nothing was ever mapped" ----------------------------------------------
 * Every chunk or huge mapping is either still mapped (an arena's chunk, a
 * live or cached huge block) or was released, which stats count. */
static bool heap_ever_mapped(void) {
    for (unsigned i = 0; i < TM_MAX_ARENAS; i++) {
        tm_arena_t *a = __atomic_load_n(&tm_arenas[i], __ATOMIC_ACQUIRE);
        if (!a) continue;
        arena_lock(a);
        size_t n = a->nchunks;
        arena_unlock(a);
        if (n) return true;
    }
    return huge_mapped() != 0 ||
           __atomic_load_n(&tm_gstats.released_bytes, __ATOMIC_RELAXED) != 0;
}

/* Caller holds the trim lock. Blocks in thread caches go back to their
 * slabs, so a walk sees them free. */
static void drain_caches(void) { (void)world_drain_all_caches(); }

/* ---- the checker ----------------------------------------------------------------- */

typedef struct chk_sums {
    size_t nslabs[TM_NCLASSES + 1];
    size_t on_list[TM_NCLASSES + 1];
    size_t out[TM_NCLASSES + 1]; /* blocks not free in their bitmap */
    size_t large_bytes;
    size_t free_runs;
    size_t chunk_slabs; /* slabs met in the chunk being checked */
} chk_sums_t;

static bool chunk_is_ours(tm_arena_t *a, tm_chunk_t *c) {
    return c && c->arena == a && !(c->base & TM_CHUNK_MASK) &&
           pagemap_lookup(c->base) == ((uintptr_t)c | 1);
}

static int check_slab_locked(tm_chunk_t *c, uint32_t p, uint32_t n, chk_sums_t *s) {
    tm_slab_t *sl = chunk_slab(c, p);
    uintptr_t start = chunk_page_addr(c, p);
    if (!sl || sl->start != start || slab_chunk(sl) != c) return _HEAPBADPTR;
    /* its slot is marked used, below the pool's high-water mark */
    uint32_t slot = c->pages[p].index;
    if (slot >= c->slab_hwm || !((c->slab_used[slot >> 6] >> (slot & 63)) & 1))
        return _HEAPBADPTR;
    unsigned cls = sl->cls;
    if (cls < 1 || cls > TM_NCLASSES) return _HEAPBADNODE;
    const tm_class_t *k = &tm_classes[cls];
    if (n != k->slab_pages || sl->nblocks != k->nblocks) return _HEAPBADNODE;
    if (n > 1 && c->pages[p + n - 1].kind != PAGE_INTERIOR) return _HEAPBADNODE;
    uint32_t fast = TM_FAST(cls, p, c->arena->index) | (sl->purged ? TM_FAST_PURGED : 0);
    uint32_t fresh_page = slab_fresh_page(sl->fresh, sl->nblocks, k->size);
    for (uint32_t i = p; i < p + n; i++)
        if (c->fast[i] != (fast | (i - p >= fresh_page ? TM_FAST_FRESH : 0))) return _HEAPBADNODE;
    if (sl->hint > TM_SLAB_MAX_BLOCKS / 64) return _HEAPBADNODE;
    unsigned nfree = 0;
    for (unsigned w = 0; w < TM_SLAB_MAX_BLOCKS / 64; w++) {
        uint64_t bits = sl->bitmap[w];
        if (!bits) continue;
        if (w < sl->hint) return _HEAPBADNODE;
        unsigned lo = w * 64;
        if (lo >= sl->nblocks || (sl->nblocks - lo < 64 && bits >> (sl->nblocks - lo)))
            return _HEAPBADNODE; /* a bit past the last block */
        nfree += (unsigned)__builtin_popcountll(bits);
        while (bits) {
            unsigned i = lo + (unsigned)__builtin_ctzll(bits);
            bits &= bits - 1;
            if (slab_block_damaged(sl, i, start + (uintptr_t)i * k->size))
                return _HEAPBADNODE;
        }
    }
    if (nfree != sl->nfree) return _HEAPBADNODE;
    /* blocks never handed out are all free */
    if (sl->fresh > sl->nblocks) return _HEAPBADNODE;
    for (unsigned i = sl->fresh; i < sl->nblocks; i++)
        if (!((sl->bitmap[i >> 6] >> (i & 63)) & 1)) return _HEAPBADNODE;
    /* the bin's partial list holds exactly the slabs with free blocks */
    if ((sl->nfree != 0) != (sl->on_list != 0)) return _HEAPBADNODE;
    s->nslabs[cls]++;
    s->chunk_slabs++;
    s->on_list[cls] += sl->on_list != 0;
    s->out[cls] += sl->nblocks - sl->nfree;
    return _HEAPOK;
}

static int check_chunk_locked(tm_arena_t *a, tm_chunk_t *c, chk_sums_t *s) {
    if (!chunk_is_ours(a, c)) return _HEAPBADPTR;
    uint32_t free_pages = 0;
    bool prev_free = false;
    s->chunk_slabs = 0;
    for (uint32_t p = 0; p < TM_CHUNK_PAGES;) {
        tm_page_t *h = &c->pages[p];
        uint32_t n = h->npages;
        if (n == 0 || n > TM_CHUNK_PAGES - p) return _HEAPBADNODE;
        tm_page_t *t = &c->pages[p + n - 1];
        if (t->npages != n) return _HEAPBADNODE;
        for (uint32_t i = p + 1; i + 1 < p + n; i++)
            if (!interior_kind_ok(c->pages[i].kind)) return _HEAPBADNODE;
        int rc = _HEAPOK;
        switch (h->kind) {
        case PAGE_FREE:
            if (prev_free) return _HEAPBADNODE; /* two free runs side by side */
            if (t->kind != PAGE_FREE || page_chunk(h) != c) return _HEAPBADNODE;
            /* linked into the index list for its length */
            tm_run_link_t *l = &c->links[p >> 1];
            if (l->prev ? page_link(l->prev)->next != h : a->runs[n] != h) return _HEAPBADNODE;
            if (l->next && page_link(l->next)->prev != h) return _HEAPBADNODE;
            for (uint32_t i = p; i < p + n; i++)
                if (c->fast[i]) return _HEAPBADNODE;
            free_pages += n;
            s->free_runs++;
            break;
        case PAGE_LARGE:
            if (n > 1 && t->kind != PAGE_INTERIOR) return _HEAPBADNODE;
            /* the first page: TM_FAST_LARGE or _QUEUED and the length, or
             * 0 for a run the allocator holds for itself (a growth purge);
             * a free() from another arena's thread may swap the flag now */
            uint32_t f0 = __atomic_load_n(&c->fast[p], __ATOMIC_RELAXED);
            if (f0 && f0 != TM_FAST_LARGE_ENTRY(TM_FAST_LARGE, n) &&
                f0 != TM_FAST_LARGE_ENTRY(TM_FAST_QUEUED, n))
                return _HEAPBADNODE;
            for (uint32_t i = p + 1; i < p + n; i++)
                if (c->fast[i]) return _HEAPBADNODE;
            s->large_bytes += (size_t)n << TM_PAGE_SHIFT;
            break;
        case PAGE_SLAB:
            rc = check_slab_locked(c, p, n, s);
            break;
        default:
            return _HEAPBADNODE;
        }
        if (rc != _HEAPOK) return rc;
        prev_free = h->kind == PAGE_FREE;
        p += n;
    }
    if (free_pages != c->free_pages) return _HEAPBADNODE;
    /* every used slot of the slab pool holds a slab met above (which each
     * have a used slot of their own), and no give-back is under way (the
     * trim lock keeps _heapmin out) */
    unsigned used = 0;
    for (unsigned w = 0; w < TM_CHUNK_PAGES / 64; w++)
        used += (unsigned)__builtin_popcountll(c->slab_used[w]);
    if (used != s->chunk_slabs || c->nslabs != used || c->slab_busy) return _HEAPBADNODE;
    return _HEAPOK;
}

static bool page_in_chunk(tm_chunk_t *c, const tm_page_t *h) {
    uintptr_t lo = (uintptr_t)c->pages, x = (uintptr_t)h;
    return x >= lo && x < lo + sizeof c->pages && (x - lo) % sizeof(tm_page_t) == 0;
}

static int check_arena_locked(tm_arena_t *a, chk_sums_t *s) {
    /* chunks */
    size_t nchunks = 0, nempty = 0, active = 0;
    tm_chunk_t *prev = NULL;
    for (tm_chunk_t *c = a->chunks; c; prev = c, c = c->next) {
        if (++nchunks > a->nchunks || c->prev != prev || c->arena != a) return _HEAPBADBEGIN;
        int rc = check_chunk_locked(a, c, s);
        if (rc != _HEAPOK) return rc;
        nempty += c->free_pages == TM_CHUNK_PAGES;
        active += TM_CHUNK_PAGES - c->free_pages;
    }
    if (nchunks != a->nchunks || nempty != a->nempty || active != a->active_pages)
        return _HEAPBADBEGIN;

    /* the free-run index: exactly the free runs the chunks hold */
    size_t indexed = 0;
    for (uint32_t n = 0; n < TM_RUN_LISTS; n++) {
        bool bit = (a->runs_nonempty[n >> 6] >> (n & 63)) & 1;
        if (bit != (a->runs[n] != NULL)) return _HEAPBADBEGIN;
        tm_page_t *hp = NULL;
        for (tm_page_t *h = a->runs[n]; h; hp = h, h = page_link(h)->next) {
            if (n == 0 || ++indexed > s->free_runs) return _HEAPBADBEGIN;
            if (!chunk_is_ours(a, page_chunk(h)) || !page_in_chunk(page_chunk(h), h))
                return _HEAPBADPTR;
            if (page_link(h)->prev != hp) return _HEAPBADBEGIN;
            if (h->kind != PAGE_FREE || h->npages != n) return _HEAPBADNODE;
        }
    }
    if (indexed != s->free_runs) return _HEAPBADNODE; /* a free run not in the index */
    for (uint32_t w = 0; w < (TM_RUN_LISTS + 63) / 64; w++)
        if (((a->runs_words >> w) & 1) != (a->runs_nonempty[w] != 0)) return _HEAPBADBEGIN;

    /* bins */
    if (a->bins[0].partial || a->bins[0].nslabs) return _HEAPBADBEGIN;
    for (unsigned cls = 1; cls <= TM_NCLASSES; cls++) {
        tm_arena_bin_t *b = &a->bins[cls];
        if (b->nslabs != s->nslabs[cls] || b->cur_blocks != s->out[cls]) return _HEAPBADBEGIN;
        size_t k = 0;
        tm_slab_t *sp = NULL;
        for (tm_slab_t *sl = b->partial; sl; sp = sl, sl = sl->next) {
            if (++k > s->on_list[cls] || sl->prev != sp || sl->cls != cls || !sl->on_list)
                return _HEAPBADBEGIN;
            tm_chunk_t *c = slab_chunk(sl);
            if (!chunk_is_ours(a, c) || sl->start < c->base || sl->start - c->base >= TM_CHUNK)
                return _HEAPBADPTR;
            uint32_t hp = (uint32_t)((sl->start - c->base) >> TM_PAGE_SHIFT);
            if (chunk_slab(c, hp) != sl) return _HEAPBADPTR;
        }
        if (k != s->on_list[cls]) return _HEAPBADBEGIN;
    }
    /* the arena's last freed runs (chunk.c) read as large runs, counted apart */
    size_t stash = 0;
    if (a->nstash > TM_STASH_SLOTS) return _HEAPBADBEGIN;
    for (unsigned i = 0; i < a->nstash; i++) {
        tm_chunk_t *c = a->stash[i].c;
        uint32_t p = a->stash[i].page;
        if (!chunk_is_ours(a, c) || p >= TM_CHUNK_PAGES) return _HEAPBADPTR;
        tm_page_t *h = &c->pages[p];
        if (h->kind != PAGE_LARGE || h->npages != a->stash[i].n ||
            __atomic_load_n(&c->fast[p], __ATOMIC_RELAXED))
            return _HEAPBADNODE;
        stash += a->stash[i].n;
        for (unsigned j = 0; j < i; j++) /* each run kept once */
            if (a->stash[j].c == c && a->stash[j].page == p) return _HEAPBADNODE;
    }
    if (stash != a->stash_pages) return _HEAPBADBEGIN;
    /* each chunk's count of them, and no chunk held by them alone */
    for (tm_chunk_t *c = a->chunks; c; c = c->next) {
        uint32_t in_c = 0;
        for (unsigned i = 0; i < a->nstash; i++)
            if (a->stash[i].c == c) in_c += a->stash[i].n;
        if (in_c != c->stash_pages) return _HEAPBADNODE;
        if (in_c && c->free_pages + in_c == TM_CHUNK_PAGES) return _HEAPBADNODE;
    }
    if (a->large_allocated + (stash << TM_PAGE_SHIFT) != s->large_bytes) return _HEAPBADBEGIN;
    return _HEAPOK;
}

typedef struct huge_chk {
    size_t n, bytes;
    int rc;
} huge_chk_t;

static void huge_check_one(tm_huge_t *h, void *arg) {
    huge_chk_t *k = arg;
    k->n++;
    k->bytes += h->size;
    if (k->rc != _HEAPOK) return;
    /* A block a realloc is moving (huge_realloc) has its entry at the new
     * spot before its base changes: its other fields are checked. */
    if ((h->base & TM_CHUNK_MASK) || (!h->moving && pagemap_lookup(h->base) != (uintptr_t)h))
        k->rc = _HEAPBADPTR;
    else if (h->freed_ns || !h->size || (h->size & TM_PAGE_MASK) || h->size > h->mapped)
        k->rc = _HEAPBADNODE;
}

/* The whole check. Caller holds the trim lock. */
static int check_all(void) {
    chk_sums_t s;
    for (unsigned i = 0; i < TM_MAX_ARENAS; i++) {
        tm_arena_t *a = __atomic_load_n(&tm_arenas[i], __ATOMIC_ACQUIRE);
        if (!a) continue;
        memset(&s, 0, sizeof s);
        arena_lock_settled(a);
        int rc = check_arena_locked(a, &s);
        arena_unlock(a);
        if (rc != _HEAPOK) return rc;
    }
    huge_chk_t k = {0, 0, _HEAPOK};
    huge_lock();
    huge_foreach_locked(huge_check_one, &k);
    size_t live = huge_allocated();
    huge_unlock();
    if (k.rc != _HEAPOK) return k.rc;
    if (k.bytes != live) return _HEAPBADBEGIN;
    if (!k.n && !heap_ever_mapped()) return _HEAPEMPTY;
    return _HEAPOK;
}

TM_EXPORT int TM_API(_heapchk)(void) {
    int saved = errno;
    tm_init();
    heapmin_lock();
    drain_caches();
    int rc = check_all();
    heapmin_unlock();
    errno = saved;
    return rc;
}

/* ---- _heapset ------------------------------------------------------------------
 * Fills the free small blocks, all of them (writing their cookie afresh in
 * bytes 8..15: double-free detection and _heapchk rely on it), and the
 * resident pages of free runs (the purged and never-touched ones read zero
 * and are left alone, so _heapset never faults released memory back in,
 * and a page the purges take for zero stays zero). A filled run is no
 * longer known zero. */
static void fill_arena_locked(tm_arena_t *a, unsigned char fill) {
    run_stash_flush_locked(a); /* the last freed runs, with the free runs */
    for (tm_chunk_t *c = a->chunks; c; c = c->next) {
        for (uint32_t p = 0; p < TM_CHUNK_PAGES;) {
            tm_page_t *h = &c->pages[p];
            uint32_t n = h->npages;
            if (n == 0 || n > TM_CHUNK_PAGES - p) break; /* checked before; never loop */
            if (h->kind == PAGE_FREE && h->dirty) {
                run_fill_resident_locked(c, p, n, fill);
                page_set_flags(h, false, true);
            } else if (h->kind == PAGE_SLAB) {
                tm_slab_t *sl = chunk_slab(c, p);
                size_t size = tm_classes[sl->cls].size;
                for (unsigned w = 0; w < TM_SLAB_MAX_BLOCKS / 64; w++) {
                    for (uint64_t bits = sl->bitmap[w]; bits; bits &= bits - 1) {
                        unsigned i = w * 64 + (unsigned)__builtin_ctzll(bits);
                        char *b = (char *)(sl->start + (uintptr_t)i * size);
                        memset(b, fill, size);
                        *tm_cookie_slot(b) = tm_cookie_of(b);
                    }
                }
                slab_set_fresh_locked(sl, sl->nblocks); /* every free block has its cookie */
                chunk_resident_set(c, p, n, true);      /* and its pages are in use */
            }
            p += n;
        }
    }
}

TM_EXPORT int TM_API(_heapset)(unsigned int fill) {
    int saved = errno;
    tm_init();
    heapmin_lock();
    drain_caches();
    int rc = check_all();
    if (rc == _HEAPOK) {
        for (unsigned i = 0; i < TM_MAX_ARENAS; i++) {
            tm_arena_t *a = __atomic_load_n(&tm_arenas[i], __ATOMIC_ACQUIRE);
            if (!a) continue;
            arena_lock_settled(a);
            fill_arena_locked(a, (unsigned char)fill);
            arena_unlock(a);
        }
    }
    heapmin_unlock();
    errno = saved;
    return rc;
}

/* ---- _heapwalk -------------------------------------------------------------------
 * Stateless: each call finds the entry with the lowest address at or past
 * the end of the previous one (e->_pentry + e->_size), over every chunk of
 * every arena and every live huge block, under the trim lock and, chunk by
 * chunk, the owning arena's lock. So one call is consistent for the chunk
 * it reports from, and the entries of a walk never overlap, even while
 * other threads allocate: a block they allocate or free during the walk may
 * be seen in either state, a run may be reported in its old or its new
 * shape (a free run reported before a slab was carved out of it hides the
 * slab's blocks), blocks that go into a thread cache after the walk began
 * read as used, and every entry lies past the previous one, so the walk
 * always moves on and ends.
 *
 * e->_pentry must be an entry of the heap now, or one this thread's walks
 * returned lately (which may have vanished since: freed, merged into a free
 * run, unmapped by _heapmin) -- anything else is _HEAPBADPTR. For the
 * latter we remember, per thread, the last few entries and the sizes we
 * gave them; the walk goes on from the end we reported. */
typedef struct walk_entry {
    uintptr_t addr;
    size_t size;
    int used;
} walk_entry_t;

#define WALK_RECENT 4
static __thread walk_entry_t walk_recent[WALK_RECENT];
static __thread unsigned walk_recent_at;

/* The entry most recently returned at address p in this thread's walk. A
 * new walk (_pentry NULL) forgets the previous walk's entries: the same
 * address may hold a block of another size by then. */
static const walk_entry_t *walk_recent_find(uintptr_t p) {
    for (unsigned k = 1; k <= WALK_RECENT; k++) {
        const walk_entry_t *e = &walk_recent[(walk_recent_at - k) % WALK_RECENT];
        if (e->addr == p) return e;
    }
    return NULL;
}

/* The first page of the run holding page ap, or -1 for a header we cannot
 * step over. A slab page names its slab's first page in fast[]; anything
 * else is found by stepping over run heads from page 0. */
static int32_t run_head_locked(tm_chunk_t *c, uint32_t ap) {
    uint32_t f = __atomic_load_n(&c->fast[ap], __ATOMIC_RELAXED);
    uint32_t sp = (f >> TM_PAGE_SHIFT) & (TM_CHUNK_PAGES - 1);
    if ((f & 0xff) && sp <= ap && c->pages[sp].kind == PAGE_SLAB &&
        ap - sp < c->pages[sp].npages)
        return (int32_t)sp;
    for (uint32_t p = 0; p < TM_CHUNK_PAGES;) {
        uint32_t n = c->pages[p].npages;
        if (n == 0 || n > TM_CHUNK_PAGES - p || !is_page_run_kind(c->pages[p].kind)) return -1;
        if (ap < p + n) return (int32_t)p;
        p += n;
    }
    return -1;
}

static tm_slab_t *walk_slab(tm_chunk_t *c, uint32_t p) {
    tm_slab_t *sl = chunk_slab(c, p);
    if (!sl || sl->cls < 1 || sl->cls > TM_NCLASSES || sl->start != chunk_page_addr(c, p))
        return NULL;
    return sl;
}

/* Is a (inside chunk c) where an entry starts? */
static bool entry_at_locked(tm_chunk_t *c, uintptr_t a) {
    int32_t p = run_head_locked(c, (uint32_t)((a - c->base) >> TM_PAGE_SHIFT));
    if (p < 0) return false;
    uintptr_t rs = chunk_page_addr(c, (uint32_t)p);
    if (c->pages[p].kind != PAGE_SLAB) return a == rs;
    tm_slab_t *sl = walk_slab(c, (uint32_t)p);
    if (!sl) return false;
    size_t size = tm_classes[sl->cls].size;
    return (a - rs) % size == 0 && (a - rs) / size < sl->nblocks;
}

/* The first entry of chunk c at or above address `from` (c->base <= from <
 * c->base + TM_CHUNK). _HEAPOK with *out, _HEAPEND if none, or an error. */
static int chunk_next_locked(tm_chunk_t *c, uintptr_t from, walk_entry_t *out) {
    int32_t hp = run_head_locked(c, (uint32_t)((from - c->base) >> TM_PAGE_SHIFT));
    if (hp < 0) return _HEAPBADBEGIN;
    for (uint32_t p = (uint32_t)hp; p < TM_CHUNK_PAGES;) {
        tm_page_t *h = &c->pages[p];
        uint32_t n = h->npages;
        if (n == 0 || n > TM_CHUNK_PAGES - p || !is_page_run_kind(h->kind)) return _HEAPBADBEGIN;
        uintptr_t rs = chunk_page_addr(c, p);
        if (h->kind != PAGE_SLAB) {
            if (rs >= from) {
                /* used only if the program holds it: a run the allocator
                 * holds while it purges (a zero entry) or a block waiting
                 * in a remote-free queue is free to the program (until
                 * 2026-12-05 both were listed as used; a reviewer) */
                bool used = h->kind == PAGE_LARGE &&
                            (__atomic_load_n(&c->fast[p], __ATOMIC_RELAXED) & TM_FAST_LARGE);
                *out = (walk_entry_t){rs, (size_t)n << TM_PAGE_SHIFT, used};
                return _HEAPOK;
            }
        } else {
            tm_slab_t *sl = walk_slab(c, p);
            if (!sl) return _HEAPBADBEGIN;
            size_t size = tm_classes[sl->cls].size;
            uint32_t i = from > rs ? (uint32_t)((from - rs + size - 1) / size) : 0;
            if (i < sl->nblocks) {
                uintptr_t b = rs + (uintptr_t)i * size;
                bool free_ = (sl->bitmap[i >> 6] >> (i & 63)) & 1;
                if (free_ && slab_block_damaged(sl, i, b))
                    return _HEAPBADNODE;
                *out = (walk_entry_t){b, size, !free_};
                return _HEAPOK;
            }
        }
        p += n;
    }
    return _HEAPEND;
}

typedef struct huge_walk {
    uintptr_t after, from, best;
    walk_entry_t e;
    bool after_is_entry;
} huge_walk_t;

static void huge_walk_one(tm_huge_t *h, void *arg) {
    huge_walk_t *w = arg;
    if (h->base == w->after) w->after_is_entry = true;
    if (h->base >= w->from && h->base < w->best) {
        w->best = h->base;
        w->e = (walk_entry_t){h->base, h->size, 1};
    }
}

static bool in_chunk(const tm_chunk_t *c, uintptr_t a) {
    return a >= c->base && a - c->base < TM_CHUNK;
}

/* The first entry at or above `from`; `after` (0 for a new walk) is the
 * entry the caller names, checked here. Caller holds the trim lock. */
static int walk_next(uintptr_t after, uintptr_t from, walk_entry_t *out) {
    bool valid = after == 0 || walk_recent_find(after);
    uintptr_t best = UINTPTR_MAX;
    tm_chunk_t *best_chunk = NULL; /* the best is this chunk's first entry */
    walk_entry_t best_e = {0, 0, 0};
    for (unsigned i = 0; i < TM_MAX_ARENAS; i++) {
        tm_arena_t *a = __atomic_load_n(&tm_arenas[i], __ATOMIC_ACQUIRE);
        if (!a) continue;
        arena_lock_settled(a);
        size_t left = a->nchunks;
        for (tm_chunk_t *c = a->chunks; c && left; c = c->next, left--) {
            if (!valid && in_chunk(c, after)) valid = entry_at_locked(c, after);
            if (in_chunk(c, from)) {
                walk_entry_t e;
                int rc = chunk_next_locked(c, from, &e);
                if (rc == _HEAPOK && e.addr < best) {
                    best = e.addr;
                    best_e = e;
                    best_chunk = NULL;
                } else if (rc != _HEAPOK && rc != _HEAPEND) {
                    arena_unlock(a);
                    return rc;
                }
            } else if (c->base >= from && c->base < best) {
                best = c->base;
                best_chunk = c;
            }
        }
        arena_unlock(a);
    }
    huge_walk_t hw = {after, from, best, best_e, false};
    huge_lock();
    huge_foreach_locked(huge_walk_one, &hw);
    huge_unlock();
    valid |= hw.after_is_entry;
    if (!valid) return _HEAPBADPTR;
    if (hw.best < best) {
        *out = hw.e;
        return _HEAPOK;
    }
    if (best == UINTPTR_MAX) return _HEAPEND;
    if (best_chunk) {
        /* chunks are not unmapped while we hold the trim lock */
        tm_arena_t *a = best_chunk->arena;
        arena_lock_settled(a);
        int rc = chunk_next_locked(best_chunk, best_chunk->base, &best_e);
        arena_unlock(a);
        if (rc != _HEAPOK) return rc == _HEAPEND ? _HEAPBADBEGIN : rc;
    }
    *out = best_e;
    return _HEAPOK;
}

TM_EXPORT int TM_API(_heapwalk)(_HEAPINFO *entry) {
    if (!entry) {
        errno = EINVAL;
        return _HEAPBADPTR;
    }
    int saved = errno;
    tm_init();
    uintptr_t after = (uintptr_t)entry->_pentry, from = after + 1;
    if (after == 0) memset(walk_recent, 0, sizeof walk_recent);
    const walk_entry_t *prev = after ? walk_recent_find(after) : NULL;
    if (prev && after + prev->size > after) from = after + prev->size;
    walk_entry_t e;
    int rc;
    heapmin_lock();
    if (after == 0 && !heap_ever_mapped()) {
        rc = _HEAPEMPTY;
    } else {
        if (after == 0) drain_caches();
        rc = walk_next(after, from, &e);
    }
    heapmin_unlock();
    errno = saved;
    if (rc != _HEAPOK) return rc;
    walk_recent[walk_recent_at++ % WALK_RECENT] = e;
    entry->_pentry = (int *)e.addr;
    entry->_size = e.size;
    entry->_useflag = e.used ? _USEDENTRY : _FREEENTRY;
    return _HEAPOK;
}

/* ---- _heapadd, _msize, _expand, _recalloc ------------------------------------------- */

TM_EXPORT int TM_API(_heapadd)(void *memblock, size_t size) {
    (void)memblock;
    (void)size;
    errno = ENOSYS;
    return -1;
}

TM_EXPORT size_t TM_API(_msize)(void *memblock) {
    if (!memblock) {
        errno = EINVAL;
        return (size_t)-1;
    }
    size_t n = tm_usable_size(memblock, "_msize");
    if (!n) { /* a bad pointer, reported and ignored (abort_on_error:0) */
        errno = EINVAL;
        return (size_t)-1;
    }
    return n;
}

/* Resize the live block at p (usable size old) to size bytes without
 * moving it, keeping its kind: a small block stays in its class, a large
 * run stays a run within its chunk (resized only to another large size),
 * a huge mapping grows or shrinks with mremap in place (only to another
 * huge size). A shrink always succeeds, as
 * Microsoft's does: one to another kind's size leaves the block as it is
 * (as Microsoft's low-fragmentation heap does with its blocks). Until
 * 2026-12-05 such a shrink failed, and with it every _expand of a block
 * whose kind does not follow from its size -- an aligned allocation's, a
 * 12 KiB huge block of 8 MiB alignment, say -- even to its own size
 * (found by a tester). */
/* 1: done; 0: not possible in place; -1: the block was freed or resized
 * by another thread meanwhile (reported). */
static int expand_in_place(void *p, size_t old, size_t size) {
    uintptr_t a = (uintptr_t)p, e = pagemap_lookup(a);
    tm_chunk_t *c = chunk_of_entry(e);
    size_t huge_min = (size_t)TM_OPT_NOW(huge_threshold);
    if (c) {
        uint32_t page = (uint32_t)((a - c->base) >> TM_PAGE_SHIFT);
        if (__atomic_load_n(&c->fast[page], __ATOMIC_RELAXED) & 0xff) return size <= old;
        if (size > TM_GROW_RUN_MIN && size <= huge_min && arena_large_resize_in_place(c, page, size))
            return 1;
    } else if (!e) { /* freed by another thread since tm_usable_size */
        tm_double_free("_expand", p);
        return -1;
    } else if (size > huge_min) {
        bool refused = false;
        if (huge_resize_in_place((tm_huge_t *)e, p, size, &refused)) return 1;
        if (refused) return -1;
    }
    return size <= old;
}

TM_EXPORT void *TM_API(_expand)(void *memblock, size_t size) {
    if (!memblock) {
        errno = EINVAL;
        return NULL;
    }
    size_t old = tm_usable_size(memblock, "_expand");
    if (!old) { /* bad pointer, reported and ignored */
        errno = EINVAL;
        return NULL;
    }
    int done = size > PTRDIFF_MAX ? 0 : expand_in_place(memblock, old, size);
    if (done <= 0) { /* a block freed meanwhile (reported) is a bad pointer, as above */
        errno = done < 0 ? EINVAL : ENOMEM;
        return NULL;
    }
    if (unlikely(tm_opt.zero | tm_opt.junk)) tm_fill_grown(memblock, old);
    return memblock;
}

/* Zero [from, to) of p. */
static void zero_range(void *p, size_t from, size_t to) {
    if (to > from) memset((char *)p + from, 0, to - from);
}

TM_EXPORT void *TM_API(_recalloc)(void *memblock, size_t num, size_t size) {
    size_t total;
    if (__builtin_mul_overflow(num, size, &total) || total > PTRDIFF_MAX) {
        errno = ENOMEM;
        return NULL;
    }
    if (!memblock) {
        void *q = TM_API(calloc)(num, size);
        if (q) zero_range(q, total, tm_usable_size(q, "_recalloc"));
        return q;
    }
    size_t old = tm_usable_size(memblock, "_recalloc");
    if (!old) { /* bad pointer, reported and ignored */
        errno = EINVAL;
        return NULL;
    }
    bool tail_zero;
    void *q = tm_realloc_impl(memblock, total, &tail_zero);
    if (!q) return NULL;
    /* Every byte past min(old usable size, total) reads zero. A huge block
     * grown by mremap has zero pages past its old size already; one that
     * moved by malloc and copy (the mremap failed, or the block had a
     * guard page) may have come from the cache of freed huge mappings,
     * whose bytes are whatever they held (found by review, 2026-12-05). */
    size_t nu = tm_usable_size(q, "_recalloc");
    size_t lo = old < total ? old : total;
    zero_range(q, lo, tail_zero && nu > old ? old : nu);
    return q;
}

/* ---- the aligned family ------------------------------------------------------------
 * One scheme for all: the block is carved out of an ordinary malloc block
 * ("raw"), big enough for a pointer, the alignment slack and the size:
 *
 *   raw                  hdr           p = returned, (p + offset) % align == 0
 *   |....slack....| raw  |  p-bytes ...  size ...  | class tail |
 *                 ^ the word just below p rounded down to a pointer
 *
 * _aligned_free and friends read the word, and trust it only if it names a
 * live block of ours that starts at or below it and holds p; anything else
 * aborts through tm_invalid_pointer() with the caller's name. */

/* A live block starting at a: its usable size, or 0 (never aborts). */
static size_t live_block_size(uintptr_t a) {
    if (!a || (a & (TM_ALIGN - 1))) return 0;
    uintptr_t e = pagemap_lookup(a);
    tm_chunk_t *c = chunk_of_entry(e);
    if (c) {
        uint32_t page = (uint32_t)((a - c->base) >> TM_PAGE_SHIFT);
        uint32_t f = __atomic_load_n(&c->fast[page], __ATOMIC_RELAXED);
        if (f & 0xff) {
            uint32_t idx;
            if (!slab_of(c, a, &idx)) return 0;
            if (*tm_cookie_slot((void *)a) == tm_cookie_of((void *)a))
                return 0; /* freed */
            return tm_classes[f & 0xff].size;
        }
        return (a & TM_PAGE_MASK) ? 0 : arena_large_usable(c, page, NULL);
    }
    if (!e) return 0;
    tm_huge_t *h = (tm_huge_t *)e;
    huge_lock();
    size_t n = (h->base == a && !h->freed_ns) ? h->size : 0;
    huge_unlock();
    return n;
}

typedef struct huge_read {
    uintptr_t at, word;
    bool ok;
} huge_read_t;

static void huge_read_one(tm_huge_t *h, void *arg) {
    huge_read_t *r = arg;
    /* not one being resized: its pages may be moving, or its tail unmapped
     * already, while base and size still say what it was (a reviewer) */
    if (!r->ok && !h->freed_ns && !h->moving && r->at >= h->base && r->at - h->base <= h->size - PTR_SZ) {
        r->word = *(const uintptr_t *)r->at;
        r->ok = true;
    }
}

/* Read the word at `at` if it lies in memory of ours that is mapped: an
 * arena chunk, or the usable bytes of a live huge block. */
static bool read_heap_word(uintptr_t at, uintptr_t *out) {
    uintptr_t e = pagemap_lookup(at);
    if (e & 1) {
        *out = *(const uintptr_t *)at;
        return true;
    }
    huge_read_t r = {at, 0, false};
    huge_lock();
    e = pagemap_lookup(at); /* again, now that no huge block can come or go */
    if (e) huge_read_one((tm_huge_t *)e, &r);
    if (!r.ok) huge_foreach_locked(huge_read_one, &r); /* a later chunk of a big one */
    huge_unlock();
    *out = r.word;
    return r.ok;
}

/* The raw block behind aligned pointer p, and the usable bytes from p on;
 * 0 after reporting a bad pointer (when abort_on_error:0 lets us return). */
static uintptr_t aligned_raw(void *p, const char *call, size_t *usable) {
    uintptr_t u = (uintptr_t)p, raw;
    if (u >= 2 * PTR_SZ) {
        uintptr_t hdr = (u & ~(uintptr_t)(PTR_SZ - 1)) - PTR_SZ;
        if (read_heap_word(hdr, &raw) && raw <= hdr) {
            size_t n = live_block_size(raw);
            /* p < raw + n: a zero-size block still ends past p, since the
             * slack (align - 1 + PTR_SZ) is odd and block sizes are not */
            if (n && hdr + PTR_SZ <= raw + n && u < raw + n) {
                *usable = raw + n - u;
                return raw;
            }
        }
    }
    tm_invalid_pointer(call, p);
    errno = EINVAL;
    return 0;
}

static void *aligned_alloc_impl(size_t size, size_t align, size_t offset, bool zero) {
    if (!pow2(align) || (offset != 0 && offset >= size)) {
        errno = EINVAL;
        return NULL;
    }
    if (align < PTR_SZ) align = PTR_SZ;
    size_t total;
    if (size > PTRDIFF_MAX || __builtin_add_overflow(size, align - 1 + PTR_SZ, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    void *raw = zero ? TM_API(calloc)(1, total) : tm_malloc_impl(total);
    if (!raw) return NULL;
    /* raw is 16-aligned, so u >= raw + PTR_SZ puts the header word at or
     * above raw; u <= raw + PTR_SZ + align - 1 keeps u + size inside */
    uintptr_t u = (((uintptr_t)raw + PTR_SZ + offset + align - 1) & ~(uintptr_t)(align - 1)) -
                  offset;
    ((void **)(u & ~(uintptr_t)(PTR_SZ - 1)))[-1] = raw;
    return (void *)u;
}

static void *aligned_realloc_impl(void *p, size_t size, size_t align, size_t offset,
                                  const char *call) {
    if (!p) return aligned_alloc_impl(size, align, offset, false);
    if (size == 0) {
        size_t ignored;
        uintptr_t raw = aligned_raw(p, call, &ignored);
        if (raw) tm_free_impl((void *)raw);
        return NULL;
    }
    if (!pow2(align) || (offset != 0 && offset >= size)) {
        errno = EINVAL;
        return NULL;
    }
    size_t old;
    uintptr_t raw = aligned_raw(p, call, &old);
    if (!raw) return NULL;
    uintptr_t u = (uintptr_t)p;
    size_t al = align < PTR_SZ ? PTR_SZ : align;
    if ((u + offset) % al == 0 && size <= PTRDIFF_MAX) {
        /* same alignment: shrink or grow the raw block where it is (a
         * shrink that cannot give memory back still fits) */
        size_t raw_usable = (u - raw) + old, need = (u - raw) + size;
        if (expand_in_place((void *)raw, raw_usable, need)) {
            if (unlikely(tm_opt.zero | tm_opt.junk)) tm_fill_grown((void *)raw, raw_usable);
            return p;
        }
        if (size <= old) return p;
    }
    void *q = aligned_alloc_impl(size, align, offset, false);
    if (!q) return NULL;
    size_t nu;
    (void)aligned_raw(q, call, &nu);
    memcpy(q, p, old < nu ? old : nu);
    tm_free_impl((void *)raw);
    return q;
}

static void *aligned_recalloc_impl(void *p, size_t num, size_t size, size_t align,
                                   size_t offset, const char *call) {
    size_t total;
    if (__builtin_mul_overflow(num, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    size_t old = 0, nu;
    void *q;
    if (!p) {
        q = aligned_alloc_impl(total, align, offset, true);
    } else {
        if (!aligned_raw(p, call, &old)) return NULL;
        q = aligned_realloc_impl(p, total, align, offset, call);
    }
    if (!q) return NULL;
    (void)aligned_raw(q, call, &nu);
    zero_range(q, old < total ? old : total, nu);
    return q;
}

TM_EXPORT void *TM_API(_aligned_malloc)(size_t size, size_t alignment) {
    return aligned_alloc_impl(size, alignment, 0, false);
}

TM_EXPORT void *TM_API(_aligned_offset_malloc)(size_t size, size_t alignment, size_t offset) {
    return aligned_alloc_impl(size, alignment, offset, false);
}

TM_EXPORT void *TM_API(_aligned_realloc)(void *memblock, size_t size, size_t alignment) {
    return aligned_realloc_impl(memblock, size, alignment, 0, "_aligned_realloc");
}

TM_EXPORT void *TM_API(_aligned_offset_realloc)(void *memblock, size_t size, size_t alignment,
                                                size_t offset) {
    return aligned_realloc_impl(memblock, size, alignment, offset, "_aligned_offset_realloc");
}

TM_EXPORT void *TM_API(_aligned_recalloc)(void *memblock, size_t num, size_t size,
                                          size_t alignment) {
    return aligned_recalloc_impl(memblock, num, size, alignment, 0, "_aligned_recalloc");
}

TM_EXPORT void *TM_API(_aligned_offset_recalloc)(void *memblock, size_t num, size_t size,
                                                 size_t alignment, size_t offset) {
    return aligned_recalloc_impl(memblock, num, size, alignment, offset,
                                 "_aligned_offset_recalloc");
}

TM_EXPORT size_t TM_API(_aligned_msize)(void *memblock, size_t alignment, size_t offset) {
    (void)offset;
    if (!memblock || !pow2(alignment)) {
        errno = EINVAL;
        return (size_t)-1;
    }
    size_t n;
    if (!aligned_raw(memblock, "_aligned_msize", &n)) return (size_t)-1;
    return n;
}

TM_EXPORT void TM_API(_aligned_free)(void *memblock) {
    if (!memblock) return;
    size_t ignored;
    uintptr_t raw = aligned_raw(memblock, "_aligned_free", &ignored);
    if (raw) tm_free_impl((void *)raw);
}
