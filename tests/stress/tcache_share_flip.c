/*
 * tcache_share_flip.c -- tcache_total_mb changed at run time while threads
 * free blocks: every block a thread holds keeps its bytes, and no block is
 * handed out twice.
 *
 * A thread's first overflow of a bin (at its start size of 8 blocks) moves
 * the bin to its capacity as the cache's share of tcache_total_mb allows.
 * Until 2026-12-05 that path read the share twice, and a bound lowered in
 * between left the bin with no room for the block being freed: it went one
 * past the bin's limit, the fast path (which stops only at the limit) then
 * wrote on into the next bin's slots, and blocks came out twice (an outside
 * tester's program aborted with "double free" within a second, 8 runs of
 * 8). Here: 20 idle threads with caches (so a share of 1 MiB is below a
 * cache's capacities), a thread flipping the bound between 0 and 1, and
 * fresh threads that each free 300 blocks of 16 B the main thread
 * allocated (the first overflow) between bursts of 32 B blocks they
 * allocate, fill and check.
 */
#include <stdatomic.h>

#include "test_cmocka.h"

enum { IDLERS = 20, ONES = 300, TWOS = 40 };

static atomic_int stop;

static void *idler(void *arg) {
    (void)arg;
    TM_API(free)(TM_API(malloc)(1)); /* a cache: counted in the share */
    while (!atomic_load(&stop)) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void *flipper(void *arg) {
    (void)arg;
    while (!atomic_load(&stop)) {
        TM_API(trimalloc_option_set)("tcache_total_mb", 0);
        TM_API(trimalloc_option_set)("tcache_total_mb", 1);
    }
    return NULL;
}

typedef struct {
    void **ones;
    uint64_t seq;
    long bad;
} attempt_t;

/* Bursts of 32 B blocks, each filled and checked while held. */
static long twos_burst(uint64_t thread, uint64_t seq) {
    tu_block_t b[TWOS];
    long bad = 0;
    for (int i = 0; i < TWOS; i++) {
        b[i] = tu_block_new(32, thread, seq * TWOS + (uint64_t)i);
        TU_CHECK(b[i].p != NULL, "malloc(32)");
    }
    for (int i = 0; i < TWOS; i++) {
        if (tu_find_bad(b[i].p, b[i].size, b[i].seed) != SIZE_MAX) bad++;
        TM_API(free)(b[i].p);
    }
    return bad;
}

static void *attempt(void *arg) {
    attempt_t *a = arg;
    a->bad += twos_burst(a->seq, 1);
    for (int i = 0; i < ONES; i++) {
        if (tu_find_bad(a->ones[i], 16, a->seq * ONES + (uint64_t)i) != SIZE_MAX) a->bad++;
        TM_API(free)(a->ones[i]); /* the 9th is the 16 B bin's first overflow */
    }
    a->bad += twos_burst(a->seq, 2);
    return NULL;
}

static void test_flipping_the_bound_while_threads_free(void **state) {
    (void)state;
    pthread_t idlers[IDLERS], flip;
    for (int i = 0; i < IDLERS; i++) tu_thread_create(&idlers[i], idler, NULL);
    tu_thread_create(&flip, flipper, NULL);
    long tries = tu_scaled(2000, 100), bad = 0;
    static void *ones[ONES];
    for (long t = 0; t < tries; t++) {
        for (int i = 0; i < ONES; i++) {
            ones[i] = TM_API(malloc)(16);
            TU_CHECK(ones[i] != NULL, "malloc(16)");
            tu_fill(ones[i], 16, (uint64_t)t * ONES + (uint64_t)i);
        }
        attempt_t a = {ones, (uint64_t)t, 0};
        pthread_t w;
        tu_thread_create(&w, attempt, &a);
        tu_thread_join(w);
        bad += a.bad;
    }
    atomic_store(&stop, 1);
    tu_thread_join(flip);
    for (int i = 0; i < IDLERS; i++) tu_thread_join(idlers[i]);
    assert_int_equal(TM_API(trimalloc_option_set)("tcache_total_mb", 64), 0);
    if (bad) fail_msg("%ld blocks lost their bytes while held", bad);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flipping_the_bound_while_threads_free),
    };
    return cmocka_run_group_tests_name("stress_tcache_share_flip (" TU_FLAVOUR ")", tests, NULL,
                                       NULL);
}
