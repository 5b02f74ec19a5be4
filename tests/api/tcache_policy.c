/*
 * tcache_policy.c -- what a thread cache keeps of the large runs its
 * thread frees (8-64 KiB, in a bounded queue), and that a class a thread
 * stopped using goes back to the arena, slab included, even while the
 * thread allocates only large blocks.
 *
 * Each scenario runs on a fresh thread, so it starts with an empty cache;
 * the main thread (cmocka, stdio) uses only small classes.
 */
#include "test_cmocka.h"

#include <stdbool.h>

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

/* ---- blocks above 8 KiB are large runs: a thread keeps a few it freed ---- */

static const size_t big_sizes[] = {8193, 20480, 24576, 32768};
enum { BIG_N = 64, OWN_QUEUE_MAX = 256 << 10 /* tcache.c: TC_OWN_QUEUE_PAGES */ };

static uint64_t large_counts(bool frees) {
    trimalloc_stats_t st;
    TU_CHECK(TM_API(trimalloc_stats_get)(&st) == 0, "stats");
    uint64_t n = 0;
    for (unsigned i = 0; i < st.narenas; i++) {
        trimalloc_arena_stats_t as;
        TU_CHECK(TM_API(trimalloc_stats_arena)(i, &as) == 0, "arena %u", i);
        n += frees ? as.large_nfree : as.large_nmalloc;
    }
    return n;
}

typedef struct big_arg {
    size_t grew;           /* cached bytes after the batches, over before */
    uint64_t arena_mallocs; /* large runs the arenas handed out for the retake */
    uint64_t arena_frees;   /* ... and took back for the frees before it */
} big_arg_t;

static void *big_batches(void *arg) {
    big_arg_t *r = arg;
    size_t before = cached_bytes();
    void *p[BIG_N];
    /* every size twice: batches of mallocs, then of frees */
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
    r->grew = after > before ? after - before : 0;
    /* the last size's newest runs wait: taking as many back again needs
     * no arena, and freeing them again sends none home */
    enum { RETAKE = 4 };
    uint64_t m0 = large_counts(false), f0 = large_counts(true);
    for (int i = 0; i < RETAKE; i++) p[i] = TM_API(malloc)(32768);
    r->arena_mallocs = large_counts(false) - m0;
    for (int i = 0; i < RETAKE; i++) TM_API(free)(p[i]);
    r->arena_frees = large_counts(true) - f0;
    return NULL;
}

/* Runs of 8-64 KiB freed by the thread that made them wait in its cache,
 * at most 256 KiB of them, so the thread's next allocations of those
 * lengths take no arena lock; the rest go home to the arena's free runs,
 * where another size can use their pages, and thread exit sends home
 * what waited. (Up to 2026-12-04 they were size classes, cached by the
 * block; from then to 2026-12-05 no cache held them: bench/throughput
 * sizes spent a fifth of its time in the arena's large-run path.) */
static void test_big_sizes_wait_in_a_bounded_queue(void **state) {
    (void)state;
    big_arg_t r = {0};
    size_t base = cached_bytes();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, big_batches, &r), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    /* some wait (small blocks of libc's own, the thread's start and exit,
     * come to less than one of them), within the bound */
    assert_true(r.grew >= 4 * big_sizes[0]);
    assert_true(r.grew <= OWN_QUEUE_MAX + big_sizes[0]);
    assert_int_equal(r.arena_mallocs, 0);
    assert_int_equal(r.arena_frees, 0);
    assert_true(cached_bytes() < base + big_sizes[0]); /* home at thread exit */
}

static void *long_runs(void *arg) {
    size_t *grew = arg;
    size_t before = cached_bytes();
    void *p[8];
    for (int i = 0; i < 8; i++) {
        p[i] = TM_API(malloc)((64 << 10) + 1); /* 17 pages */
        TU_CHECK(p[i] != NULL, "malloc");
    }
    for (int i = 0; i < 8; i++) TM_API(free)(p[i]);
    /* a run realloc moves away from goes home too */
    char *q = TM_API(malloc)(40 << 10);
    TU_CHECK(q != NULL, "malloc");
    char *block = TM_API(malloc)(40 << 10); /* in the way of growth in place */
    TU_CHECK(block != NULL, "malloc");
    char *moved = TM_API(realloc)(q, 48 << 10);
    TU_CHECK(moved != NULL && moved != q, "realloc moved");
    size_t after = cached_bytes();
    *grew = after > before ? after - before : 0;
    TM_API(free)(moved);
    TM_API(free)(block);
    return NULL;
}

/* Longer runs, and a run realloc moved away from, go home at once. */
static void test_long_and_moved_runs_go_home(void **state) {
    (void)state;
    size_t grew = 1;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, long_runs, &grew), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_true(grew < (8 << 10));
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
        cmocka_unit_test(test_big_sizes_wait_in_a_bounded_queue),
        cmocka_unit_test(test_long_and_moved_runs_go_home),
        cmocka_unit_test(test_idle_class_released_in_large_phase),
    };
    return cmocka_run_group_tests_name("api_tcache_policy (" TU_FLAVOUR ")", tests, NULL, NULL);
}
