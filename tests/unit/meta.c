/*
 * meta.c (unit) -- the allocator's own descriptor memory (meta.c): every
 * request, a zero-byte one included, gets memory no other descriptor has,
 * so freeing one descriptor never writes into another.
 *
 * The zero-byte request is a real one: with thread caches off
 * (tcache_scale:0, and junk:1 and zero:1, which turn them off) a cache's
 * slot array has no slots. It used to get the bump pointer without moving
 * it, so the next descriptor made -- an arena, say -- got the same
 * address, and when _heapmin gave the slot arrays of exited threads' caches
 * back, the free-list link landed on that arena's lock: later calls hung
 * on it, or lost huge blocks from the page map (found by an outside tester
 * running 2 threads of ~2 MiB blocks with caches off).
 */
#include "test_cmocka.h"
#include "internal.h"

#include <pthread.h>

static void test_zero_byte_requests_get_memory_of_their_own(void **state) {
    (void)state;
    unsigned char *a = meta_alloc(0), *b = meta_alloc(0), *c = meta_alloc(64);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    if (a == b || a == c || b == c)
        fail_msg("meta_alloc(0), meta_alloc(0), meta_alloc(64) = %p, %p, %p: shared", (void *)a, (void *)b,
                 (void *)c);
    memset(b, 0x5b, 8);
    memset(c, 0x5c, 64);
    meta_free(a, 0); /* writes its free-list link into its own memory only */
    for (int i = 0; i < 8; i++) assert_int_equal(b[i], 0x5b);
    for (int i = 0; i < 64; i++) assert_int_equal(c[i], 0x5c);
    /* and what comes back from the free list is a's, no other block */
    unsigned char *d = meta_alloc(0);
    assert_true(d != b && d != c);
    meta_free(d, 0);
    meta_free(b, 0);
    meta_free(c, 64);
}

/* ---- the whole story, in a child with caches off --------------------------- */

static void *large_blocks(void *arg) {
    (void)arg;
    for (int i = 0; i < 16; i++) {
        void *p = TM_API(malloc)(2u << 20);
        if (!p) return (void *)1;
        memset(p, i, 4096);
        TM_API(free)(p);
    }
    return NULL;
}

/* Rounds of 2 threads (new caches, each thread's arena), each exiting, then
 * a _heapmin that gives their slot arrays back; the arenas must stay
 * whole: the heap checks out and the statistics (which take every arena's
 * lock) come back. Exit status: 0 good, else the failing step. */
static int child(void) {
    for (int round = 0; round < 4; round++) {
        pthread_t t[2];
        for (int i = 0; i < 2; i++)
            if (pthread_create(&t[i], NULL, large_blocks, NULL)) return 10;
        for (int i = 0; i < 2; i++) {
            void *r;
            if (pthread_join(t[i], &r) || r) return 11;
        }
        if (TM_API(_heapmin)() != 0) return 12;
        if (TM_API(_heapchk)() != _HEAPOK) return 13;
        trimalloc_stats_t st;
        if (TM_API(trimalloc_stats_get)(&st) != 0) return 14;
    }
    return 0;
}

static void test_caches_off_threads_exit_then_heapmin(void **state) {
    (void)state;
    static const char *confs[] = {"tcache_scale:0", "zero:1", "junk:1"};
    for (size_t k = 0; k < TU_ARRAY_LEN(confs); k++) {
        int rc = tu_run_self_child(confs[k]);
        if (rc != 0) fail_msg("TRIMALLOC_CONF=%s: child exit status %d", confs[k], rc);
    }
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "child") == 0) return child();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zero_byte_requests_get_memory_of_their_own),
        cmocka_unit_test(test_caches_off_threads_exit_then_heapmin),
    };
    return cmocka_run_group_tests_name("unit_meta", tests, NULL, NULL);
}
