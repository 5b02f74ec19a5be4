/*
 * slab_pool.c (unit) -- the slab descriptor pool of a chunk: slots handed
 * out lowest first, packed down by _heapmin, which gives back the pool
 * pages above the last live slot; and a slab made while a give-back is
 * under way waits for it instead of writing a page being given back.
 *
 * Each test uses an arena of its own (an index no thread is bound to), so
 * its slabs are the only ones in its chunks.
 */
#include "test_cmocka.h"
#include "internal.h"

#include <sys/mman.h>
#include <time.h>

/* A class whose slabs are one page, with at least `min` blocks. */
static unsigned one_page_class(uint32_t min) {
    for (unsigned c = 1; c <= TM_NCLASSES; c++)
        if (tm_classes[c].slab_pages == 1 && tm_classes[c].nblocks >= min) return c;
    fail_msg("no one-page class");
    return 0;
}

static bool page_resident(const void *p) {
    unsigned char v = 0;
    void *pg = (void *)((uintptr_t)p & ~(uintptr_t)TM_PAGE_MASK);
    assert_int_equal(mincore(pg, TM_PAGE, &v), 0);
    return v & 1;
}

static bool slot_used(const tm_chunk_t *c, uint32_t s) {
    return (c->slab_used[s >> 6] >> (s & 63)) & 1;
}

/* The blocks a refill hands out carry their cookie, as in a thread cache;
 * these helpers turn one into a block the program holds and back. */
static void take(void *p, unsigned char fill, size_t size) {
    *tm_cookie_slot(p) = 0;
    memset(p, fill, 8);
    memset((char *)p + 16, fill, size - 16);
}

static void give_back(void *p) { *tm_cookie_slot(p) = tm_cookie_of(p); }

enum { NSLABS = 600, EVERY = 40 };

static void test_heapmin_packs_slabs_and_gives_back_the_pool(void **state) {
    (void)state;
    tm_init();
    tm_arena_t *a = arena_get(TM_MAX_ARENAS - 1);
    assert_non_null(a);
    const unsigned cls = one_page_class(4);
    const uint32_t nb = tm_classes[cls].nblocks, size = tm_classes[cls].size;
    const unsigned total = NSLABS * nb;
    void **blocks = calloc(total, sizeof *blocks);
    assert_non_null(blocks);
    for (unsigned got = 0; got < total;) {
        unsigned n = arena_refill(a, cls, blocks + got, total - got);
        assert_true(n > 0);
        got += n;
    }
    tm_chunk_t *c = chunk_of_entry(pagemap_lookup((uintptr_t)blocks[0]));
    assert_non_null(c);
    /* every slab in that one chunk, made in page order: lowest slot first */
    pthread_mutex_lock(&a->lock);
    assert_int_equal(a->nchunks, 1);
    assert_int_equal(c->nslabs, NSLABS);
    assert_int_equal(c->slab_hwm, NSLABS);
    for (uint32_t s = 0; s < NSLABS; s++) assert_true(slot_used(c, s));
    pthread_mutex_unlock(&a->lock);
    const void *high = &c->slabs[NSLABS - 1];
    assert_true(page_resident(high));

    /* keep the first block of every EVERY-th slab (their slots are high,
     * scattered), give back the rest */
    void *keep[NSLABS / EVERY];
    unsigned nkeep = 0, nback = 0;
    for (unsigned i = 0; i < total; i++) {
        uintptr_t p = (uintptr_t)blocks[i];
        uint32_t page = (uint32_t)((p - c->base) >> TM_PAGE_SHIFT);
        if (page % EVERY == EVERY - 1 && (p & TM_PAGE_MASK) == 0) {
            keep[nkeep] = blocks[i];
            take(keep[nkeep], (unsigned char)(0x40 + nkeep), size);
            nkeep++;
        } else {
            blocks[nback++] = blocks[i];
        }
    }
    assert_int_equal(nkeep, NSLABS / EVERY);
    arena_flush(cls, blocks, nback);

    assert_int_equal(TM_API(_heapmin)(), 0);

    pthread_mutex_lock(&a->lock);
    /* the survivors' slabs fill the lowest slots, and nothing above */
    assert_int_equal(c->nslabs, nkeep);
    assert_int_equal(c->slab_hwm, nkeep);
    assert_int_equal(c->slab_busy, 0);
    for (uint32_t s = 0; s < TM_CHUNK_PAGES; s++) assert_int_equal(slot_used(c, s), s < nkeep);
    for (unsigned k = 0; k < nkeep; k++) {
        uint32_t page = (uint32_t)(((uintptr_t)keep[k] - c->base) >> TM_PAGE_SHIFT);
        tm_slab_t *sl = chunk_slab(c, page);
        assert_non_null(sl);
        assert_true(sl - c->slabs < (ptrdiff_t)nkeep);
        assert_int_equal(sl->start, chunk_page_addr(c, page));
        assert_int_equal(sl->nblocks - sl->nfree, 1);
        uint32_t idx;
        assert_ptr_equal(slab_of(c, (uintptr_t)keep[k], &idx), sl);
        assert_int_equal(idx, 0);
    }
    pthread_mutex_unlock(&a->lock);
    /* the pool pages above them went back to the kernel */
    assert_false(page_resident(high));
    /* lock-free readers find the moved descriptors */
    for (unsigned k = 0; k < nkeep; k++) {
        assert_false(arena_block_is_free(keep[k]));
        assert_true(arena_block_is_free((char *)keep[k] + size));
    }
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);

    /* the survivors are intact, and free normally */
    for (unsigned k = 0; k < nkeep; k++) {
        const unsigned char *b = keep[k];
        for (size_t j = 0; j < size; j++)
            if (j < 8 || j >= 16) assert_int_equal(b[j], 0x40 + k);
        give_back(keep[k]);
    }
    arena_flush(cls, keep, nkeep);
    assert_int_equal(TM_API(_heapmin)(), 0);
    pthread_mutex_lock(&a->lock);
    assert_int_equal(a->nchunks, 0); /* empty: unmapped */
    pthread_mutex_unlock(&a->lock);
    free(blocks);
}

