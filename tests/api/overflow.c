/*
 * overflow.c -- sizes no allocator can satisfy, through every entry point.
 *
 * Each must return NULL (posix_memalign: ENOMEM) with errno == ENOMEM, and
 * must not be fooled by arithmetic that wraps: rounding a size up to a
 * class, a page or an alignment, adding a header, or multiplying
 * nmemb * size. realloc and reallocarray must leave the old block exactly
 * as it was, still usable and free-able.
 */
#include "test_cmocka.h"

/* Sizes that cannot be allocated: above PTRDIFF_MAX, or above any address
 * space Linux gives a process (2^47..2^57 bytes), and sizes just below
 * SIZE_MAX where rounding up to 16 B, a page, 2 MiB or 1 GiB wraps. */
static const size_t impossible[] = {
    SIZE_MAX,
    SIZE_MAX - 1,
    SIZE_MAX - 15,
    SIZE_MAX - 16,
    SIZE_MAX - 4095,
    SIZE_MAX - 4096,
    SIZE_MAX - ((size_t)2 << 20),
    SIZE_MAX - ((size_t)1 << 30),
    (size_t)PTRDIFF_MAX + 1,
    (size_t)PTRDIFF_MAX,
    (size_t)PTRDIFF_MAX - 4095,
    (size_t)1 << 62,
    (size_t)1 << 58,
};

static void test_malloc_overflow(void **state)
{
    (void)state;
    for (size_t i = 0; i < TU_ARRAY_LEN(impossible); i++) {
        size_t n = tu_opaque(impossible[i]);
        errno = 0;
        void *p = TM_API(malloc)(n);
        int e = errno;
        if (p != NULL || e != ENOMEM)
            fail_msg("malloc(%#zx) = %p, errno %d; expected NULL, ENOMEM", n, p, e);
    }
    /* still works afterwards */
    void *p = TM_API(malloc)(100);
    assert_aligned(p, 16);
    TM_API(free)(p);
}

static void test_calloc_overflow(void **state)
{
    (void)state;
    static const size_t pairs[][2] = {
        {SIZE_MAX / 2 + 1, 2},
        {2, SIZE_MAX / 2 + 1},
        {SIZE_MAX, SIZE_MAX},
        {(size_t)1 << 32, (size_t)1 << 32},     /* product wraps to exactly 0 */
        {((size_t)1 << 32) + 1, (size_t)1 << 32}, /* wraps to 2^32 */
        {SIZE_MAX, 1},
        {1, SIZE_MAX},
        {(size_t)PTRDIFF_MAX / 2 + 1, 2}, /* PTRDIFF_MAX + 1, no wrap */
        {((size_t)1 << 32) + 1, ((size_t)1 << 32) - 1}, /* SIZE_MAX exactly */
        {SIZE_MAX / 16 + 1, 16},
        {65536, ((size_t)1 << 48) + 1},
    };
    for (size_t i = 0; i < TU_ARRAY_LEN(pairs); i++) {
        size_t a = tu_opaque(pairs[i][0]), b = tu_opaque(pairs[i][1]);
        errno = 0;
        void *p = TM_API(calloc)(a, b);
        int e = errno;
        if (p != NULL || e != ENOMEM)
            fail_msg("calloc(%#zx, %#zx) = %p, errno %d; expected NULL, ENOMEM", a, b, p, e);
    }
}

/* Fill a block of n bytes, try to grow it to each impossible size with
 * realloc, and check it is untouched: same bytes, same usable size, still
 * free-able. */
