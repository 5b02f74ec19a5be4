/*
 * memalign.c -- aligned allocation: posix_memalign, aligned_alloc, memalign,
 * valloc and pvalloc.
 *   - invalid alignments are refused: posix_memalign returns EINVAL (and
 *     leaves *memptr alone) for 0, non-powers of two and powers of two
 *     below sizeof(void *); aligned_alloc/memalign return NULL with errno
 *     EINVAL for non-powers of two;
 *   - every power of two from 1 B to 4 MiB works: the pointer is aligned,
 *     the usable size covers the request, all of it is writable and
 *     neighbours are not disturbed;
 *   - valloc is page-aligned; pvalloc is page-aligned with a usable size of
 *     at least the request rounded up to a page; both free normally;
 *   - aligned blocks work with realloc (prefix kept) and free.
 */
#include "test_cmocka.h"

/* ---- invalid alignments ----------------------------------------------------- */

static const size_t not_pow2[] = {
    3, 5, 6, 7, 12, 24, 40, 48, 96, 100, 1000, 4097, 4096 + 2048, (size_t)3 << 20,
    ((size_t)1 << 20) + 16, SIZE_MAX, SIZE_MAX / 2 + 2, ((size_t)1 << 40) + 8,
};

static void test_posix_memalign_einval(void **state)
{
    (void)state;
    /* 0, non-powers of two, and powers of two that are not multiples of
     * sizeof(void *) */
    size_t bad[TU_ARRAY_LEN(not_pow2) + 8];
    size_t nbad = 0;
    bad[nbad++] = 0;
    for (size_t a = 1; a < sizeof(void *); a *= 2)
        bad[nbad++] = a;
    for (size_t i = 0; i < TU_ARRAY_LEN(not_pow2); i++)
        bad[nbad++] = not_pow2[i];

    static const size_t sizes[] = {0, 1, 64, 5000, TU_MIB};
    for (size_t i = 0; i < nbad; i++) {
        for (size_t k = 0; k < TU_ARRAY_LEN(sizes); k++) {
            void *sentinel = (void *)(uintptr_t)0xa11a;
            void *p = sentinel;
            int rc = TM_API(posix_memalign)(&p, tu_opaque(bad[i]), sizes[k]);
            if (rc != EINVAL)
                fail_msg("posix_memalign(align %zu, size %zu) returned %d, expected EINVAL",
                         bad[i], sizes[k], rc);
            if (p != sentinel)
                fail_msg("posix_memalign(align %zu) failed but set *memptr to %p", bad[i], p);
        }
    }
}

static void test_aligned_alloc_einval(void **state)
{
    (void)state;
    static const size_t sizes[] = {1, 48, 4096, TU_MIB};
    for (size_t i = 0; i < TU_ARRAY_LEN(not_pow2); i++) {
        for (size_t k = 0; k < TU_ARRAY_LEN(sizes); k++) {
            size_t a = tu_opaque(not_pow2[i]);
            errno = 0;
            void *p = TM_API(aligned_alloc)(a, sizes[k]);
            int e = errno;
            if (p != NULL || e != EINVAL)
                fail_msg("aligned_alloc(%zu, %zu) = %p, errno %d; expected NULL, EINVAL", a,
                         sizes[k], p, e);
            errno = 0;
            p = TM_API(memalign)(a, sizes[k]);
            e = errno;
            if (p != NULL || e != EINVAL)
                fail_msg("memalign(%zu, %zu) = %p, errno %d; expected NULL, EINVAL", a,
                         sizes[k], p, e);
        }
    }
}

/* ---- every power of two works ----------------------------------------------- */

enum { VIA_ALIGNED_ALLOC, VIA_MEMALIGN, VIA_POSIX_MEMALIGN, VIA_COUNT };
static const char *const via_name[] = {"aligned_alloc", "memalign", "posix_memalign"};

static void *alloc_aligned_via(int via, size_t align, size_t size)
{
    switch (via) {
    case VIA_ALIGNED_ALLOC:
        return TM_API(aligned_alloc)(align, size);
    case VIA_MEMALIGN:
        return TM_API(memalign)(align, size);
    default: {
        void *p = NULL;
        int rc = TM_API(posix_memalign)(&p, align, size);
        if (rc != 0)
            fail_msg("posix_memalign(%zu, %zu) returned %d", align, size, rc);
        return p;
    }
    }
}

/* For each alignment and a spread of sizes around it, a few blocks live at
 * once: each aligned, usable size >= size, fully writable, and still
 * holding its own pattern once all the others were written. */