/* ---- a slab made while the pool is being given back ---------------------- */

typedef struct maker {
    tm_arena_t *a;
    unsigned cls;
    void *block;
    unsigned got;
    volatile int done;
} maker_t;

static void *make_slab(void *arg) {
    maker_t *m = arg;
    m->got = arena_refill(m->a, m->cls, &m->block, 1);
    __atomic_store_n(&m->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void test_slab_waits_for_the_pool_give_back(void **state) {
    (void)state;
    tm_init();
    tm_arena_t *a = arena_get(TM_MAX_ARENAS - 2);
    assert_non_null(a);
    unsigned cls1 = one_page_class(2), cls2 = 0;
    for (unsigned k = cls1 + 1; k <= TM_NCLASSES && !cls2; k++)
        if (tm_classes[k].slab_pages == 1) cls2 = k;
    assert_true(cls2 != 0);
    void *b1;
    assert_int_equal(arena_refill(a, cls1, &b1, 1), 1);
    tm_chunk_t *c = chunk_of_entry(pagemap_lookup((uintptr_t)b1));
    /* as a give-back does: every free slot is on a page being given back */
    pthread_mutex_lock(&a->lock);
    assert_int_equal(c->nslabs, 1);
    c->slab_busy = (1u << 17) - 1;
    pthread_mutex_unlock(&a->lock);

    maker_t m = {.a = a, .cls = cls2};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, make_slab, &m), 0);
    /* it cannot finish while the pages are busy: give it time to get stuck */
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
    assert_int_equal(__atomic_load_n(&m.done, __ATOMIC_ACQUIRE), 0);
    pthread_mutex_lock(&a->lock);
    /* its run is held as PAGE_UNUSED: no free merges into it */
    unsigned held = 0;
    for (uint32_t p = 0; p < TM_CHUNK_PAGES; p += c->pages[p].npages ? c->pages[p].npages : 1)
        held += c->pages[p].kind == PAGE_UNUSED;
    assert_int_equal(held, 1);
    c->slab_busy = 0;
    pthread_mutex_unlock(&a->lock);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(m.got, 1);

    pthread_mutex_lock(&a->lock);
    assert_int_equal(c->nslabs, 2);
    uint32_t page = (uint32_t)(((uintptr_t)m.block - c->base) >> TM_PAGE_SHIFT);
    assert_ptr_equal(chunk_slab(c, page), &c->slabs[1]); /* the lowest free slot */
    pthread_mutex_unlock(&a->lock);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    arena_flush(cls1, &b1, 1);
    arena_flush(cls2, &m.block, 1);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heapmin_packs_slabs_and_gives_back_the_pool),
        cmocka_unit_test(test_slab_waits_for_the_pool_give_back),
    };
    return cmocka_run_group_tests_name("unit_slab_pool", tests, NULL, NULL);
}
