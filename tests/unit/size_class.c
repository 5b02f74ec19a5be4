/*
 * size_class.c (unit) -- the size-class table: every size maps to the
 * smallest class that holds it (and malloc's bin-offset table agrees),
 * waste is bounded, slabs are sane.
 */
#include "test_cmocka.h"
#include "internal.h"

static void test_every_size_maps_to_smallest_fitting_class(void **state) {
    (void)state;
    tm_init();
    for (size_t sz = 0; sz <= TM_SMALL_MAX; sz++) {
        unsigned c = size_class_of(sz);
        assert_true(c >= 1 && c <= TM_NCLASSES);
        assert_true(tm_classes[c].size >= sz);
        if (c > 1) assert_true(tm_classes[c - 1].size < sz || (sz == 0 && c == 1));
    }
    assert_int_equal(tm_classes[TM_NCLASSES].size, TM_SMALL_MAX);
    /* malloc's table for the sizes up to TM_TINY_MAX names the same class's
     * bin, as its byte offset in a thread cache */
    for (size_t sz = 0; sz <= TM_TINY_MAX; sz++)
        assert_int_equal(tm_bin_tiny[(sz + 15) >> 4],
                         (size_t)size_class_of(sz) * sizeof(tm_tc_bin_t));
}

static void test_waste_is_bounded(void **state) {
    (void)state;
    tm_init();
    for (size_t sz = 129; sz <= TM_SMALL_MAX; sz++) {
        unsigned c = size_class_of(sz);
        /* rounding waste below 25% of the request */
        assert_true((tm_classes[c].size - sz) * 4 < sz);
    }
    for (size_t sz = 1; sz <= 128; sz++) assert_true(tm_classes[size_class_of(sz)].size - sz < 16);
}

static void test_classes_sorted_aligned_and_slabs_sane(void **state) {
    (void)state;
    tm_init();
    for (unsigned c = 1; c <= TM_NCLASSES; c++) {
        const tm_class_t *k = &tm_classes[c];
        assert_int_equal(k->size % 16, 0);
        if (c > 1) assert_true(k->size > tm_classes[c - 1].size);
        assert_true(k->nblocks >= 1 && k->nblocks <= TM_SLAB_MAX_BLOCKS);
        size_t bytes = (size_t)k->slab_pages * TM_PAGE;
        assert_true((size_t)k->nblocks * k->size <= bytes);
        /* tail waste at most 1/16 of the slab, and none where one page
         * more would hold whole blocks exactly (5120 B: 5 pages, not 4) */
        assert_true((bytes - (size_t)k->nblocks * k->size) * 16 <= bytes);
        if ((size_t)k->nblocks * k->size != bytes && (bytes + TM_PAGE) / k->size <= TM_SLAB_MAX_BLOCKS)
            assert_true((bytes + TM_PAGE) % k->size != 0);
        /* the magic divides exactly for every offset in the slab */
        for (uint64_t off = 0; off < bytes; off += 16) {
            uint64_t q = (off * k->magic) >> 40;
            assert_int_equal(q, off / k->size);
        }
    }
}

/* free()'s block-start test: off * div < lim exactly when off is the
 * start of one of the slab's blocks -- a whole number of blocks, and not
 * past its last (the tail some classes leave, or beyond) -- for every byte
 * offset in a chunk (misaligned pointers included); class 0 only at offset
 * 0. Until 2026-12-06 the test took off * div < div, which passed the
 * block-sized steps past a slab's end: the loop below fails on that. */
static void test_block_start_test_is_exact(void **state) {
    (void)state;
    tm_init();
    unsigned tails = 0;
    for (unsigned c = 0; c <= TM_NCLASSES; c++) {
        uint64_t d = tm_class_fast.div[c], lim = tm_class_fast.lim[c];
        uint32_t size = tm_classes[c].size, nb = tm_classes[c].nblocks;
        if (c && (uint64_t)nb * size < (uint64_t)tm_classes[c].slab_pages * TM_PAGE) tails++;
        for (uint64_t off = 0; off < TM_CHUNK; off += off < 65536 ? 1 : 7) {
            bool start = c ? off % size == 0 && off / size < nb : off == 0;
            if ((off * d < lim) != start)
                fail_msg("class %u (size %u, %u blocks), offset %llu: test says %d", c, size,
                         nb, (unsigned long long)off, (int)(off * d < lim));
        }
    }
    assert_true(tails > 0); /* the case the bound is for exists */
}

/* A database page of 8 KiB and its header (sqlite3 with PRAGMA page_size
 * 8192 asks for 8464 bytes) is a small block of the 10 KiB class, in
 * slabs of two blocks in 5 pages: 10 KiB a block. Until 2026-12-07 the
 * classes stopped at 8 KiB and it was a 3-page run, 12 KiB. */
static void test_a_page_and_its_header_is_small(void **state) {
    (void)state;
    tm_init();
    unsigned c = size_class_of(8464);
    assert_true(TM_SMALL_MAX >= 8464);
    assert_int_equal(tm_classes[c].size, 10240);
    assert_int_equal(tm_classes[c].slab_pages, 5);
    assert_int_equal(tm_classes[c].nblocks, 2);
    void *p = TM_API(malloc)(8464);
    assert_non_null(p);
    assert_int_equal(TM_API(malloc_usable_size)(p), 10240);
    memset(p, 0x5e, 8464);
    TM_API(free)(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_size_maps_to_smallest_fitting_class),
        cmocka_unit_test(test_waste_is_bounded),
        cmocka_unit_test(test_classes_sorted_aligned_and_slabs_sane),
        cmocka_unit_test(test_block_start_test_is_exact),
        cmocka_unit_test(test_a_page_and_its_header_is_small),
    };
    return cmocka_run_group_tests_name("unit_size_class", tests, NULL, NULL);
}
