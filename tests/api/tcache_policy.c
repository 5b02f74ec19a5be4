/*
 * tcache_policy.c -- what a thread cache keeps of the big classes (above
 * 8 KiB), and that a class a thread stopped using goes back to the arena,
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

/* ---- big classes: a bin and a transfer cache hold a few blocks ---------- */

static const size_t big_sizes[] = {20480, 24576, 28672, 32768};
enum { BIG_N = 64 };

static void *big_batches(void *arg) {
    size_t *grew = arg;
    size_t before = cached_bytes();
    void *p[BIG_N];
    /* every class twice: mallocs that refill, then frees that overflow --
     * the swing that makes a bin grow */
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

/* After BIG_N blocks of each of four classes of 20-32 KiB are freed, the
 * caches hold at most 4 blocks of each in the thread's bin (it starts with
 * 1 and grows to 4 times that) and 32 KiB in its transfer cache. (Before
 * the bound, a bin held 8 blocks of a class and a transfer cache 128 KiB:
 * 1 MiB here.) */
static void test_big_classes_cache_few_bytes(void **state) {
    (void)state;
    size_t grew = 0, base = cached_bytes();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, big_batches, &grew), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    /* the thread has exited: its cache went back to the arenas, only the
     * transfer caches may still hold blocks of these classes */
    size_t left = cached_bytes();
    print_message("caches grew by %zu KiB; %zu KiB left after the thread's exit\n", grew / TU_KIB,
                  (left > base ? left - base : 0) / TU_KIB);
    assert_true(left <= base + TU_ARRAY_LEN(big_sizes) * 32 * TU_KIB);
    size_t most = 0;
    for (size_t k = 0; k < TU_ARRAY_LEN(big_sizes); k++) most += 4 * big_sizes[k] + 32 * TU_KIB;
    assert_true(grew <= most);
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
        cmocka_unit_test(test_big_classes_cache_few_bytes),
        cmocka_unit_test(test_idle_class_released_in_large_phase),
    };
    return cmocka_run_group_tests_name("api_tcache_policy (" TU_FLAVOUR ")", tests, NULL, NULL);
}
