/*
 * chunk.c -- chunks and the page runs inside them: carving, freeing with
 * immediate coalescing, and purging free pages back to the kernel.
 *
 * Free runs of an arena are indexed by exact length (1..1024 pages) in
 * doubly linked lists, with a bitmap of non-empty lengths, so a best fit is
 * a bit scan. A run's first and last page entries carry its kind and
 * length; that is what lets a freed run find and merge its neighbours in
 * O(1). Every function with _locked runs under the arena's lock.
 */
#include "internal.h"

/* ---- free-run index ------------------------------------------------------ */

void runs_index_insert_locked(tm_arena_t *a, tm_chunk_t *c, tm_page_t *head) {
    uint32_t n = head->npages;
    head->index = (uint16_t)(head - c->pages);
    head->prev = NULL;
    head->next = a->runs[n];
    if (head->next) head->next->prev = head;
    a->runs[n] = head;
    a->runs_nonempty[n >> 6] |= 1ull << (n & 63);
}

void runs_index_remove_locked(tm_arena_t *a, tm_page_t *head) {
    uint32_t n = head->npages;
    if (head->prev) head->prev->next = head->next;
    else a->runs[n] = head->next;
    if (head->next) head->next->prev = head->prev;
    if (!a->runs[n]) a->runs_nonempty[n >> 6] &= ~(1ull << (n & 63));
    head->next = head->prev = NULL;
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

tm_chunk_t *run_alloc_locked(tm_arena_t *a, size_t npages, size_t align_pages,
                             uint32_t *page_out, bool *zeroed_out) {
    size_t need = npages + (align_pages > 1 ? align_pages - 1 : 0);
    if (need > TM_CHUNK_PAGES) return NULL;
    uint32_t len = runs_find_locked(a, (uint32_t)need);
    if (!len) return NULL;
    tm_page_t *h = a->runs[len];
    runs_index_remove_locked(a, h);
    tm_chunk_t *c = page_chunk(h);
    uint32_t page = chunk_page_index(c, h);
    bool zeroed = h->zeroed, dirty = h->dirty;
    h->kind = PAGE_INTERIOR;
    c->pages[page + len - 1].kind = PAGE_INTERIOR;
    uint32_t start = page;
    if (align_pages > 1) {
        uintptr_t addr = chunk_page_addr(c, page);
        uintptr_t al = align_pages << TM_PAGE_SHIFT;
        start = (uint32_t)((((addr + al - 1) & ~(al - 1)) - c->base) >> TM_PAGE_SHIFT);
    }
    if (start > page) run_insert_free_locked(a, c, page, start - page, zeroed, dirty);
    uint32_t end = start + (uint32_t)npages, rend = page + len;
    if (rend > end) run_insert_free_locked(a, c, end, rend - end, zeroed, dirty);
    for (uint32_t i = start; i < end; i++) c->pages[i].kind = PAGE_INTERIOR;
    c->free_pages -= (uint32_t)npages;
    *page_out = start;
    *zeroed_out = zeroed;
    return c;
}

void run_free_locked(tm_arena_t *a, tm_chunk_t *c, uint32_t page, uint32_t npages) {
    for (uint32_t i = page; i < page + npages; i++) c->fast[i] = 0;
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

/* Give back the pages of chunk c's descriptor that describe nothing: page
 * entries that are neither the first nor the last page of a run, and slab
 * entries of pages where no slab starts. Both read zero afterwards, which is
 * what an unused entry holds (PAGE_INTERIOR is 0; a slab entry is cleared
 * when a slab is made). The descriptor pages are few and madvise of them is
 * quick, so this one runs under the arena lock. */
static size_t chunk_purge_descriptor_locked(tm_chunk_t *c) {
    uint64_t needed_page[TM_CHUNK_PAGES / 64] = {0}, needed_slab[TM_CHUNK_PAGES / 64] = {0};
    for (uint32_t p = 0; p < TM_CHUNK_PAGES;) {
        uint32_t n = c->pages[p].npages;
        if (n == 0 || p + n > TM_CHUNK_PAGES) return 0; /* not a clean walk: leave it */
        needed_page[p >> 6] |= 1ull << (p & 63);
        needed_page[(p + n - 1) >> 6] |= 1ull << ((p + n - 1) & 63);
        if (c->pages[p].kind == PAGE_SLAB) needed_slab[p >> 6] |= 1ull << (p & 63);
        p += n;
    }
    size_t released = 0;
    struct { char *base; size_t esize; const uint64_t *needed; } arrays[2] = {
        {(char *)c->pages, sizeof(tm_page_t), needed_page},
        {(char *)c->slabs, sizeof(tm_slab_t), needed_slab},
    };
    for (int k = 0; k < 2; k++) {
        uintptr_t lo = ((uintptr_t)arrays[k].base + TM_PAGE_MASK) & ~(uintptr_t)TM_PAGE_MASK;
        uintptr_t hi = ((uintptr_t)arrays[k].base + TM_CHUNK_PAGES * arrays[k].esize) &
                       ~(uintptr_t)TM_PAGE_MASK;
        for (uintptr_t pg = lo; pg < hi; pg += TM_PAGE) {
            size_t first = (pg - (uintptr_t)arrays[k].base) / arrays[k].esize;
            size_t last = (pg + TM_PAGE - 1 - (uintptr_t)arrays[k].base) / arrays[k].esize;
            bool used = false;
            for (size_t e = first; e <= last && !used; e++)
                used = (arrays[k].needed[e >> 6] >> (e & 63)) & 1;
            if (!used && os_purge((void *)pg, TM_PAGE) == 0) released += TM_PAGE;
        }
    }
    return released;
}

/* ---- purge ------------------------------------------------------------------
 * Under the lock, take dirty free runs out of the index (their first/last
 * page marked PAGE_UNUSED so neighbours do not merge into them) and detach
 * empty chunks; drop the lock for the madvise/munmap calls; then take the
 * lock again to put the purged runs back, zeroed and clean. Repeats in
 * batches until nothing dirty is left. */
#define PURGE_BATCH 64

size_t arena_purge(tm_arena_t *a, bool unmap_empty, unsigned *failures) {
    size_t released = 0;
    bool may_unmap = unmap_empty;
    for (int round = 0; round < 1 << 16; round++) {
        struct { tm_chunk_t *c; uint32_t page, n; } runs[PURGE_BATCH];
        tm_chunk_t *empty[PURGE_BATCH];
        int nruns = 0, nempty = 0;
        pthread_mutex_lock(&a->lock);
        if (round == 0 && unmap_empty) arena_release_empty_slabs_locked(a);
        for (tm_chunk_t *c = a->chunks, *next; c && nruns < PURGE_BATCH &&
                                               nempty < PURGE_BATCH; c = next) {
            next = c->next;
            if (may_unmap && c->free_pages == TM_CHUNK_PAGES) {
                chunk_detach_locked(a, c);
                empty[nempty++] = c;
                continue;
            }
            for (uint32_t p = 0; p < TM_CHUNK_PAGES && nruns < PURGE_BATCH; ) {
                tm_page_t *h = &c->pages[p]; /* always a run's first page */
                uint32_t n = h->npages;
                tm_assert(n >= 1);
                if (h->kind == PAGE_FREE && h->dirty) {
                    runs_index_remove_locked(a, h);
                    h->kind = PAGE_UNUSED;
                    c->pages[p + n - 1].kind = PAGE_UNUSED;
                    runs[nruns].c = c;
                    runs[nruns].page = p;
                    runs[nruns].n = n;
                    nruns++;
                }
                p += n;
            }
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
            }
            /* a run the kernel would not purge keeps its dirty bytes */
            for (int i = 0; i < nruns; i++)
                run_insert_free_locked(a, runs[i].c, runs[i].page, runs[i].n, purged[i],
                                       !purged[i]);
            pthread_mutex_unlock(&a->lock);
        }
        if (failures) *failures += failed;
        if (failed) break; /* the kernel refuses: do not spin on the same runs */
    }
    /* Chunks that stay: their free pages are gone, so most of their
     * descriptor describes nothing now. One chunk per lock hold. */
    for (size_t i = 0;; i++) {
        pthread_mutex_lock(&a->lock);
        tm_chunk_t *c = a->chunks;
        for (size_t k = 0; c && k < i; k++) c = c->next;
        if (!c) {
            pthread_mutex_unlock(&a->lock);
            break;
        }
        released += chunk_purge_descriptor_locked(c);
        pthread_mutex_unlock(&a->lock);
    }
    return released;
}