static void check_realloc_keeps_block(size_t n)
{
    unsigned char *p = TM_API(malloc)(n);
    assert_aligned(p, 16);
    size_t usable = TM_API(malloc_usable_size)(p);
    uint64_t seed = tu_pattern_seed(p, 0, n);
    tu_fill(p, n, seed);
    for (size_t i = 0; i < TU_ARRAY_LEN(impossible); i++) {
        size_t want = tu_opaque(impossible[i]);
        errno = 0;
        /* p goes through tu_opaque_ptr so the compiler does not warn
         * about using p after a realloc (which here must fail) */
        void *q = TM_API(realloc)(tu_opaque_ptr(p), want);
        int e = errno;
        if (q != NULL || e != ENOMEM)
            fail_msg("realloc(%zu-byte block, %#zx) = %p, errno %d; expected NULL, ENOMEM", n,
                     want, q, e);
        assert_pattern(p, n, seed);
        assert_int_equal(TM_API(malloc_usable_size)(p), usable);
    }
    /* the block still works as a block: it can grow for real */
    unsigned char *q = TM_API(realloc)(p, n + 1000);
    assert_aligned(q, 16);
    assert_pattern(q, n, seed);
    TM_API(free)(q);
}

static void test_realloc_overflow(void **state)
{
    (void)state;
    static const size_t sizes[] = {1, 24, 100, 5000, 100 * TU_KIB, TU_MIB + 5, 8 * TU_MIB};
    for (size_t i = 0; i < TU_ARRAY_LEN(sizes); i++)
        check_realloc_keeps_block(sizes[i]);
    /* realloc(NULL, impossible) behaves like malloc */
    for (size_t i = 0; i < TU_ARRAY_LEN(impossible); i++)
        assert_alloc_fails(TM_API(realloc)(NULL, tu_opaque(impossible[i])), ENOMEM);
}

static void test_reallocarray_overflow(void **state)
{
    (void)state;
    assert_alloc_fails(TM_API(reallocarray)(NULL, tu_opaque(SIZE_MAX / 2 + 1), 2), ENOMEM);
    assert_alloc_fails(TM_API(reallocarray)(NULL, tu_opaque((size_t)1 << 32), (size_t)1 << 32),
                       ENOMEM);

    unsigned char *p = TM_API(malloc)(100);
    assert_aligned(p, 16);
    tu_fill(p, 100, 99);
    size_t usable = TM_API(malloc_usable_size)(p);
    /* each call gets p through tu_opaque_ptr, so the compiler does not warn
     * about p being used after a reallocarray (which here must fail) */
    size_t big = tu_opaque((size_t)1 << 33);
    assert_alloc_fails(TM_API(reallocarray)(tu_opaque_ptr(p), tu_opaque(SIZE_MAX / 2 + 1), 2),
                       ENOMEM);
    assert_alloc_fails(TM_API(reallocarray)(tu_opaque_ptr(p), big, big), ENOMEM);
    assert_alloc_fails(
        TM_API(reallocarray)(tu_opaque_ptr(p), tu_opaque(SIZE_MAX), tu_opaque(SIZE_MAX)), ENOMEM);
    assert_alloc_fails(
        TM_API(reallocarray)(tu_opaque_ptr(p), 2, tu_opaque((size_t)PTRDIFF_MAX / 2 + 1)), ENOMEM);
    assert_pattern(p, 100, 99);
    assert_int_equal(TM_API(malloc_usable_size)(p), usable);

    /* and a valid reallocarray on the same block keeps its prefix */
    unsigned char *q = TM_API(reallocarray)(p, 1000, 8);
    assert_aligned(q, 16);
    assert_pattern(q, 100, 99);
    tu_assert_usable(q, 8000, 5);
    TM_API(free)(q);
}

/* aligned_alloc, memalign and posix_memalign with sizes that cannot be met,
 * alone or once the alignment is added. */
