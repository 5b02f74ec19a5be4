/*
 * runs.c (unit) -- page runs inside chunks: carving with alignment, freeing
 * with coalescing, and purge giving back whole empty chunks.
 */
#include "test_cmocka.h"
#include "internal.h"

/* Walk a chunk's runs: they must tile it exactly, and no two free runs may
 * be neighbours (coalescing). Returns the number of free runs. */
static unsigned check_chunk(tm_chunk_t *c) {
    uint32_t p = 0, free_pages = 0;
    unsigned nfree = 0;
    bool prev_free = false;
    while (p < TM_CHUNK_PAGES) {
        tm_page_t *h = &c->pages[p];
        assert_true(h->npages >= 1 && p + h->npages <= TM_CHUNK_PAGES);
        bool is_free = h->kind == PAGE_FREE;
        if (is_free) {
            assert_false(prev_free);
            nfree++;
            free_pages += h->npages;
            if (h->npages > 1) {
                assert_int_equal(c->pages[p + h->npages - 1].kind, PAGE_FREE);
                assert_int_equal(c->pages[p + h->npages - 1].npages, h->npages);
            }
        } else {
            assert_true(h->kind == PAGE_LARGE || h->kind == PAGE_SLAB);
        }
        prev_free = is_free;
        p += h->npages;
    }
    assert_int_equal(p, TM_CHUNK_PAGES);
    assert_int_equal(free_pages, c->free_pages);
    return nfree;
}

static void test_large_runs_coalesce(void **state) {
    (void)state;
    tm_init();
    tm_arena_t *a = arena_get(tm_narenas - 1);
    assert_non_null(a);
    enum { N = 8 };
    void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = arena_alloc_large(a, 64 * 1024, 0, false);
        assert_non_null(p[i]);
        memset(p[i], i, 64 * 1024);
    }
    tm_chunk_t *c = chunk_of_entry(pagemap_lookup((uintptr_t)p[0]));
    assert_non_null(c);
    /* free every other run: the holes cannot merge */
    for (int i = 0; i < N; i += 2) {
        tm_chunk_t *ci = chunk_of_entry(pagemap_lookup((uintptr_t)p[i]));
        arena_free_large(ci, (uint32_t)(((uintptr_t)p[i] - ci->base) >> TM_PAGE_SHIFT), p[i]);
    }
    arena_lock(a);
    run_stash_flush_locked(a); /* the arena's last freed runs, to the index too */
    unsigned holes = check_chunk(c);
    arena_unlock(a);
    assert_true(holes >= N / 2);
    /* the survivors are intact */
    for (int i = 1; i < N; i += 2)
        for (size_t j = 0; j < 64 * 1024; j += 4096) assert_int_equal(((unsigned char *)p[i])[j], i);
    /* free the rest: everything merges back to one free run per chunk */
    for (int i = 1; i < N; i += 2) {
        tm_chunk_t *ci = chunk_of_entry(pagemap_lookup((uintptr_t)p[i]));
        arena_free_large(ci, (uint32_t)(((uintptr_t)p[i] - ci->base) >> TM_PAGE_SHIFT), p[i]);
    }
    arena_lock(a);
    run_stash_flush_locked(a);
    for (tm_chunk_t *it = a->chunks; it; it = it->next)
        if (it->free_pages == TM_CHUNK_PAGES) assert_int_equal(check_chunk(it), 1);
    arena_unlock(a);
}

static uint32_t page_of(void *p, tm_chunk_t **c_out) {
    tm_chunk_t *c = chunk_of_entry(pagemap_lookup((uintptr_t)p));
    assert_non_null(c);
    *c_out = c;
    return (uint32_t)(((uintptr_t)p - c->base) >> TM_PAGE_SHIFT);
}

static void large_free(void *p) {
    tm_chunk_t *c;
    uint32_t page = page_of(p, &c);
    arena_free_large(c, page, p);
}

