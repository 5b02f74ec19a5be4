/*
 * calloc.c -- calloc returns zeroed memory, every time.
 *
 * The interesting case is memory the allocator recycles: a block is
 * allocated, dirtied (0xAA over its whole usable size), freed, and then
 * calloc asks for the same size, many times over, for small, large
 * (100 KiB, 1 MiB) and huge (8 MiB) sizes. An allocator that skips the
 * memset because it believes pages are fresh from the kernel shows up here.
 * Also: recycled memory freed by another (exited) thread, memory freed
 * before a _heapmin, and calloc(0, n) / calloc(n, 0).
 */
#include "test_cmocka.h"

#include <stdbool.h>
#include <sys/mman.h>

/* Dirty `count` blocks of `size` bytes, free them, then calloc `count`
 * blocks of the same size (split as nmemb * elem in a few ways) and check
 * every requested byte is zero. Repeated `rounds` times. */
static void dirty_then_calloc(size_t size, int count, long rounds)
{
    void *ps[64];
    assert_true(count <= 64);
    for (long r = 0; r < rounds; r++) {
        for (int i = 0; i < count; i++) {
            ps[i] = TM_API(malloc)(size);
            assert_non_null(ps[i]);
            memset(ps[i], 0xaa, TM_API(malloc_usable_size)(ps[i]));
        }
        for (int i = 0; i < count; i++)
            TM_API(free)(ps[i]);
        for (int i = 0; i < count; i++) {
            size_t nmemb = 1, elem = size;
            switch ((r + i) % 3) {
            case 1:
                nmemb = size, elem = 1;
                break;
            case 2:
                if (size % 8 == 0)
                    nmemb = size / 8, elem = 8;
                break;
            default:
                break;
            }
            unsigned char *p = TM_API(calloc)(nmemb, elem);
            assert_aligned(p, 16);
            size_t bad = tu_find_not_byte(p, size, 0);
            if (bad != (size_t)-1)
                fail_msg("round %ld: calloc(%zu, %zu) byte %zu is 0x%02x, not 0", r, nmemb,
                         elem, bad, p[bad]);
            ps[i] = p;
        }
        /* dirty the calloc'd blocks too, so the next round reuses them dirty */
        for (int i = 0; i < count; i++) {
            memset(ps[i], 0xaa, TM_API(malloc_usable_size)(ps[i]));
            TM_API(free)(ps[i]);
        }
    }
}

static void test_calloc_small(void **state)
{
    (void)state;
    static const size_t sizes[] = {1, 8, 16, 24, 48, 100, 128, 512, 1000, 2048, 4000, 8192,
                                   16 * TU_KIB, 40 * TU_KIB};
    for (size_t i = 0; i < TU_ARRAY_LEN(sizes); i++)
        dirty_then_calloc(sizes[i], 32, tu_scaled(100, 10));
}

static void test_calloc_large(void **state)
{
    (void)state;
    dirty_then_calloc(100 * TU_KIB, 8, tu_scaled(60, 5));
    dirty_then_calloc(256 * TU_KIB + 16, 4, tu_scaled(40, 5));
    dirty_then_calloc(TU_MIB, 4, tu_scaled(30, 5));
}

static void test_calloc_huge(void **state)
{
    (void)state;
    dirty_then_calloc(8 * TU_MIB, 2, tu_scaled(20, 3));
    dirty_then_calloc(8 * TU_MIB + 4096 + 8, 1, tu_scaled(10, 2));
    dirty_then_calloc(32 * TU_MIB, 1, tu_scaled(4, 2));
}

/* Mixed sizes: dirty a whole population, free it, then calloc a population
 * of different sizes that will land in the freed space. */
static void test_calloc_mixed(void **state)
{
    (void)state;
    enum { N = 1024 };
    static void *ps[N];
    tu_rng_t rng;
    tu_rng_seed(&rng, 5);
    long rounds = tu_scaled(20, 3);
    for (long r = 0; r < rounds; r++) {
        for (int i = 0; i < N; i++) {
            ps[i] = TM_API(malloc)(tu_rand_size(&rng, 2 * TU_MIB, 5));
            assert_non_null(ps[i]);
            memset(ps[i], 0xaa, TM_API(malloc_usable_size)(ps[i]));
        }
        for (int i = 0; i < N; i++)
            TM_API(free)(ps[i]);
        for (int i = 0; i < N; i++) {
            size_t n = tu_rand_size(&rng, 2 * TU_MIB, 5);
            unsigned char *p = TM_API(calloc)(1, n);
            assert_aligned(p, 16);
            size_t bad = tu_find_not_byte(p, n, 0);
            if (bad != (size_t)-1)
                fail_msg("calloc(1, %zu) byte %zu is 0x%02x", n, bad, p[bad]);
            ps[i] = p;
        }
        for (int i = 0; i < N; i++)
            TM_API(free)(ps[i]);
    }
}

