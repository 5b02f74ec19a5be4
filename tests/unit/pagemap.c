/*
 * pagemap.c (unit) -- address -> descriptor: the full two-level lookup and
 * the hot leaf that free() reads directly (pm_hot_leaf) agree wherever the hot
 * leaf answers, an address outside the hot leaf is left to the full
 * lookup, and entries set and cleared outside it are seen by the full
 * lookup alone. A free() of such a block takes free's cold path.
 */
#include "test_cmocka.h"
#include "internal.h"

/* A chunk-aligned address 64 GiB past the hot leaf's range (two leaves
 * further), inside the user address space. */
static uintptr_t far_chunk(void) {
    uintptr_t end = (pm_hot_first + PM_LEAF_SIZE) << TM_CHUNK_SHIFT;
    uintptr_t far = end + ((uintptr_t)PM_LEAF_SIZE << TM_CHUNK_SHIFT);
    if ((far >> PM_ROOT_SHIFT) >= PM_ROOT_SIZE) /* the hot leaf is at the top: go below */
        far = (pm_hot_first << TM_CHUNK_SHIFT) - 2 * ((uintptr_t)PM_LEAF_SIZE << TM_CHUNK_SHIFT);
    return far;
}

static void test_hot_leaf_agrees_with_full_lookup(void **state) {
    (void)state;
    void *p = TM_API(malloc)(100); /* a chunk exists, so a leaf does */
    assert_non_null(p);
    /* the hot leaf is the .bss one, and the root's slot for its range
     * points at it, so both lookups read the same entries */
    assert_true(pm_hot_first != PM_HOT_NONE);
    assert_int_equal(pm_hot_first % PM_LEAF_SIZE, 0);
    assert_ptr_equal((char *)&pm_map.zero + pm_map.root[pm_hot_first >> PM_LEAF_BITS],
                     (char *)&pm_hot_leaf);
    uintptr_t e = 0;
    if (!pagemap_lookup_hot((uintptr_t)p, &e))
        fail_msg("the first chunk's block %p is not in the hot leaf", p);
    assert_true(e != 0);
    assert_int_equal(e, pagemap_lookup((uintptr_t)p));
    /* every entry the hot leaf covers reads the same both ways */
    for (uintptr_t i = 0; i < PM_LEAF_SIZE; i += 97) {
        uintptr_t a = (pm_hot_first + i) << TM_CHUNK_SHIFT, h = 1;
        assert_true(pagemap_lookup_hot(a + 12345, &h));
        assert_int_equal(h, pagemap_lookup(a + 12345));
    }
    TM_API(free)(p);
}

static void test_outside_the_hot_leaf(void **state) {
    (void)state;
    void *p = TM_API(malloc)(100);
    assert_non_null(p);
    uintptr_t far = far_chunk(), e = 0;
    assert_false(pagemap_lookup_hot(far, &e));
    assert_false(pagemap_lookup_hot(far + TM_CHUNK - 1, &e));
    assert_int_equal(pagemap_lookup(far), 0);
    /* an entry there (a made-up descriptor address, never dereferenced)
     * is found by the full lookup only */
    const uintptr_t fake = 0x1230;
    assert_int_equal(pagemap_set(far, fake), 0);
    assert_int_equal(pagemap_lookup(far + 4096), fake);
    assert_false(pagemap_lookup_hot(far + 4096, &e));
    pagemap_clear(far);
    assert_int_equal(pagemap_lookup(far + 4096), 0);
    /* NULL is never in the hot leaf unless it covers address 0 */
    if (pm_hot_first != 0) assert_false(pagemap_lookup_hot(0, &e));
    TM_API(free)(NULL); /* the cold path returns at once */
    TM_API(free)(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hot_leaf_agrees_with_full_lookup),
        cmocka_unit_test(test_outside_the_hot_leaf),
    };
    return cmocka_run_group_tests_name("unit_pagemap", tests, NULL, NULL);
}
