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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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
    arena_lock(a);
    assert_int_equal(a->nchunks, 1);
    assert_int_equal(c->nslabs, NSLABS);
    assert_int_equal(c->slab_hwm, NSLABS);
    for (uint32_t s = 0; s < NSLABS; s++) assert_true(slot_used(c, s));
    arena_unlock(a);
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

    arena_lock(a);
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
    arena_unlock(a);
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
    arena_lock(a);
    assert_int_equal(a->nchunks, 0); /* empty: unmapped */
    arena_unlock(a);
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

/* Arena `index` with one slab (of class *cls1, block *b1) in chunk *c,
 * and every free pool slot of c on a page marked as being given back, as
 * a give-back does: the next slab made there (class *cls2) must wait. */
static tm_arena_t *pool_busy_setup(unsigned index, unsigned *cls1, unsigned *cls2, void **b1,
                                   tm_chunk_t **c) {
    tm_init();
    tm_arena_t *a = arena_get(index);
    assert_non_null(a);
    *cls1 = one_page_class(2);
    *cls2 = 0;
    for (unsigned k = *cls1 + 1; k <= TM_NCLASSES && !*cls2; k++)
        if (tm_classes[k].slab_pages == 1) *cls2 = k;
    assert_true(*cls2 != 0);
    assert_int_equal(arena_refill(a, *cls1, b1, 1), 1);
    *c = chunk_of_entry(pagemap_lookup((uintptr_t)*b1));
    arena_lock(a);
    assert_int_equal((*c)->nslabs, 1);
    (*c)->slab_busy = (1u << 17) - 1;
    arena_unlock(a);
    return a;
}

static void test_slab_waits_for_the_pool_give_back(void **state) {
    (void)state;
    unsigned cls1, cls2;
    void *b1;
    tm_chunk_t *c;
    tm_arena_t *a = pool_busy_setup(TM_MAX_ARENAS - 2, &cls1, &cls2, &b1, &c);

    maker_t m = {.a = a, .cls = cls2};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, make_slab, &m), 0);
    /* it cannot finish while the pages are busy: give it time to get stuck */
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
    assert_int_equal(__atomic_load_n(&m.done, __ATOMIC_ACQUIRE), 0);
    arena_lock(a);
    /* its run is held as PAGE_UNUSED: no free merges into it */
    unsigned held = 0;
    for (uint32_t p = 0; p < TM_CHUNK_PAGES; p += c->pages[p].npages ? c->pages[p].npages : 1)
        held += c->pages[p].kind == PAGE_UNUSED;
    assert_int_equal(held, 1);
    chunk_slab_pool_done_locked(a, c); /* as the give-back ends */
    arena_unlock(a);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(m.got, 1);

    arena_lock(a);
    assert_int_equal(c->nslabs, 2);
    uint32_t page = (uint32_t)(((uintptr_t)m.block - c->base) >> TM_PAGE_SHIFT);
    assert_ptr_equal(chunk_slab(c, page), &c->slabs[1]); /* the lowest free slot */
    arena_unlock(a);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    arena_flush(cls1, &b1, 1);
    arena_flush(cls2, &m.block, 1);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

/* ---- _heapchk and fork while a slab waits ---------------------------------
 * While a new slab waits for its pool slot (the lock dropped, its run held
 * as PAGE_UNUSED), that run is in no settled state: until 2026-12-05 a
 * _heapchk then reported it as a broken node (_HEAPBADNODE), and a fork
 * left it PAGE_UNUSED for good in the child. Both now wait for the section
 * to end (arena_lock_settled, a->dropped). */
typedef struct checker {
    int rc;
    volatile int done;
} checker_t;

static void *run_heapchk(void *arg) {
    checker_t *k = arg;
    k->rc = TM_API(_heapchk)();
    __atomic_store_n(&k->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* In a fork child: 0 if no run of arena a is held PAGE_UNUSED and the heap checks. */
static int child_check(tm_arena_t *a) {
    for (tm_chunk_t *c = a->chunks; c; c = c->next)
        for (uint32_t p = 0; p < TM_CHUNK_PAGES; p += c->pages[p].npages ? c->pages[p].npages : 1)
            if (c->pages[p].kind == PAGE_UNUSED && c->pages[p].npages) return 1;
    return TM_API(_heapchk)() == _HEAPOK ? 0 : 2;
}

typedef struct forker {
    tm_arena_t *a;
    int status;
    volatile int done;
} forker_t;

static void *run_fork(void *arg) {
    forker_t *f = arg;
    pid_t pid = fork();
    if (pid == 0) _exit(child_check(f->a));
    f->status = -1;
    if (pid > 0) waitpid(pid, &f->status, 0);
    __atomic_store_n(&f->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void test_heapchk_and_fork_wait_for_a_waiting_slab(void **state) {
    (void)state;
    unsigned cls1, cls2;
    void *b1;
    tm_chunk_t *c;
    tm_arena_t *a = pool_busy_setup(TM_MAX_ARENAS - 3, &cls1, &cls2, &b1, &c);

    maker_t m = {.a = a, .cls = cls2};
    checker_t k = {.rc = -100};
    forker_t f = {.a = a};
    pthread_t tm, tk, tf;
    assert_int_equal(pthread_create(&tm, NULL, make_slab, &m), 0);
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL); /* the maker is stuck now */
    assert_int_equal(pthread_create(&tk, NULL, run_heapchk, &k), 0);
    assert_int_equal(pthread_create(&tf, NULL, run_fork, &f), 0);
    nanosleep(&ts, NULL);
    /* neither may have looked at the arena while the maker waits */
    int early_rc = __atomic_load_n(&k.done, __ATOMIC_ACQUIRE) ? k.rc : -100;
    int early_fork = __atomic_load_n(&f.done, __ATOMIC_ACQUIRE);
    arena_lock(a);
    chunk_slab_pool_done_locked(a, c); /* as the give-back ends */
    arena_unlock(a);
    assert_int_equal(pthread_join(tm, NULL), 0);
    assert_int_equal(pthread_join(tk, NULL), 0);
    assert_int_equal(pthread_join(tf, NULL), 0);
    if (early_rc != -100)
        fail_msg("_heapchk returned %d while a slab waited for its pool slot (it must wait)", early_rc);
    assert_int_equal(k.rc, _HEAPOK);
    if (!WIFEXITED(f.status) || WEXITSTATUS(f.status) != 0)
        fail_msg("fork while a slab waited%s: the child's arena %s (status %#x)",
                 early_fork ? " (it did not wait)" : "",
                 WIFEXITED(f.status) && WEXITSTATUS(f.status) == 1 ? "kept the run PAGE_UNUSED"
                                                                   : "failed _heapchk",
                 f.status);
    assert_int_equal(m.got, 1);
    arena_flush(cls1, &b1, 1);
    arena_flush(cls2, &m.block, 1);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heapmin_packs_slabs_and_gives_back_the_pool),
        cmocka_unit_test(test_slab_waits_for_the_pool_give_back),
        cmocka_unit_test(test_heapchk_and_fork_wait_for_a_waiting_slab),
    };
    return cmocka_run_group_tests_name("unit_slab_pool", tests, NULL, NULL);
}