/* Blocks dirtied and freed by a thread that then exits; its cached memory
 * must come back zeroed through calloc on this thread. */
struct dirty_arg {
    size_t size;
    int count;
};

static void *dirty_and_exit(void *arg)
{
    const struct dirty_arg *a = arg;
    void *ps[256];
    for (int i = 0; i < a->count; i++) {
        ps[i] = TM_API(malloc)(a->size);
        TU_CHECK(ps[i] != NULL, "malloc(%zu)", a->size);
        memset(ps[i], 0xaa, TM_API(malloc_usable_size)(ps[i]));
    }
    for (int i = 0; i < a->count; i++)
        TM_API(free)(ps[i]);
    return NULL;
}

static void test_calloc_after_thread_exit(void **state)
{
    (void)state;
    static const struct dirty_arg args[] = {
        {32, 256}, {200, 256}, {3000, 128}, {100 * 1024, 16}, {8 << 20, 2},
    };
    for (size_t k = 0; k < TU_ARRAY_LEN(args); k++) {
        for (int rep = 0; rep < 4; rep++) {
            pthread_t t;
            tu_thread_create(&t, dirty_and_exit, (void *)&args[k]);
            tu_thread_join(t);
            void *ps[256];
            for (int i = 0; i < args[k].count; i++) {
                unsigned char *p = TM_API(calloc)(args[k].size, 1);
                assert_aligned(p, 16);
                size_t bad = tu_find_not_byte(p, args[k].size, 0);
                if (bad != (size_t)-1)
                    fail_msg("calloc(%zu, 1) after thread exit: byte %zu is 0x%02x",
                             args[k].size, bad, p[bad]);
                ps[i] = p;
            }
            for (int i = 0; i < args[k].count; i++)
                TM_API(free)(ps[i]);
        }
    }
}

/* Memory freed, then given back by _heapmin (madvise or unmap), then reused
 * by calloc, must still read as zero. */
static void test_calloc_after_heapmin(void **state)
{
    (void)state;
    static const size_t sizes[] = {64, 4000, 100 * TU_KIB, TU_MIB, 8 * TU_MIB};
    long reps = tu_scaled(3, 1);
    for (size_t k = 0; k < TU_ARRAY_LEN(sizes); k++) {
        int count = sizes[k] >= TU_MIB ? 4 : 16;
        for (long rep = 0; rep < reps; rep++) {
            void *ps[16];
            for (int i = 0; i < count; i++) {
                ps[i] = TM_API(malloc)(sizes[k]);
                assert_non_null(ps[i]);
                memset(ps[i], 0xaa, TM_API(malloc_usable_size)(ps[i]));
            }
            for (int i = 0; i < count; i++)
                TM_API(free)(ps[i]);
            assert_int_equal(TM_API(_heapmin)(), 0);
            for (int i = 0; i < count; i++) {
                unsigned char *p = TM_API(calloc)(1, sizes[k]);
                assert_aligned(p, 16);
                size_t bad = tu_find_not_byte(p, sizes[k], 0);
                if (bad != (size_t)-1)
                    fail_msg("calloc(1, %zu) after _heapmin: byte %zu is 0x%02x", sizes[k], bad,
                             p[bad]);
                ps[i] = p;
            }
            for (int i = 0; i < count; i++) {
                memset(ps[i], 0xaa, sizes[k]);
                TM_API(free)(ps[i]);
            }
        }
    }
}

/* calloc with a zero count or size: no overflow, a free-able result (NULL
 * or a unique pointer; C leaves the choice to the implementation). */
/* Pages of [p, p + n) in memory (mincore). */
static size_t in_memory(void *p, size_t n)
{
    static unsigned char vec[(32 << 20) >> 12];
    assert_true(n <= sizeof vec << 12);
    assert_int_equal(mincore(p, n, vec), 0);
    size_t k = 0;
    for (size_t i = 0; i < (n + 4095) >> 12; i++)
        k += vec[i] & 1;
    return k;
}

/* A huge block from the cache of freed mappings, for calloc: the pages
 * the block before used (in memory) are written over, the pages it did
 * not use are given back rather than written (they read zero,
 * and only what the program touches comes back). Zero either way. Until
 * 2026-12-06 every page was written over, so a calloc of a block the
 * program touches sparsely made all of it resident again; and for a while
 * that day every page was given back when at most half were in memory, so
 * a buffer half used each time faulted that half in again each time. */
