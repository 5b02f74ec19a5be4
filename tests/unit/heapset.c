/*
 * heapset.c (unit) -- _heapset fills only the resident pages of a free run.
 * A free run can be part written (a freed block's pages, resident bit set)
 * and part never touched (bit clear); the purges take a clear page for zero
 * (the growth purge gives back only a run's resident span, then calls the
 * run zeroed, and calloc skips its memset). So a page _heapset wrote
 * without its bit would come back from calloc holding the fill byte.
 *
 * The test uses an arena of its own (an index no thread is bound to), so
 * its chunk holds only the test's runs.
 */
#include "test_cmocka.h"
#include "internal.h"

#include <sys/mman.h>

static bool page_resident(const void *p) {
    unsigned char v = 0;
    assert_int_equal(mincore((void *)((uintptr_t)p & ~(uintptr_t)TM_PAGE_MASK), TM_PAGE, &v), 0);
    return v & 1;
}

static void test_heapset_leaves_untouched_pages(void **state) {
    (void)state;
    tm_init();
    tm_arena_t *a = arena_get(TM_MAX_ARENAS - 3);
    assert_non_null(a);
    enum { PAGES = 10 };
    const size_t bytes = PAGES * TM_PAGE;
    unsigned char *x = arena_alloc_large(a, bytes, 0, false);
    unsigned char *y = arena_alloc_large(a, bytes, 0, false);
    assert_non_null(x);
    assert_non_null(y);
    memset(x, 0x11, bytes);
    memset(y, 0x22, bytes);
    tm_chunk_t *c = chunk_of_entry(pagemap_lookup((uintptr_t)x));
    assert_non_null(c);
    unsigned char *hi = x > y ? x : y;
    unsigned char *fresh = hi + bytes + 8 * TM_PAGE; /* past both, never touched */
    assert_true(fresh + TM_PAGE <= (unsigned char *)c->base + TM_CHUNK);
    assert_false(page_resident(fresh));
    /* freed: one free run, written where x and y were, fresh past them */
    arena_free_large(c, (uint32_t)(((uintptr_t)x - c->base) >> TM_PAGE_SHIFT), x);
    arena_free_large(c, (uint32_t)(((uintptr_t)y - c->base) >> TM_PAGE_SHIFT), y);

    assert_int_equal(TM_API(_heapset)(0x21), _HEAPOK);
    for (size_t i = 0; i < bytes; i++)
        if (x[i] != 0x21 || y[i] != 0x21) fail_msg("freed byte %zu was not filled", i);
    assert_false(page_resident(fresh)); /* not faulted in */
    for (size_t i = 0; i < TM_PAGE; i++)
        if (fresh[i]) fail_msg("a never-touched free page holds 0x%02x at %zu", fresh[i], i);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heapset_leaves_untouched_pages),
    };
    return cmocka_run_group_tests_name("unit_heapset (" TU_FLAVOUR ")", tests, NULL, NULL);
}