static void test_alignments_work(void **state)
{
    (void)state;
    for (int via = 0; via < VIA_COUNT; via++) {
        size_t first = via == VIA_POSIX_MEMALIGN ? sizeof(void *) : 1;
        for (size_t align = first; align <= 4 * TU_MIB; align *= 2) {
            size_t sizes[] = {0, 1, 15, align - 1, align, align + 1, 2 * align + 100, 100 * TU_KIB};
            enum { N = TU_ARRAY_LEN(sizes) };
            void *ps[N];
            size_t us[N];
            for (size_t k = 0; k < N; k++) {
                size_t n = sizes[k];
                void *p = alloc_aligned_via(via, align, n);
                if (p == NULL || (uintptr_t)p % align)
                    fail_msg("%s(%zu, %zu) = %p: NULL or misaligned", via_name[via], align, n,
                             p);
                if ((uintptr_t)p % 16)
                    fail_msg("%s(%zu, %zu) = %p: below the 16-byte minimum", via_name[via],
                             align, n, p);
                us[k] = TM_API(malloc_usable_size)(p);
                if (us[k] < n)
                    fail_msg("%s(%zu, %zu): usable size %zu", via_name[via], align, n, us[k]);
                tu_fill(p, us[k], tu_pattern_seed(p, (uint64_t)via, k));
                ps[k] = p;
            }
            for (size_t k = 0; k < N; k++) {
                size_t bad = tu_find_bad(ps[k], us[k], tu_pattern_seed(ps[k], (uint64_t)via, k));
                if (bad != (size_t)-1)
                    fail_msg("%s(%zu, %zu) block %p: byte %zu overwritten", via_name[via], align,
                             sizes[k], ps[k], bad);
                if (k & 1)
                    TM_API(free)(ps[k]);
                else if (via == VIA_ALIGNED_ALLOC)
                    TM_API(free_aligned_sized)(ps[k], align, sizes[k]);
                else
                    TM_API(free)(ps[k]);
            }
        }
    }
}

/* Many aligned blocks held together with plain ones: a mix that makes the
 * allocator carve aligned blocks out of the middle of its free space. */
static void test_aligned_mixed(void **state)
{
    (void)state;
    enum { N = 512 };
    static tu_block_t blocks[N];
    tu_rng_t rng;
    tu_rng_seed(&rng, 1234);
    for (int round = 0; round < 8; round++) {
        for (int i = 0; i < N; i++) {
            size_t n = tu_rand_size(&rng, 2 * TU_MIB, 5);
            if (i % 3 == 0) {
                blocks[i] = tu_block_new(n, 2, (uint64_t)i);
                continue;
            }
            size_t align = (size_t)16 << (tu_rand(&rng) % 14); /* 16 B .. 128 KiB */
            unsigned char *p = alloc_aligned_via(i % VIA_COUNT, align, n);
            if (p == NULL || (uintptr_t)p % align)
                fail_msg("%s(%zu, %zu) = %p", via_name[i % VIA_COUNT], align, n, (void *)p);
            blocks[i].p = p;
            blocks[i].size = n;
            blocks[i].seed = tu_pattern_seed(p, 3, (uint64_t)i);
            tu_fill(p, n, blocks[i].seed);
        }
        for (int i = 0; i < N; i++)
            assert_pattern(blocks[i].p, blocks[i].size, blocks[i].seed);
        /* free in a scrambled order */
        for (int i = 0; i < N; i++) {
            int j = (int)(((unsigned)i * 197u + (unsigned)round) % N);
            tu_block_free(&blocks[j]);
        }
    }
}

/* ---- valloc and pvalloc ------------------------------------------------------- */

static void test_valloc(void **state)
{
    (void)state;
    size_t page = tu_page_size();
    size_t sizes[] = {0, 1, 100, page - 1, page, page + 1, 5 * page + 3, TU_MIB, 8 * TU_MIB + 1};
    void *ps[TU_ARRAY_LEN(sizes)];
    for (size_t i = 0; i < TU_ARRAY_LEN(sizes); i++) {
        void *p = TM_API(valloc)(sizes[i]);
        if (p == NULL || (uintptr_t)p % page)
            fail_msg("valloc(%zu) = %p: NULL or not page-aligned", sizes[i], p);
        tu_assert_usable(p, sizes[i], i);
        ps[i] = p;
    }
    for (size_t i = 0; i < TU_ARRAY_LEN(sizes); i++) {
        assert_pattern(ps[i], sizes[i], i);
        TM_API(free)(ps[i]);
    }
}

