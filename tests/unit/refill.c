/*
 * refill.c (unit) -- a refill writes the cookie of every block it hands
 * out from a fresh slab, so it touches each block's page: it stops before
 * a fifth page that may not be resident (arena.c, REFILL_COLD_PAGES), so
 * one malloc faults in four pages at most. Small classes still get a whole
 * batch from one page, and a program that keeps asking gets every block.
 *
 * The test uses an arena of its own (an index no thread is bound to).
 */
#include "test_cmocka.h"
#include "internal.h"

/* The smallest class of at least `min` bytes. */
static unsigned class_at_least(uint32_t min) {
    for (unsigned c = 1; c <= TM_NCLASSES; c++)
        if (tm_classes[c].size >= min) return c;
    fail_msg("no class of %u bytes", min);
    return 0;
}

static uintptr_t page_of(const void *p) { return (uintptr_t)p >> TM_PAGE_SHIFT; }

static void test_refill_touches_at_most_four_pages(void **state) {
    (void)state;
    tm_init();
    tm_arena_t *a = arena_get(TM_MAX_ARENAS - 2);
    assert_non_null(a);
    /* the smallest class whose slab's blocks span more than four pages */
    unsigned cls = 0;
    for (unsigned c = 1; c <= TM_NCLASSES && !cls; c++)
        if (tm_classes[c].slab_pages > 4 && tm_classes[c].nblocks * tm_classes[c].size > 4 * TM_PAGE)
            cls = c;
    assert_true(cls != 0);
    const uint32_t size = tm_classes[cls].size, nb = tm_classes[cls].nblocks;
    void *blocks[64];
    unsigned n = arena_refill(a, cls, blocks, nb);
    assert_true(n >= 1);
    if (n >= nb) fail_msg("a refill of %u-byte blocks from a fresh slab took all %u", size, n);
    unsigned pages = 0; /* distinct pages (the slots are not in page order) */
    for (unsigned i = 0; i < n; i++) {
        unsigned j = 0;
        while (j < i && page_of(blocks[j]) != page_of(blocks[i])) j++;
        pages += j == i;
    }
    if (pages > 4) fail_msg("a refill touched %u pages", pages);
    /* the next refill goes on where the first stopped */
    void *more[64];
    unsigned m = arena_refill(a, cls, more, nb);
    assert_true(m >= 1);
    assert_true(page_of(more[0]) > page_of(blocks[n - 1]));
    for (unsigned i = 0; i < m; i++)
        for (unsigned j = 0; j < n; j++)
            assert_ptr_not_equal(more[i], blocks[j]);
    arena_flush(cls, blocks, n);
    arena_flush(cls, more, m);
}

static void test_refill_small_class_gets_a_batch(void **state) {
    (void)state;
    tm_init();
    tm_arena_t *a = arena_get(TM_MAX_ARENAS - 2);
    const unsigned cls = class_at_least(16);
    void *blocks[64];
    /* 64 blocks of 16 B: one page holds them all */
    assert_int_equal(arena_refill(a, cls, blocks, 64), 64);
    arena_flush(cls, blocks, 64);
}

static void test_refill_hands_out_every_block(void **state) {
    (void)state;
    tm_init();
    tm_arena_t *a = arena_get(TM_MAX_ARENAS - 2);
    const unsigned cls = class_at_least(3000);
    const uint32_t nb = tm_classes[cls].nblocks;
    void *blocks[3 * TM_SLAB_MAX_BLOCKS];
    unsigned want = 3 * nb, got = 0, calls = 0;
    while (got < want) {
        unsigned n = arena_refill(a, cls, blocks + got, want - got);
        assert_true(n > 0);
        got += n;
        calls++;
    }
    assert_true(calls > 1);
    for (unsigned i = 0; i < got; i++)
        for (unsigned j = i + 1; j < got; j++)
            assert_ptr_not_equal(blocks[i], blocks[j]);
    arena_flush(cls, blocks, got);
}

/* A drain (here _heapmin's) restarts each bin's refill batch at one
 * block: the first malloc after it takes one block from the arena, not a
 * batch whose pages the trim has just given back (tcache.c, bin_restart). */
