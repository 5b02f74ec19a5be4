/*
 * basic.c -- the basic contract of malloc, free and malloc_usable_size:
 *   - every pointer is 16-byte aligned, from 0 B to 64 MiB;
 *   - malloc(0) returns a unique, non-NULL, free-able pointer each time;
 *   - malloc_usable_size(p) >= the request, all of it can be written
 *     without touching a neighbour, and malloc_usable_size(NULL) == 0;
 *   - free(NULL), free_sized(NULL, n) and free_aligned_sized(NULL, a, n) do
 *     nothing; free_sized/free_aligned_sized release blocks correctly;
 *   - free leaves errno alone (POSIX.1-2024);
 *   - in the drop-in flavour, malloc really is trimalloc's.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dladdr; the build defines it too */
#endif
#include <dlfcn.h>

#include "test_cmocka.h"

/* ---- alignment ----------------------------------------------------------- */

/* Every size 0..4 KiB, then steps up to 64 KiB. A window of blocks is kept
 * alive so the allocator cannot hand back the same slot every time. */
static void test_alignment_small(void **state)
{
    (void)state;
    enum { WINDOW = 64 };
    void *held[WINDOW] = {0};
    unsigned slot = 0;
    for (size_t size = 0; size <= 64 * TU_KIB; size += size < 4096 ? 1 : 61) {
        void *p = TM_API(malloc)(size);
        if (p == NULL)
            fail_msg("malloc(%zu) returned NULL", size);
        if ((uintptr_t)p & 15)
            fail_msg("malloc(%zu) = %p is not 16-byte aligned", size, p);
        if (size) {
            ((volatile unsigned char *)p)[0] = 1;
            ((volatile unsigned char *)p)[size - 1] = 2;
        }
        TM_API(free)(held[slot]);
        held[slot] = p;
        slot = (slot + 1) % WINDOW;
    }
    for (unsigned i = 0; i < WINDOW; i++)
        TM_API(free)(held[i]);
}

/* Large and huge blocks, including sizes just off the obvious boundaries. */
static void test_alignment_large(void **state)
{
    (void)state;
    static const size_t sizes[] = {
        64 * TU_KIB + 1, 100 * TU_KIB, 256 * TU_KIB - 1, 256 * TU_KIB, 256 * TU_KIB + 1,
        512 * TU_KIB + 3, TU_MIB - 1, TU_MIB, TU_MIB + 1, 2 * TU_MIB - 16, 2 * TU_MIB,
        2 * TU_MIB + 1, 4 * TU_MIB + 4095, 8 * TU_MIB - 1, 8 * TU_MIB, 8 * TU_MIB + 17,
        64 * TU_MIB - 1, 64 * TU_MIB,
    };
    void *held[TU_ARRAY_LEN(sizes)];
    for (size_t i = 0; i < TU_ARRAY_LEN(sizes); i++) {
        size_t n = sizes[i];
        void *p = TM_API(malloc)(n);
        if (p == NULL || ((uintptr_t)p & 15))
            fail_msg("malloc(%zu) = %p: NULL or not 16-byte aligned", n, p);
        /* touch the first and last byte and one byte per 64 KiB between */
        for (size_t off = 0; off < n; off += 64 * TU_KIB)
            ((volatile unsigned char *)p)[off] = (unsigned char)off;
        ((volatile unsigned char *)p)[n - 1] = 0x5a;
        held[i] = p;
    }
    for (size_t i = 0; i < TU_ARRAY_LEN(sizes); i++)
        TM_API(free)(held[i]);
}

/* ---- malloc(0) ------------------------------------------------------------- */

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
    return x < y ? -1 : x > y;
}

/* Many malloc(0) at once: all non-NULL, aligned, distinct, and their usable
 * ranges (at least one byte each) do not overlap. */
static void test_malloc_zero_unique(void **state)
{
    (void)state;
    enum { N = 2000 };
    static uintptr_t ptrs[N];
    for (int i = 0; i < N; i++) {
        void *p = TM_API(malloc)(tu_opaque(0));
        assert_aligned(p, 16);
        ptrs[i] = (uintptr_t)p;
    }
    qsort(ptrs, N, sizeof ptrs[0], cmp_ptr);
    for (int i = 0; i + 1 < N; i++) {
        if (ptrs[i] == ptrs[i + 1])
            fail_msg("malloc(0) returned %p twice", (void *)ptrs[i]);
        size_t usable = TM_API(malloc_usable_size)((void *)ptrs[i]);
        size_t span = usable ? usable : 1;
        if (ptrs[i] + span > ptrs[i + 1])
            fail_msg("malloc(0) blocks %p (usable %zu) and %p overlap", (void *)ptrs[i], usable,
                     (void *)ptrs[i + 1]);
    }
    for (int i = 0; i < N; i++)
        TM_API(free)((void *)ptrs[i]);

    /* and one at a time, freed straight away, many times */
    for (int i = 0; i < 10000; i++) {
        void *p = TM_API(malloc)(tu_opaque(0));
        assert_non_null(p);
        TM_API(free)(p);
    }
}

