/*
 * flush.c (unit) -- arena_flush returns a batch of one class's blocks to
 * their slabs, settling each slab's counts, first-word hint and list place
 * once per run of its blocks (arena.c, slab_settle_locked). Whatever the
 * order of the batch, every block is free in the arena afterwards and the
 * next refills hand each one out again; a block that appears twice in a
 * batch, or whose page is of another class, is reported and not counted.
 *
 * The tests use an arena of their own (an index no thread is bound to).
 */
#include "test_cmocka.h"
#include "internal.h"

enum { NSLABS = 3, MAXB = NSLABS * TM_SLAB_MAX_BLOCKS };

static unsigned class_of_size(uint32_t size) {
    for (unsigned c = 1; c <= TM_NCLASSES; c++)
        if (tm_classes[c].size == size) return c;
    fail_msg("no class of %u bytes", size);
    return 0;
}

/* n blocks of class cls from arena a, in as many refills as it takes */
static void refill_all(tm_arena_t *a, unsigned cls, void **blocks, unsigned n) {
    for (unsigned got = 0; got < n;) {
        unsigned k = arena_refill(a, cls, blocks + got, n - got);
        assert_true(k > 0);
        got += k;
    }
}

static int cmp_ptr(const void *x, const void *y) {
    uintptr_t a = (uintptr_t) * (void *const *)x, b = (uintptr_t) * (void *const *)y;
    return a < b ? -1 : a > b;
}

/* the same set of addresses, in any order */
static void assert_same_blocks(void **x, void **y, unsigned n) {
    void **sx = malloc(n * sizeof *sx), **sy = malloc(n * sizeof *sy);
    memcpy(sx, x, n * sizeof *sx);
    memcpy(sy, y, n * sizeof *sy);
    qsort(sx, n, sizeof *sx, cmp_ptr);
    qsort(sy, n, sizeof *sy, cmp_ptr);
    for (unsigned i = 0; i < n; i++) {
        if (i) assert_true(sx[i] != sx[i - 1]);
        if (sx[i] != sy[i]) fail_msg("block %u: %p handed out before, %p now", i, sx[i], sy[i]);
    }
    free(sx);
    free(sy);
}

/* Three slabs' blocks flushed interleaved (each slab's blocks far apart in
 * the batch, its highest words first): all of them are free afterwards,
 * the bin keeps one empty slab, and refills hand out the same blocks. */
static void test_a_flush_in_any_order_returns_every_block(void **state) {
    (void)state;
    tm_init();
    tm_arena_t *a = arena_get(TM_MAX_ARENAS - 4);
    assert_non_null(a);
    const unsigned cls = class_of_size(16);
    const unsigned nb = tm_classes[cls].nblocks, n = NSLABS * nb;
    tm_arena_bin_t *b = &a->bins[cls];
    size_t out0 = b->cur_blocks;
    static void *blocks[MAXB], *order[MAXB], *again[MAXB];
    refill_all(a, cls, blocks, n);
    assert_int_equal(b->nslabs, NSLABS);
    assert_int_equal(b->cur_blocks, out0 + n);
    /* blocks[] is in address order, slab by slab: take one of each slab in
     * turn, from each slab's last block down */
    unsigned k = 0;
    for (unsigned i = nb; i-- > 0;)
        for (unsigned s = 0; s < NSLABS; s++) order[k++] = blocks[s * nb + i];
    assert_int_equal(k, n);
    arena_flush(cls, order, n);
    assert_int_equal(b->cur_blocks, out0);
    assert_int_equal(b->nslabs, 1); /* the others went back to the chunk */
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    refill_all(a, cls, again, nb);
    /* the kept slab hands out all its blocks from its first word on: a
     * hint left at a higher word would skip the lower ones */
    assert_int_equal(b->nslabs, 1);
    arena_flush(cls, again, nb);
    assert_int_equal(b->cur_blocks, out0);
}

/* One slab's blocks flushed in two batches, the high words first: the
 * second batch lowers the hint, and a refill finds every block again. */
static void test_the_hint_follows_the_lowest_word(void **state) {
    (void)state;
    tm_init();
    tm_arena_t *a = arena_get(TM_MAX_ARENAS - 4);
    const unsigned cls = class_of_size(16);
    const unsigned nb = tm_classes[cls].nblocks;
    assert_true(nb > 128);
    tm_arena_bin_t *b = &a->bins[cls];
    static void *blocks[TM_SLAB_MAX_BLOCKS], *again[TM_SLAB_MAX_BLOCKS];
    void *keep[1];
    refill_all(a, cls, keep, 1); /* the slab stays partly used throughout */
    refill_all(a, cls, blocks, nb - 1);
    arena_flush(cls, blocks + 127, nb - 1 - 127); /* words 2.. */
    arena_flush(cls, blocks, 127);                /* words 0-1 */
    refill_all(a, cls, again, nb - 1);
    assert_same_blocks(blocks, again, nb - 1);
    assert_int_equal(b->nslabs, 1);
    arena_flush(cls, again, nb - 1);
    arena_flush(cls, keep, 1);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

/* A block twice in one batch is freed once (the second is a double free),
 * and a block of another class in the batch is an invalid pointer for
 * this class: neither changes a count. abort_on_error:0 lets the reports
 * through. */
static void test_bad_blocks_in_a_batch_are_reported_not_counted(void **state) {
    (void)state;
    tm_init();
    tm_arena_t *a = arena_get(TM_MAX_ARENAS - 4);
    const unsigned cls = class_of_size(16), other = class_of_size(32);
    tm_arena_bin_t *b = &a->bins[cls], *bo = &a->bins[other];
    void *blocks[8], *foreign[1], *batch[10];
    refill_all(a, cls, blocks, 8);
    refill_all(a, other, foreign, 1);
    size_t out = b->cur_blocks, out_other = bo->cur_blocks;
    memcpy(batch, blocks, sizeof blocks);
    batch[8] = blocks[3];
    batch[9] = foreign[0];
    long abort_was = tm_opt.abort_on_error;
    tm_opt.abort_on_error = 0;
    arena_flush(cls, batch, 10);
    tm_opt.abort_on_error = abort_was;
    assert_int_equal(b->cur_blocks, out - 8);
    assert_int_equal(bo->cur_blocks, out_other); /* still out: not freed into the wrong bin */
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    arena_flush(other, foreign, 1);
    assert_int_equal(bo->cur_blocks, out_other - 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_flush_in_any_order_returns_every_block),
        cmocka_unit_test(test_the_hint_follows_the_lowest_word),
        cmocka_unit_test(test_bad_blocks_in_a_batch_are_reported_not_counted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