static void test_refill_after_drain_takes_one_block(void **state) {
    (void)state;
    const unsigned cls = class_at_least(1024);
    const size_t size = tm_classes[cls].size;
    enum { N = 48 };
    void *p[N];
    for (int i = 0; i < N; i++) { /* several refills: the batch grows */
        p[i] = TM_API(malloc)(size);
        assert_non_null(p[i]);
    }
    tm_tcache_t *tc = tm_tls.tc;
    assert_non_null(tc);
    if (tc->bins[cls].fill <= 1) fail_msg("the refill batch did not grow (%u)", tc->bins[cls].fill);
    for (int i = 0; i < N; i++) TM_API(free)(p[i]);
    assert_int_equal(TM_API(_heapmin)(), 0);
    void *q = TM_API(malloc)(size);
    assert_non_null(q);
    tc = tm_tls.tc;
    uint32_t left = tc_bin_count(&tc->bins[cls]);
    if (left != 0)
        fail_msg("the first refill after _heapmin took %u blocks (expected 1)", left + 1);
    TM_API(free)(q);
}

/* A refill stores its blocks from the highest address down, so that a
 * cache, which pops its top first, hands them out in address order
 * (arena.c, refill_locked): a program walks what it allocated one after
 * another forwards through memory. The lowest, the first taken, goes to
 * the bottom, out last (4K aliasing, arena.c). Also when the refill takes
 * fewer blocks than asked for (the fresh-page bound above). */
static void test_refill_blocks_pop_in_address_order(void **state) {
    (void)state;
    tm_init();
    tm_arena_t *a = arena_get(TM_MAX_ARENAS - 2);
    const unsigned classes[2] = {class_at_least(48), class_at_least(3000)};
    for (int k = 0; k < 2; k++) {
        const unsigned cls = classes[k];
        void *blocks[3 * TM_SLAB_MAX_BLOCKS];
        unsigned want = tm_classes[cls].nblocks * 2 < 64 ? tm_classes[cls].nblocks * 2 : 64;
        unsigned n = arena_refill(a, cls, blocks, want);
        assert_true(n >= 3);
        /* popped from the top: slots n-1 .. 1 in rising order, then slot
         * 0, the first block taken, the lowest (it goes out last) */
        for (unsigned i = n - 1; i > 1; i--)
            if ((uintptr_t)blocks[i - 1] <= (uintptr_t)blocks[i])
                fail_msg("%u-byte class: slot %u holds %p, not above slot %u's %p", tm_classes[cls].size,
                         i - 1, blocks[i - 1], i, blocks[i]);
        for (unsigned i = 1; i < n; i++) assert_true((uintptr_t)blocks[0] < (uintptr_t)blocks[i]);
        arena_flush(cls, blocks, n);
    }
}

/* The same seen from malloc: a thread's successive blocks of one size
 * come at rising addresses within a slab. */
static void *rising_worker(void *arg) {
    const size_t size = 176; /* a class no other test here uses */
    void **p = arg;
    for (int i = 0; i < 16; i++) p[i] = TM_API(malloc)(size);
    return NULL;
}

static void test_malloc_hands_out_rising_addresses(void **state) {
    (void)state;
    void *p[16];
    pthread_t t;
    tu_thread_create(&t, rising_worker, p);
    tu_thread_join(t);
    unsigned rising = 0;
    for (int i = 1; i < 16; i++) rising += (uintptr_t)p[i] > (uintptr_t)p[i - 1];
    /* each refill's lowest block comes last (a batch is 4 blocks or more
     * here), and a new slab may start below the last: in the old order,
     * every refill's blocks from its highest down, 4-5 of 15 rose */
    if (rising < 10) fail_msg("only %u of 15 successive blocks lie above the one before", rising);
    for (int i = 0; i < 16; i++) TM_API(free)(p[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refill_blocks_pop_in_address_order),
        cmocka_unit_test(test_malloc_hands_out_rising_addresses),
        cmocka_unit_test(test_refill_touches_at_most_four_pages),
        cmocka_unit_test(test_refill_small_class_gets_a_batch),
        cmocka_unit_test(test_refill_hands_out_every_block),
        cmocka_unit_test(test_refill_after_drain_takes_one_block),
    };
    return cmocka_run_group_tests_name("unit_refill (" TU_FLAVOUR ")", tests, NULL, NULL);
}