/* ---- malloc_usable_size ------------------------------------------------------ */

/* For each size, COUNT neighbouring blocks are filled over their whole usable
 * size with distinct patterns; if usable size overstated the block, a
 * neighbour's pattern would be overwritten. */
static void check_usable_neighbours(size_t size, int count)
{
    void *ps[32];
    size_t us[32];
    assert_true(count <= 32);
    for (int i = 0; i < count; i++) {
        ps[i] = TM_API(malloc)(size);
        assert_aligned(ps[i], 16);
        us[i] = TM_API(malloc_usable_size)(ps[i]);
        if (us[i] < size)
            fail_msg("malloc_usable_size(malloc(%zu)) = %zu", size, us[i]);
        tu_fill(ps[i], us[i], tu_pattern_seed(ps[i], 0, (uint64_t)i));
    }
    for (int i = 0; i < count; i++) {
        size_t bad = tu_find_bad(ps[i], us[i], tu_pattern_seed(ps[i], 0, (uint64_t)i));
        if (bad != (size_t)-1)
            fail_msg("size %zu: block %p byte %zu of usable %zu was overwritten by a "
                     "neighbour",
                     size, ps[i], bad, us[i]);
        assert_int_equal(TM_API(malloc_usable_size)(ps[i]), us[i]);
    }
    for (int i = 0; i < count; i++)
        TM_API(free)(ps[i]);
}

static void test_usable_size(void **state)
{
    (void)state;
    assert_int_equal(TM_API(malloc_usable_size)(NULL), 0);
    for (size_t n = 0; n <= 1024; n++)
        check_usable_neighbours(n, 8);
    for (size_t n = 1025; n <= 64 * TU_KIB; n += 509)
        check_usable_neighbours(n, 6);
    static const size_t big[] = {100 * TU_KIB, 256 * TU_KIB + 1, TU_MIB + 3, 8 * TU_MIB + 1};
    for (size_t i = 0; i < TU_ARRAY_LEN(big); i++)
        check_usable_neighbours(big[i], 3);
}

/* ---- free, free_sized, free_aligned_sized -------------------------------------- */

static void test_free_null(void **state)
{
    (void)state;
    errno = 1234;
    for (int i = 0; i < 1000; i++)
        TM_API(free)(tu_opaque_ptr(NULL));
    TM_API(free_sized)(tu_opaque_ptr(NULL), 0);
    TM_API(free_sized)(tu_opaque_ptr(NULL), 100);
    TM_API(free_aligned_sized)(tu_opaque_ptr(NULL), 64, 0);
    TM_API(free_aligned_sized)(tu_opaque_ptr(NULL), 4096, 8192);
    int e = errno;
    assert_int_equal(e, 1234);
    /* the allocator still works */
    void *p = TM_API(malloc)(32);
    assert_aligned(p, 16);
    TM_API(free)(p);
}

/* free_sized with the size that was asked for, from malloc, calloc and
 * realloc; blocks freed that way are reused, and the live blocks between
 * them keep their contents. */
static void test_free_sized(void **state)
{
    (void)state;
    enum { N = 256 };
    static tu_block_t live[N];
    tu_rng_t rng;
    tu_rng_seed(&rng, 42);
    for (int i = 0; i < N; i++)
        live[i] = tu_block_new(tu_rand_size(&rng, 4 * TU_MIB, 10), 0, (uint64_t)i);
    long rounds = tu_scaled(20000, 2000);
    for (long round = 0; round < rounds; round++) {
        int i = (int)(tu_rand(&rng) % N);
        tu_block_t *b = &live[i];
        tu_block_check(b);
        TM_API(free_sized)(b->p, b->size);
        size_t n = tu_rand_size(&rng, 4 * TU_MIB, 5);
        switch (round % 3) {
        case 0: /* malloc */
            *b = tu_block_new(n, 0, (uint64_t)round);
            break;
        case 1: { /* calloc, split into nmemb * size where possible */
            size_t nmemb = (n % 4 == 0) ? 4 : 1;
            b->p = TM_API(calloc)(nmemb, n / nmemb);
            assert_aligned(b->p, 16);
            b->size = nmemb * (n / nmemb);
            assert_int_equal(tu_find_not_byte(b->p, b->size, 0), (size_t)-1);
            b->seed = tu_pattern_seed(b->p, 0, (uint64_t)round);
            tu_fill(b->p, b->size, b->seed);
            break;
        }
        default: { /* realloc of a fresh block, then free_sized the result later */
            tu_block_t t = tu_block_new(n / 2 + 1, 0, (uint64_t)round);
            unsigned char *q = TM_API(realloc)(t.p, n + 1);
            assert_aligned(q, 16);
            assert_pattern(q, t.size, t.seed);
            tu_fill_range(q, t.size, n + 1, t.seed);
            b->p = q;
            b->size = n + 1;
            b->seed = t.seed;
            break;
        }
        }
    }
    for (int i = 0; i < N; i++) {
        tu_block_check(&live[i]);
        TM_API(free_sized)(live[i].p, live[i].size);
    }
}

