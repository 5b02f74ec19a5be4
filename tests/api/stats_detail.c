/*
 * stats_detail.c -- per-arena and per-size-class statistics: they move
 * with what the program holds, add up to the totals, and reject bad
 * indexes.
 */
#include "test_cmocka.h"

static void test_class_stats_follow_blocks(void **state) {
    (void)state;
    enum { N = 1000 };
    void *p[N];
    unsigned cls = 0;
    for (unsigned c = 1; c <= TM_API(trimalloc_nclasses)(); c++) {
        trimalloc_class_stats_t cs;
        assert_int_equal(TM_API(trimalloc_stats_class)(c, &cs), 0);
        if (cs.size == 96) cls = c;
    }
    assert_true(cls > 0);
    trimalloc_class_stats_t before, after;
    assert_int_equal(TM_API(trimalloc_stats_class)(cls, &before), 0);
    for (int i = 0; i < N; i++) assert_non_null(p[i] = TM_API(malloc)(90));
    assert_int_equal(TM_API(trimalloc_stats_class)(cls, &after), 0);
    /* blocks out of the arenas include the ones in caches: at least N more */
    assert_true(after.blocks_out >= before.blocks_out + N - 256);
    assert_true(after.nmalloc >= before.nmalloc + N - 256);
    assert_true(after.nslabs >= 1);
    for (int i = 0; i < N; i++) TM_API(free)(p[i]);
    assert_int_equal(TM_API(_heapmin)(), 0);
    assert_int_equal(TM_API(trimalloc_stats_class)(cls, &after), 0);
    assert_true(after.blocks_out <= before.blocks_out);
}

static void test_arena_stats_add_up(void **state) {
    (void)state;
    void *big = TM_API(malloc)(300000);
    assert_non_null(big);
    trimalloc_stats_t st;
    assert_int_equal(TM_API(trimalloc_stats_get)(&st), 0);
    size_t mapped = 0, large = 0;
    for (unsigned i = 0; i < st.narenas; i++) {
        trimalloc_arena_stats_t as;
        assert_int_equal(TM_API(trimalloc_stats_arena)(i, &as), 0);
        assert_int_equal(as.index, i);
        assert_true(as.allocated <= as.active || as.active == 0);
        assert_true(as.resident <= as.mapped);
        mapped += as.mapped;
        large += as.large_nmalloc - as.large_nfree;
    }
    assert_true(mapped <= st.mapped);
    assert_true(large >= 1);
    TM_API(free)(big);
}

static void test_bad_indexes(void **state) {
    (void)state;
    trimalloc_arena_stats_t as;
    trimalloc_class_stats_t cs;
    trimalloc_stats_t st;
    TM_API(trimalloc_stats_get)(&st);
    errno = 0;
    assert_int_equal(TM_API(trimalloc_stats_arena)(st.narenas, &as), -1);
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_int_equal(TM_API(trimalloc_stats_class)(0, &cs), -1);
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_int_equal(TM_API(trimalloc_stats_class)(TM_API(trimalloc_nclasses)() + 1, &cs), -1);
    assert_int_equal(errno, EINVAL);
    /* a NULL destination: each refuses it (trimalloc_stats_get crashed) */
    errno = 0;
    assert_int_equal(TM_API(trimalloc_stats_get)(NULL), -1);
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_int_equal(TM_API(trimalloc_stats_arena)(0, NULL), -1);
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_int_equal(TM_API(trimalloc_stats_class)(1, NULL), -1);
    assert_int_equal(errno, EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_class_stats_follow_blocks),
        cmocka_unit_test(test_arena_stats_add_up),
        cmocka_unit_test(test_bad_indexes),
    };
    return cmocka_run_group_tests_name("api_stats_detail (" TU_FLAVOUR ")", tests, NULL, NULL);
}