/* The arena's last freed large runs (chunk.c): a run of the same length is
 * the newest of them; one of another length that would take pages not
 * resident empties them into the index first; they are bounded; a freed
 * one reads as freed. */
/* The arena the kept-run tests use, with no run kept yet, and no free page
 * resident (the purge gives them back: a run of another length then always
 * takes pages that are not). */
static tm_arena_t *arena_without_kept_runs(void) {
    tm_init();
    tm_arena_t *a = arena_get(tm_narenas - 1);
    assert_non_null(a);
    arena_purge(a, false, NULL);
    arena_lock(a);
    assert_int_equal(a->nstash, 0);
    arena_unlock(a);
    return a;
}

static void test_last_freed_runs(void **state) {
    (void)state;
    tm_arena_t *a = arena_without_kept_runs();

    /* a block that stays: kept runs never hold a chunk alone (below) */
    void *anchor = arena_alloc_large(a, 8192, 0, false);
    void *x = arena_alloc_large(a, 64 * 1024, 0, false), *y = arena_alloc_large(a, 64 * 1024, 0, false);
    void *z = arena_alloc_large(a, 32 * 1024, 0, false);
    memset(x, 1, 64 * 1024);
    large_free(x);
    large_free(z);
    large_free(y);
    assert_int_equal(a->nstash, 3);
    assert_int_equal(a->stash_pages, 16 + 8 + 16);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    /* freed: no usable size, and named freed (a second free() is a double free) */
    tm_chunk_t *c;
    uint32_t page = page_of(x, &c);
    bool freed = false;
    assert_int_equal(arena_large_usable(c, page, &freed), 0);
    assert_true(freed);

    /* the same length: the newest of that length, as it was */
    assert_ptr_equal(arena_alloc_large(a, 64 * 1024, 0, false), y);
    assert_ptr_equal(arena_alloc_large(a, 64 * 1024 - 100, 0, false), x); /* 16 pages too */
    assert_int_equal(((unsigned char *)x)[0], 1);
    assert_int_equal(a->nstash, 1);
    /* another length, on pages not resident: every kept run goes to the
     * index first */
    void *w = arena_alloc_large(a, 128 * 1024, 0, false);
    assert_non_null(w);
    assert_int_equal(a->nstash, 0);
    assert_int_equal(a->stash_pages, 0);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    large_free(w);
    large_free(x);
    large_free(y);

    /* bounded: at most TM_STASH_SLOTS runs, 1024 pages (4 MiB) together
     * (16 and 256 until 2026-12-08) */
    enum { M = TM_STASH_SLOTS + 4 };
    void *p[M];
    for (int i = 0; i < M; i++) p[i] = arena_alloc_large(a, 8192, 0, false);
    for (int i = 0; i < M; i++) large_free(p[i]);
    assert_int_equal(a->nstash, TM_STASH_SLOTS);
    /* runs of 1 MiB and more, over more than one chunk: the kept pages
     * pass the old bound of 256 and never the new one (exact counts
     * depend on which chunk each run lands in: a chunk whose last block
     * goes frees its kept runs too, below) */
    static const size_t lens[] = {1 << 20, 1 << 20, 1 << 20, (1 << 20) + 4096, 2 << 20, 1 << 20};
    enum { NL = sizeof lens / sizeof lens[0] };
    void *big[NL];
    for (int i = 0; i < NL; i++) {
        big[i] = arena_alloc_large(a, lens[i], 0, false);
        assert_non_null(big[i]);
        if (i == 0) assert_int_equal(a->nstash, 0); /* another length: the kept runs went */
    }
    size_t most = 0;
    for (int i = 0; i < NL; i++) {
        large_free(big[i]);
        assert_true(a->nstash <= TM_STASH_SLOTS);
        assert_true(a->stash_pages <= 1024);
        if (a->stash_pages > most) most = a->stash_pages;
    }
    if (most <= 256) fail_msg("the kept runs never passed 256 pages (%zu)", most);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);

    /* the anchor's chunk: once nothing but kept runs is left in it, they
     * go too, and the chunk is empty (for another arena to adopt) */
    tm_chunk_t *ac;
    (void)page_of(anchor, &ac);
    large_free(anchor);
    arena_lock(a);
    for (unsigned i = 0; i < a->nstash; i++) assert_true(a->stash[i].c != ac);
    assert_int_equal(ac->stash_pages, 0);
    assert_int_equal(ac->free_pages, TM_CHUNK_PAGES);
    arena_unlock(a);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