/* free_aligned_sized for aligned_alloc blocks of every power-of-two alignment
 * up to 1 MiB, interleaved with live blocks that must keep their bytes. */
static void test_free_aligned_sized(void **state)
{
    (void)state;
    tu_rng_t rng;
    tu_rng_seed(&rng, 7);
    tu_block_t keep[64];
    for (int i = 0; i < 64; i++)
        keep[i] = tu_block_new(tu_rand_size(&rng, TU_MIB, 20), 1, (uint64_t)i);
    long rounds = tu_scaled(20, 2);
    for (long round = 0; round < rounds; round++) {
        for (size_t align = 16; align <= TU_MIB; align *= 2) {
            size_t sizes[] = {1, align / 2 + 1, align, align + 16, 3 * align + 5};
            void *ps[TU_ARRAY_LEN(sizes)];
            for (size_t k = 0; k < TU_ARRAY_LEN(sizes); k++) {
                size_t n = sizes[k];
                if (n > 4 * TU_MIB)
                    n = 4 * TU_MIB;
                ps[k] = TM_API(aligned_alloc)(align, n);
                assert_aligned(ps[k], align);
                tu_assert_usable(ps[k], n, (uint64_t)k + align);
                sizes[k] = n;
            }
            for (size_t k = 0; k < TU_ARRAY_LEN(sizes); k++)
                TM_API(free_aligned_sized)(ps[k], align, sizes[k]);
        }
        for (int i = 0; i < 64; i++)
            tu_block_check(&keep[i]);
    }
    for (int i = 0; i < 64; i++)
        tu_block_free(&keep[i]);
}

/* POSIX.1-2024: free() does not change errno. Checked for every kind of
 * block, since releasing a large one may make system calls. */
static void test_free_preserves_errno(void **state)
{
    (void)state;
    static const size_t sizes[] = {0, 1, 100, 4000, 100 * TU_KIB, 2 * TU_MIB, 16 * TU_MIB};
    for (size_t i = 0; i < TU_ARRAY_LEN(sizes); i++) {
        for (int rep = 0; rep < 4; rep++) {
            void *p = TM_API(malloc)(sizes[i]);
            assert_non_null(p);
            memset(p, 0xab, sizes[i]);
            errno = 9876;
            if (rep & 1)
                TM_API(free_sized)(p, sizes[i]);
            else
                TM_API(free)(p);
            int e = errno;
            if (e != 9876)
                fail_msg("freeing a %zu-byte block changed errno to %d", sizes[i], e);
        }
    }
}

/* ---- the drop-in flavour really interposes --------------------------------- */

static void test_dropin_interposes(void **state)
{
    (void)state;
#ifdef TRIMALLOC_PREFIX
    skip();
#else
    /* The definitions the dynamic linker binds for the whole process must
     * come from libtrimalloc, not from libc. */
    static const char *const names[] = {"malloc", "free", "calloc", "realloc",
                                        "posix_memalign", "aligned_alloc", "malloc_usable_size"};
    for (size_t i = 0; i < TU_ARRAY_LEN(names); i++) {
        void *sym = dlsym(RTLD_DEFAULT, names[i]);
        assert_non_null(sym);
        Dl_info info;
        assert_int_not_equal(dladdr(sym, &info), 0);
        assert_non_null(info.dli_fname);
        if (strstr(info.dli_fname, "libtrimalloc") == NULL)
            fail_msg("%s resolves to %s, not libtrimalloc", names[i], info.dli_fname);
    }
#endif
}

/* ---- plain trimalloc does not look like jemalloc ------------------------------ */

static void test_dropin_is_not_jemalloc(void **state)
{
    (void)state;
#ifdef TRIMALLOC_PREFIX
    skip();
#else
    /* Programs learn whether jemalloc is loaded by looking for mallctl
     * (MariaDB's guess_malloc_library, weak references), then trust its
     * answers: only build/libtrimalloc_jemalloc.so may export it. */
    static const char *const names[] = {"mallctl", "malloc_stats_print", "mallocx", "rallocx",
                                        "xallocx",  "sallocx",            "dallocx", "sdallocx",
                                        "nallocx", "mallctlnametomib", "mallctlbymib"};
    for (size_t i = 0; i < TU_ARRAY_LEN(names); i++)
        if (dlsym(RTLD_DEFAULT, names[i]))
            fail_msg("libtrimalloc.so exports %s", names[i]);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alignment_small),
        cmocka_unit_test(test_dropin_is_not_jemalloc),
        cmocka_unit_test(test_alignment_large),
        cmocka_unit_test(test_malloc_zero_unique),
        cmocka_unit_test(test_usable_size),
        cmocka_unit_test(test_free_null),
        cmocka_unit_test(test_free_sized),
        cmocka_unit_test(test_free_aligned_sized),
        cmocka_unit_test(test_free_preserves_errno),
        cmocka_unit_test(test_dropin_interposes),
    };
    return cmocka_run_group_tests_name("api_basic (" TU_FLAVOUR ")", tests, NULL, NULL);
}