static void test_pvalloc(void **state)
{
    (void)state;
    size_t page = tu_page_size();
    size_t sizes[] = {0, 1, 100, page - 1, page, page + 1, 3 * page + 5, TU_MIB + 1,
                      8 * TU_MIB - 7};
    void *ps[TU_ARRAY_LEN(sizes)];
    for (size_t i = 0; i < TU_ARRAY_LEN(sizes); i++) {
        size_t n = sizes[i];
        size_t rounded = (n + page - 1) / page * page;
        void *p = TM_API(pvalloc)(n);
        if (p == NULL || (uintptr_t)p % page)
            fail_msg("pvalloc(%zu) = %p: NULL or not page-aligned", n, p);
        size_t usable = TM_API(malloc_usable_size)(p);
        if (usable < rounded)
            fail_msg("pvalloc(%zu): usable size %zu < %zu (size rounded to a page)", n, usable,
                     rounded);
        tu_assert_usable(p, rounded, 100 + i);
        ps[i] = p;
    }
    for (size_t i = 0; i < TU_ARRAY_LEN(sizes); i++) {
        size_t rounded = (sizes[i] + page - 1) / page * page;
        assert_pattern(ps[i], rounded, 100 + i);
        TM_API(free)(ps[i]);
    }
    /* a pvalloc block can be resized like any other */
    unsigned char *p = TM_API(pvalloc)(page + 1);
    assert_aligned(p, page);
    tu_fill(p, 2 * page, 77);
    unsigned char *q = TM_API(realloc)(p, 10 * page);
    assert_aligned(q, 16);
    assert_pattern(q, 2 * page, 77);
    TM_API(free)(q);
}

/* ---- aligned blocks and realloc -------------------------------------------------- */

/* A small block aligned past a page is a run of the pages it needs, not
 * of TM_SMALL_MAX + 1 bytes: until 2026-12-06, 100 bytes at 8 KiB took 3
 * pages (12 KiB), 5000 at 16 KiB 3 too. Still aligned, still usable, and
 * realloc within and past the page keeps the bytes. */
static void test_small_blocks_aligned_past_a_page(void **state)
{
    (void)state;
    static const struct { size_t align, size, usable; } cases[] = {
        {8192, 100, 4096}, {8192, 1, 4096}, {16384, 5000, 8192}, {65536, 4096, 4096},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        void *p = NULL;
        assert_int_equal(TM_API(posix_memalign)(&p, cases[i].align, cases[i].size), 0);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % cases[i].align, 0);
        assert_int_equal(TM_API(malloc_usable_size)(p), cases[i].usable);
        memset(p, 0x3c, cases[i].usable);
        unsigned char *q = TM_API(realloc)(p, cases[i].usable + 3000);
        assert_non_null(q);
        assert_int_equal(tu_find_not_byte(q, cases[i].usable, 0x3c), (size_t)-1);
        TM_API(free)(q);
    }
    void *z = TM_API(aligned_alloc)(8192, 0);
    assert_non_null(z);
    assert_int_equal((uintptr_t)z % 8192, 0);
    TM_API(free)(z);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

static void test_aligned_realloc(void **state)
{
    (void)state;
    static const size_t aligns[] = {32, 64, 256, 4096, 65536, (size_t)2 << 20};
    static const size_t steps[] = {100, 5000, 300 * TU_KIB, 3 * TU_MIB, 40, 70 * TU_KIB, 1};
    for (int via = 0; via < VIA_COUNT; via++) {
        for (size_t a = 0; a < TU_ARRAY_LEN(aligns); a++) {
            size_t align = aligns[a];
            size_t n = 777;
            unsigned char *p = alloc_aligned_via(via, align, n);
            assert_aligned(p, align);
            uint64_t seed = tu_pattern_seed(p, 9, align);
            tu_fill(p, n, seed);
            for (size_t s = 0; s < TU_ARRAY_LEN(steps); s++) {
                size_t m = steps[s];
                unsigned char *q = TM_API(realloc)(p, m);
                if (q == NULL || (uintptr_t)q % 16)
                    fail_msg("realloc(%s(%zu) block, %zu) = %p", via_name[via], align, m,
                             (void *)q);
                size_t keep = n < m ? n : m;
                size_t bad = tu_find_bad(q, keep, seed);
                if (bad != (size_t)-1)
                    fail_msg("realloc(%s(%zu) block of %zu, %zu): byte %zu lost", via_name[via],
                             align, n, m, bad);
                tu_fill_range(q, keep, m, seed);
                p = q;
                n = m;
            }
            TM_API(free)(p);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_posix_memalign_einval),
        cmocka_unit_test(test_aligned_alloc_einval),
        cmocka_unit_test(test_alignments_work),
        cmocka_unit_test(test_aligned_mixed),
        cmocka_unit_test(test_valloc),
        cmocka_unit_test(test_pvalloc),
        cmocka_unit_test(test_aligned_realloc),
        cmocka_unit_test(test_small_blocks_aligned_past_a_page),
    };
    return cmocka_run_group_tests_name("api_memalign (" TU_FLAVOUR ")", tests, NULL, NULL);
}