static void test_aligned_overflow(void **state)
{
    (void)state;
    static const size_t aligns[] = {16, 64, 4096, 65536, (size_t)2 << 20, (size_t)4 << 20};
    for (size_t a = 0; a < TU_ARRAY_LEN(aligns); a++) {
        size_t align = aligns[a];
        for (size_t i = 0; i < TU_ARRAY_LEN(impossible); i++) {
            size_t n = tu_opaque(impossible[i]);
            errno = 0;
            void *p = TM_API(aligned_alloc)(align, n);
            int e = errno;
            if (p != NULL || e != ENOMEM)
                fail_msg("aligned_alloc(%zu, %#zx) = %p, errno %d; expected NULL, ENOMEM",
                         align, n, p, e);
            errno = 0;
            p = TM_API(memalign)(align, n);
            e = errno;
            if (p != NULL || e != ENOMEM)
                fail_msg("memalign(%zu, %#zx) = %p, errno %d; expected NULL, ENOMEM", align, n,
                         p, e);
            void *sentinel = (void *)(uintptr_t)0x5e47;
            p = sentinel;
            int rc = TM_API(posix_memalign)(&p, align, n);
            if (rc != ENOMEM)
                fail_msg("posix_memalign(%zu, %#zx) returned %d, expected ENOMEM", align, n, rc);
            if (p != sentinel)
                fail_msg("posix_memalign(%zu, %#zx) failed but changed *memptr to %p", align,
                         n, p);
        }
        /* size + alignment wraps even though size alone looks plausible */
        size_t n = tu_opaque(SIZE_MAX - align / 2);
        assert_alloc_fails(TM_API(aligned_alloc)(align, n), ENOMEM);
        assert_alloc_fails(TM_API(memalign)(align, n), ENOMEM);
    }

    /* An alignment that is a power of two but larger than any address
     * space: it cannot be met. ENOMEM, or EINVAL for an allocator that
     * caps alignments, are both acceptable; success is not. */
    static const size_t giant[] = {(size_t)1 << 48, (size_t)1 << 62, (size_t)1 << 63};
    for (size_t i = 0; i < TU_ARRAY_LEN(giant); i++) {
        size_t align = tu_opaque(giant[i]);
        errno = 0;
        void *p = TM_API(aligned_alloc)(align, 64);
        int e = errno;
        if (p != NULL || (e != ENOMEM && e != EINVAL))
            fail_msg("aligned_alloc(%#zx, 64) = %p, errno %d", align, p, e);
        errno = 0;
        p = TM_API(memalign)(align, 64);
        e = errno;
        if (p != NULL || (e != ENOMEM && e != EINVAL))
            fail_msg("memalign(%#zx, 64) = %p, errno %d", align, p, e);
        p = NULL;
        int rc = TM_API(posix_memalign)(&p, align, 64);
        if (p != NULL || (rc != ENOMEM && rc != EINVAL))
            fail_msg("posix_memalign(%#zx, 64) = %d, %p", align, rc, p);
    }
}

static void test_valloc_overflow(void **state)
{
    (void)state;
    size_t page = tu_page_size();
    static const size_t extra[] = {SIZE_MAX - 100, SIZE_MAX - 4095, (size_t)PTRDIFF_MAX + 1};
    assert_alloc_fails(TM_API(valloc)(tu_opaque(SIZE_MAX)), ENOMEM);
    assert_alloc_fails(TM_API(pvalloc)(tu_opaque(SIZE_MAX)), ENOMEM);
    /* pvalloc rounds up to a page first: SIZE_MAX - page + 2 wraps to 0 */
    assert_alloc_fails(TM_API(pvalloc)(tu_opaque(SIZE_MAX - page + 2)), ENOMEM);
    for (size_t i = 0; i < TU_ARRAY_LEN(extra); i++) {
        assert_alloc_fails(TM_API(valloc)(tu_opaque(extra[i])), ENOMEM);
        assert_alloc_fails(TM_API(pvalloc)(tu_opaque(extra[i])), ENOMEM);
    }
    for (size_t i = 0; i < TU_ARRAY_LEN(impossible); i++) {
        assert_alloc_fails(TM_API(valloc)(tu_opaque(impossible[i])), ENOMEM);
        assert_alloc_fails(TM_API(pvalloc)(tu_opaque(impossible[i])), ENOMEM);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_malloc_overflow),
        cmocka_unit_test(test_calloc_overflow),
        cmocka_unit_test(test_realloc_overflow),
        cmocka_unit_test(test_reallocarray_overflow),
        cmocka_unit_test(test_aligned_overflow),
        cmocka_unit_test(test_valloc_overflow),
    };
    return cmocka_run_group_tests_name("api_overflow (" TU_FLAVOUR ")", tests, NULL, NULL);
}
