/*
 * tcache_policy.c -- what a thread cache keeps of the big sizes (above
 * 10 KiB), and that a class a thread stopped using goes back to the arena,
 * slab included, even while the thread allocates only large blocks.
 *
 * Each scenario runs on a fresh thread, so it starts with an empty cache;
 * the main thread (cmocka, stdio) uses only small classes.
 */
#include "test_cmocka.h"

static unsigned class_of_size(size_t size) {
    for (unsigned c = 1; c <= TM_API(trimalloc_nclasses)(); c++) {
        trimalloc_class_stats_t cs;
        TU_CHECK(TM_API(trimalloc_stats_class)(c, &cs) == 0, "class %u", c);
        if (cs.size == size) return c;
    }
    return 0;
}

static size_t cached_bytes(void) {
    trimalloc_stats_t st;
    TU_CHECK(TM_API(trimalloc_stats_get)(&st) == 0, "stats");
    return st.tcache_bytes; /* thread caches and transfer caches */
}

/* ---- blocks above 10 KiB are large blocks: no cache holds them ---------- */

static const size_t big_sizes[] = {10241, 20480, 24576, 32768};
enum { BIG_N = 64 };

static void *big_batches(void *arg) {
    size_t *grew = arg;
    size_t before = cached_bytes();
    void *p[BIG_N];
    /* every size twice: batches of mallocs, then of frees -- the swing
     * that makes a cache bin grow */
    for (int round = 0; round < 2; round++)
        for (size_t k = 0; k < TU_ARRAY_LEN(big_sizes); k++) {
            for (int i = 0; i < BIG_N; i++) {
                p[i] = TM_API(malloc)(big_sizes[k]);
                TU_CHECK(p[i] != NULL, "malloc(%zu)", big_sizes[k]);
                memset(p[i], 0x3c, 64);
            }
            for (int i = 0; i < BIG_N; i++) TM_API(free)(p[i]);
        }
    size_t after = cached_bytes();
    *grew = after > before ? after - before : 0;
    return NULL;
}

/* Blocks of 10-32 KiB freed by the thread that made them go straight back
 * to their arena's free runs, where another size can use their pages.
 * (Up to 2026-12-04 they were size classes: a bin held 1-3 blocks of each,
 * growing to 4-12, and a transfer cache 32 KiB more.) */
static void test_big_sizes_are_not_cached(void **state) {
    (void)state;
    size_t grew = 1, base = cached_bytes();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, big_batches, &grew), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    /* less than one of the blocks: small ones of libc's own (the thread's
     * start and exit) may come and go */
    assert_true(grew < big_sizes[0]);
    assert_true(cached_bytes() < base + big_sizes[0]);
}

/* ---- an idle class goes back, slab included, during a large-only phase -- */

typedef struct idle_arg {
    unsigned cls;
    size_t slabs_used, slabs_after;
    long large_calls;
} idle_arg_t;

static size_t class_slabs(unsigned cls) {
    trimalloc_class_stats_t cs;
    TU_CHECK(TM_API(trimalloc_stats_class)(cls, &cs) == 0, "class %u", cls);
    return cs.nslabs;
}

static void *idle_then_large(void *arg) {
    idle_arg_t *a = arg;
    enum { N = 40 };
    void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = TM_API(malloc)(5000); /* the 5 KiB class */
        TU_CHECK(p[i] != NULL, "malloc(5000)");
    }
    a->slabs_used = class_slabs(a->cls);
    for (int i = 0; i < N; i++) TM_API(free)(p[i]);
    /* From now on only large blocks: no cache slow path runs, so only the
     * large allocations drive the cache's garbage collection. */
    a->slabs_after = a->slabs_used;
    for (long i = 1; i <= 2000000; i++) {
        void *q = TM_API(malloc)(100000);
        TU_CHECK(q != NULL, "malloc(100000)");
        TM_API(free)(q);
        if (i % 1024 == 0 && (a->slabs_after = class_slabs(a->cls)) == 0) {
            a->large_calls = i;
            break;
        }
    }
    return NULL;
}

/* The thread's blocks of the 5 KiB class leave its cache, and the empty
 * slab the arena kept for the class goes back to the free runs (before:
 * the blocks stayed cached through any number of large allocations, and
 * an empty slab stayed in each class the thread had used). */
static void test_idle_class_released_in_large_phase(void **state) {
    (void)state;
    idle_arg_t a = {.cls = class_of_size(5120)};
    assert_true(a.cls > 0);
    assert_int_equal(class_slabs(a.cls), 0); /* no one else uses the class */
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, idle_then_large, &a), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_true(a.slabs_used >= 1);
    print_message("slabs of the class: %zu in use, %zu after %ld large allocations\n",
                  a.slabs_used, a.slabs_after, a.large_calls);
    assert_int_equal(a.slabs_after, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_big_sizes_are_not_cached),
        cmocka_unit_test(test_idle_class_released_in_large_phase),
    };
    return cmocka_run_group_tests_name("api_tcache_policy (" TU_FLAVOUR ")", tests, NULL, NULL);
}