/* A run of another length whose pages in the index are all resident is
 * carved there, and the kept runs stay kept: with random lengths they
 * were all freed into the index at almost every allocation until
 * 2026-12-06, and no block came back where one of its length had been. */
static void test_kept_runs_stay_for_a_resident_fit(void **state) {
    (void)state;
    tm_arena_t *a = arena_without_kept_runs();
    void *anchor = arena_alloc_large(a, 8192, 0, false);
    void *q = arena_alloc_large(a, 48 * 1024, 0, false); /* 12 pages */
    void *sep = arena_alloc_large(a, 8192, 0, false);
    void *s = arena_alloc_large(a, 16 * 1024, 0, false); /* 4 pages */
    void *sep2 = arena_alloc_large(a, 8192, 0, false);
    memset(q, 1, 48 * 1024);
    large_free(q);
    arena_lock(a);
    run_stash_flush_locked(a); /* q's pages: a resident free run of the index */
    arena_unlock(a);
    large_free(s);
    assert_int_equal(a->nstash, 1);
    /* 10 pages: q's run is the best fit, and resident */
    void *w = arena_alloc_large(a, 40 * 1024, 0, false);
    assert_ptr_equal(w, q);
    assert_int_equal(a->nstash, 1);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    /* 16 pages: only pages given back fit, so the kept run goes first */
    void *v = arena_alloc_large(a, 64 * 1024, 0, false);
    assert_non_null(v);
    assert_int_equal(a->nstash, 0);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    large_free(v);
    large_free(w);
    large_free(sep2);
    large_free(sep);
    large_free(anchor);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

/* A slab cut from a kept run: the run's pages were a block's, so they
 * read as possibly resident, for _heapmin's slab purge and the resident
 * statistic to see them (until 2026-12-06 they kept the bits of the fresh
 * pages the block had been carved from: 0, and _heapmin left them in
 * memory; an outside reviewer). */
static void test_a_slab_from_a_kept_run_is_resident(void **state) {
    (void)state;
    tm_init();
    unsigned cls = size_class_of(1792);
    if (tm_classes[cls].slab_pages < 2) skip();
    size_t bytes = (size_t)tm_classes[cls].slab_pages * TM_PAGE;
    tm_arena_t *a = arena_without_kept_runs();
    void *anchor = arena_alloc_large(a, 8192, 0, false);
    unsigned char *x = arena_alloc_large(a, bytes, 0, false);
    assert_non_null(x);
    memset(x, 7, bytes);
    /* as if carved from fresh pages (the bits of a block in use say
     * nothing; this arena's earlier runs may have left them set) */
    tm_chunk_t *c;
    uint32_t page = page_of(x, &c);
    arena_lock(a);
    chunk_resident_set(c, page, tm_classes[cls].slab_pages, false);
    arena_unlock(a);
    large_free(x);
    assert_int_equal(a->nstash, 1);
    void *blk = NULL;
    assert_int_equal(arena_refill(a, cls, &blk, 1), 1);
    assert_int_equal(a->nstash, 0); /* the slab took the kept run */
    assert_ptr_equal((void *)((uintptr_t)blk & ~(uintptr_t)TM_PAGE_MASK), x);
    arena_lock(a);
    assert_int_equal(chunk_resident_count(c, page, tm_classes[cls].slab_pages), tm_classes[cls].slab_pages);
    arena_unlock(a);
    arena_flush(cls, &blk, 1);
    large_free(anchor);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

static void test_aligned_runs(void **state) {
    (void)state;
    tm_init();
    tm_arena_t *a = arena_get(0);
    for (size_t align = 8192; align <= (size_t)1 << 20; align <<= 1) {
        void *p = arena_alloc_large(a, 40000, align, true);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % align, 0);
        for (size_t j = 0; j < 40000; j++) assert_int_equal(((unsigned char *)p)[j], 0);
        tm_chunk_t *c = chunk_of_entry(pagemap_lookup((uintptr_t)p));
        arena_free_large(c, (uint32_t)(((uintptr_t)p - c->base) >> TM_PAGE_SHIFT), p);
        arena_lock(a);
        check_chunk(c);
        arena_unlock(a);
    }
}

/* A large block of arena 0, with its chunk and page. */
typedef struct large {
    tm_arena_t *a;
    tm_chunk_t *c;
    uint32_t page;
    void *p;
} large_t;

static large_t arena0_large(size_t size) {
    tm_init();
    large_t b = {.a = arena_get(0)};
    b.p = arena_alloc_large(b.a, size, 0, false);
    assert_non_null(b.p);
    b.c = chunk_of_entry(pagemap_lookup((uintptr_t)b.p));
    b.page = (uint32_t)(((uintptr_t)b.p - b.c->base) >> TM_PAGE_SHIFT);
    return b;
}

static void test_resize_in_place(void **state) {
    (void)state;
    large_t b = arena0_large(100 * 1024);
    assert_true(arena_large_resize_in_place(b.c, b.page, 40 * 1024));
    assert_int_equal(arena_large_usable(b.c, b.page, NULL), 40 * 1024);
    arena_lock(b.a);
    check_chunk(b.c);
    arena_unlock(b.a);
    /* the pages just given back are free right after it: growing works */
    assert_true(arena_large_resize_in_place(b.c, b.page, 90 * 1024));
    assert_int_equal(arena_large_usable(b.c, b.page, NULL), 92 * 1024);
    arena_free_large(b.c, b.page, b.p);
}

/* A run the allocator holds for itself -- a growth purge or decay gives
 * its pages back with the lock dropped, and marks it PAGE_LARGE with a
 * zero page entry meanwhile (run_hold_locked) -- is no block of the
 * program's: a late double free of an address it starts with is reported
 * and frees nothing (until 2026-12-05 it freed the run under the purge's
 * madvise, found by a reviewer), and realloc, malloc_usable_size and
 * _heapwalk do not take it for a live block. Simulated with a block whose
 * entry is cleared (the state run_hold_locked leaves); abort_on_error:0
 * lets the reports through. */
static void test_a_held_run_is_not_the_programs(void **state) {
    (void)state;
    large_t b = arena0_large(64 * 1024);
    uint32_t entry = __atomic_load_n(&b.c->fast[b.page], __ATOMIC_RELAXED);
    assert_true(entry & TM_FAST_LARGE);
    __atomic_store_n(&b.c->fast[b.page], 0, __ATOMIC_RELAXED); /* held by the allocator now */
    size_t held = b.a->large_allocated;
    long abort_was = tm_opt.abort_on_error;
    tm_opt.abort_on_error = 0;
    arena_free_large(b.c, b.page, b.p);
    bool freed = false;
    size_t usable = arena_large_usable(b.c, b.page, &freed);
    bool resized = arena_large_resize_in_place(b.c, b.page, 32 * 1024);
    tm_opt.abort_on_error = abort_was;
    /* _heapwalk lists it as free to the program */
    _HEAPINFO e = {0};
    int useflag = -1;
    while (TM_API(_heapwalk)(&e) == _HEAPOK)
        if ((void *)e._pentry == b.p) useflag = e._useflag;
    assert_int_equal(useflag, _FREEENTRY);
    assert_int_equal(b.c->pages[b.page].kind, PAGE_LARGE); /* still held, still whole */
    assert_int_equal(b.c->pages[b.page].npages, 16);
    assert_int_equal(b.a->large_allocated, held);
    assert_int_equal(usable, 0);
    assert_true(freed); /* named a double free */
    assert_false(resized);
    /* the program's again: freed as usual */
    __atomic_store_n(&b.c->fast[b.page], entry, __ATOMIC_RELAXED);
    arena_free_large(b.c, b.page, b.p);
    assert_int_equal(b.a->large_allocated, held - 64 * 1024);
    arena_lock(b.a);
    check_chunk(b.c);
    arena_unlock(b.a);
}

static void test_purge_unmaps_empty_chunks(void **state) {
    (void)state;
    tm_init();
    tm_arena_t *a = arena_get(tm_narenas > 1 ? 1 : 0);
    void *p[6];
    for (int i = 0; i < 6; i++) { /* > 1 chunk's worth */
        p[i] = arena_alloc_large(a, 1536 * 1024, 0, false);
        assert_non_null(p[i]);
        memset(p[i], 0xab, 1536 * 1024);
    }
    for (int i = 0; i < 6; i++) {
        tm_chunk_t *c = chunk_of_entry(pagemap_lookup((uintptr_t)p[i]));
        arena_free_large(c, (uint32_t)(((uintptr_t)p[i] - c->base) >> TM_PAGE_SHIFT), p[i]);
    }
    size_t released = arena_purge(a, true, NULL);
    assert_true(released >= 6 * 1536 * 1024);
    arena_lock(a);
    for (tm_chunk_t *it = a->chunks; it; it = it->next) {
        assert_true(it->free_pages < TM_CHUNK_PAGES); /* no empty chunk kept */
        check_chunk(it);
    }
    arena_unlock(a);
    /* an address in an unmapped chunk is no longer ours */
    assert_int_equal(pagemap_lookup((uintptr_t)p[0]) & 1, 0);
}

/* A purge gives back, and counts, only the pages of a free run that may be
 * resident: a run freed next to a purged one is dirty as a whole, but only
 * its own pages were handed out since. Until 2026-12-07 the whole merged
 * run went to madvise and counted as released: an outside tester's loop of
 * malloc(20000), free, _heapmin counted 4 MiB a call (4 GB after 1000
 * calls) while the process's RSS never moved. */
static void test_purge_counts_only_resident_pages(void **state) {
    (void)state;
    tm_init();
    tm_arena_t *a = arena_get(TM_MAX_ARENAS - 3); /* no thread, no run kept */
    assert_non_null(a);
    void *anchor = arena_alloc_large(a, 8192, 0, false); /* its chunk stays */
    assert_non_null(anchor);
    arena_purge(a, true, NULL);
    assert_int_equal(arena_purge(a, true, NULL), 0); /* nothing resident is free */
    for (int round = 0; round < 3; round++) {
        void *p = arena_alloc_large(a, 20000, 0, false); /* 5 pages */
        assert_non_null(p);
        memset(p, 0x5a, 20000);
        large_free(p); /* kept, then into the index by the purge: next to the clean rest */
        size_t released = arena_purge(a, true, NULL);
        if (released != 5 * TM_PAGE)
            fail_msg("round %d: the purge after a 5-page run was freed counted %zu bytes", round,
                     released);
        assert_int_equal(arena_purge(a, true, NULL), 0);
    }
    arena_lock(a);
    for (tm_chunk_t *it = a->chunks; it; it = it->next) check_chunk(it);
    arena_unlock(a);
    large_free(anchor);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_large_runs_coalesce),
        cmocka_unit_test(test_last_freed_runs),
        cmocka_unit_test(test_kept_runs_stay_for_a_resident_fit),
        cmocka_unit_test(test_a_slab_from_a_kept_run_is_resident),
        cmocka_unit_test(test_aligned_runs),
        cmocka_unit_test(test_resize_in_place),
        cmocka_unit_test(test_a_held_run_is_not_the_programs),
        cmocka_unit_test(test_purge_unmaps_empty_chunks),
        cmocka_unit_test(test_purge_counts_only_resident_pages),
    };
    return cmocka_run_group_tests_name("unit_runs", tests, NULL, NULL);
}
