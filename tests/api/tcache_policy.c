/*
 * tcache_policy.c -- what a thread cache keeps of the big sizes (above
 * 32 KiB: nothing; 10-32 KiB: blocks of their class, except a block that
 * realloc grows past 10 KiB, which is a run), and that a class a thread
 * stopped using goes back to the arena, slab included, even while the
 * thread allocates only large blocks.
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

/* ---- blocks above 32 KiB are large blocks: no cache holds them ---------- */

static const size_t big_sizes[] = {32769, 40960, 49152, 65536};
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

/* Blocks above 32 KiB freed by the thread that made them go straight back
 * to their arena's free runs, where another size can use their pages.
 * (From 2026-12-04 to 2026-12-08 that was every block above 10 KiB.) */
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

/* ---- 10-32 KiB: size classes, but realloc's growth takes a run ---------- */

/* A block of the 12-32 KiB classes freed and asked for again comes back
 * from the thread's cache, in its place: the pages the program wrote stay
 * the ones it writes (size_class.c). */
static void *medium_reuse(void *arg) {
    void **out = arg;
    void *p = TM_API(malloc)(20000);
    TU_CHECK(p != NULL, "malloc(20000)");
    memset(p, 0x3c, 20000);
    TM_API(free)(p);
    void *q = TM_API(malloc)(19000); /* the same class, 20 KiB */
    out[0] = p;
    out[1] = q;
    out[2] = (void *)TM_API(malloc_usable_size)(q);
    TM_API(free)(q);
    return NULL;
}

static void test_medium_sizes_come_back_from_the_cache(void **state) {
    (void)state;
    void *r[3];
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, medium_reuse, r), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_ptr_equal(r[1], r[0]);
    assert_int_equal((size_t)r[2], 20480); /* a class, not 5 pages */
}

/* malloc(13000) is a block of the 14 KiB class; realloc growing a block
 * to 13000 gives a run of 4 pages, which later growth within its pages
 * (and into free pages after it) keeps in place. Before 2026-12-08 every
 * block of 10-32 KiB was a run; when the classes went up to 32 KiB, a
 * growing buffer's steps through them landed in a class each, and the
 * realloc benchmark's peak RSS rose from 6.45 to 7.2-8.8 MiB (1 thread). */
static void test_realloc_growth_past_10_kib_takes_a_run(void **state) {
    (void)state;
    void *m = TM_API(malloc)(13000);
    assert_non_null(m);
    assert_int_equal(TM_API(malloc_usable_size)(m), 14336);
    unsigned char *p = TM_API(malloc)(9000);
    assert_non_null(p);
    memset(p, 0x5a, 9000);
    unsigned char *q = TM_API(realloc)(p, 13000);
    assert_non_null(q);
    assert_int_equal(TM_API(malloc_usable_size)(q), 16384); /* 4 pages */
    assert_int_equal(tu_find_not_byte(q, 9000, 0x5a), (size_t)-1);
    unsigned char *r = TM_API(realloc)(q, 16000); /* within its pages */
    assert_ptr_equal(r, q);
    /* a shrink that stays above 10 KiB keeps it in place too */
    unsigned char *s = TM_API(realloc)(r, 11000);
    assert_ptr_equal(s, q);
    assert_int_equal(tu_find_not_byte(s, 9000, 0x5a), (size_t)-1);
    TM_API(free)(s);
    TM_API(free)(m);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_big_sizes_are_not_cached),
        cmocka_unit_test(test_medium_sizes_come_back_from_the_cache),
        cmocka_unit_test(test_realloc_growth_past_10_kib_takes_a_run),
        cmocka_unit_test(test_idle_class_released_in_large_phase),
    };
    return cmocka_run_group_tests_name("api_tcache_policy (" TU_FLAVOUR ")", tests, NULL, NULL);
}