/* Huge blocks follow the kernel's transparent-huge-page setting: with
 * "always", one write makes its whole 2 MiB page resident, and the counts
 * of pages in memory below mean something else. */
static bool thp_always(void)
{
    char buf[128] = "";
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return strstr(buf, "[always]") != NULL;
}

static unsigned char *fresh_huge_in_cache(size_t n)
{
    assert_int_equal(TM_API(_heapmin)(), 0); /* the cache empty: a new mapping */
    unsigned char *p = TM_API(malloc)(n);
    assert_non_null(p);
    return p;
}

static void test_calloc_huge_from_the_cache(void **state)
{
    (void)state;
    enum { N = 16 << 20, PAGES = N >> 12 };
    if (thp_always())
        skip();
    /* one page in 64 used: the rest stays out of memory */
    unsigned char *p = fresh_huge_in_cache(N);
    for (size_t k = 0; k < N; k += 64 << 12)
        p[k] = 0x5a;
    TM_API(free)(p);
    unsigned char *q = TM_API(calloc)(1, N);
    assert_ptr_equal(q, p); /* the one mapping in the cache */
    /* before the bytes are read: a read maps the kernel's zero page */
    if (in_memory(q, N) > PAGES / 32)
        fail_msg("%zu of %d pages in memory after calloc", in_memory(q, N), PAGES);
    assert_int_equal(tu_find_not_byte(q, N, 0), (size_t)-1);
    TM_API(free)(q);

    /* one page in 16 used: the runs of 15 pages between stay out too
     * (until 2026-12-07 runs under 16 pages were written over, and a
     * calloc reusing a block touched every 64 KiB made all of it resident:
     * an outside tester's calloc of 64 MiB, 67 MB peak RSS against 5) */
    p = fresh_huge_in_cache(N);
    for (size_t k = 0; k < N; k += 16 << 12)
        p[k] = 0x5a;
    TM_API(free)(p);
    q = TM_API(calloc)(1, N);
    assert_ptr_equal(q, p);
    if (in_memory(q, N) > PAGES / 8)
        fail_msg("%zu of %d pages in memory after calloc", in_memory(q, N), PAGES);
    assert_int_equal(tu_find_not_byte(q, N, 0), (size_t)-1);
    TM_API(free)(q);

    /* the first half used: it stays in memory, the second half out */
    p = fresh_huge_in_cache(N);
    memset(p, 0x6b, N / 2);
    TM_API(free)(p);
    q = TM_API(calloc)(1, N);
    assert_ptr_equal(q, p);
    assert_int_equal(in_memory(q, N / 2), PAGES / 2);
    assert_int_equal(in_memory(q + N / 2, N / 2), 0);
    assert_int_equal(tu_find_not_byte(q, N, 0), (size_t)-1);

    /* every page used: all written over */
    memset(q, 0x6b, N);
    TM_API(free)(q);
    unsigned char *r = TM_API(calloc)(1, N);
    assert_ptr_equal(r, q);
    assert_int_equal(in_memory(r, N), PAGES);
    assert_int_equal(tu_find_not_byte(r, N, 0), (size_t)-1);
    TM_API(free)(r);
}

static void test_calloc_zero(void **state)
{
    (void)state;
    void *a = TM_API(calloc)(0, 10);
    void *b = TM_API(calloc)(10, 0);
    void *c = TM_API(calloc)(0, tu_opaque(SIZE_MAX));
    void *d = TM_API(calloc)(tu_opaque(SIZE_MAX), 0);
    void *ps[] = {a, b, c, d};
    for (size_t i = 0; i < 4; i++) {
        if (ps[i] != NULL)
            assert_aligned(ps[i], 16);
        for (size_t j = 0; j < i; j++)
            if (ps[i] != NULL)
                assert_ptr_not_equal(ps[i], ps[j]);
    }
    for (size_t i = 0; i < 4; i++)
        TM_API(free)(ps[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_calloc_small),
        cmocka_unit_test(test_calloc_large),
        cmocka_unit_test(test_calloc_huge),
        cmocka_unit_test(test_calloc_mixed),
        cmocka_unit_test(test_calloc_after_thread_exit),
        cmocka_unit_test(test_calloc_after_heapmin),
        cmocka_unit_test(test_calloc_zero),
        cmocka_unit_test(test_calloc_huge_from_the_cache),
    };
    return cmocka_run_group_tests_name("api_calloc (" TU_FLAVOUR ")", tests, NULL, NULL);
}
