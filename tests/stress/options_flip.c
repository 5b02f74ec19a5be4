/*
 * options_flip.c -- the options trimalloc_option_set may change at run
 * time (huge_threshold, guard, decay_ms, huge_cache_mb) flipped by one
 * thread while another allocates, resizes and frees blocks of 64 KiB to
 * 2 MiB, which read them: every block keeps its bytes, the heap checks
 * out, and (in the ThreadSanitizer build) no data race is reported.
 * Until 2026-12-05 the allocation paths read these four with plain loads
 * while the setter stored them atomically: an outside tester's
 * ThreadSanitizer run reported 4 races per run (alloc.c's huge_threshold,
 * huge.c's guard, decay_ms and huge_cache_mb). The allocating thread
 * also reads the flipped options with trimalloc_option_get, which until
 * 2026-12-06 read them with a plain load (another tester's
 * ThreadSanitizer run: a race with the setter in 2 of 3 runs).
 */
#include <stdatomic.h>

#include "test_cmocka.h"

static atomic_int stop;

static void *flipper(void *arg) {
    (void)arg;
    for (long i = 0; !atomic_load(&stop); i++) {
        TM_API(trimalloc_option_set)("huge_threshold", i & 1 ? 256 * 1024 : 2 * 1024 * 1024);
        TM_API(trimalloc_option_set)("guard", i & 1);
        TM_API(trimalloc_option_set)("decay_ms", i & 2 ? 0 : 5000);
        TM_API(trimalloc_option_set)("huge_cache_mb", i & 4 ? 0 : 64);
        sched_yield();
    }
    return NULL;
}

static void test_flipping_options_while_allocating(void **state) {
    (void)state;
    pthread_t flip;
    tu_thread_create(&flip, flipper, NULL);
    enum { SLOTS = 8 };
    tu_block_t b[SLOTS] = {0};
    tu_rng_t rng;
    tu_rng_seed(&rng, 12345);
    long rounds = tu_scaled(1000, 100), bad = 0;
    for (long r = 0; r < rounds; r++) {
        int k = (int)(tu_rand(&rng) % SLOTS);
        static const char *const names[] = {"huge_threshold", "guard", "decay_ms", "huge_cache_mb"};
        long v = -1;
        TU_CHECK(TM_API(trimalloc_option_get)(names[r & 3], &v) == 0 && v >= 0, "option_get");
        size_t size = 64 * 1024 + (size_t)(tu_rand(&rng) % (2 * 1024 * 1024));
        if (b[k].p && (r & 1)) { /* a resize, across the thresholds too */
            if (tu_find_bad(b[k].p, b[k].size, b[k].seed) != SIZE_MAX) bad++;
            void *q = TM_API(realloc)(b[k].p, size);
            TU_CHECK(q != NULL, "realloc");
            size_t keep = b[k].size < size ? b[k].size : size;
            if (tu_find_bad(q, keep, b[k].seed) != SIZE_MAX) bad++;
            b[k].p = q;
            b[k].size = size;
            b[k].seed = tu_pattern_seed(q, 1, (uint64_t)r);
            tu_fill(q, size, b[k].seed);
            continue;
        }
        if (b[k].p) {
            if (tu_find_bad(b[k].p, b[k].size, b[k].seed) != SIZE_MAX) bad++;
            TM_API(free)(b[k].p);
        }
        b[k] = tu_block_new(size, 1, (uint64_t)r);
        TU_CHECK(b[k].p != NULL, "malloc");
    }
    atomic_store(&stop, 1);
    tu_thread_join(flip);
    for (int k = 0; k < SLOTS; k++) {
        if (b[k].p && tu_find_bad(b[k].p, b[k].size, b[k].seed) != SIZE_MAX) bad++;
        TM_API(free)(b[k].p);
    }
    assert_int_equal(TM_API(trimalloc_option_set)("huge_threshold", 2 * 1024 * 1024), 0);
    assert_int_equal(TM_API(trimalloc_option_set)("guard", 0), 0);
    assert_int_equal(TM_API(trimalloc_option_set)("decay_ms", 5000), 0);
    assert_int_equal(TM_API(trimalloc_option_set)("huge_cache_mb", 64), 0);
    if (bad) fail_msg("%ld checks found a block's bytes changed while held", bad);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flipping_options_while_allocating),
    };
    return cmocka_run_group_tests_name("stress_options_flip (" TU_FLAVOUR ")", tests, NULL, NULL);
}
