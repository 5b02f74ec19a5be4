/*
 * heapmin_settle.c (unit) -- _heapmin() and the purges of the allocator's
 * own. A growth purge (the decay, an arena about to grow, one left without
 * a thread) holds the runs it gives back as large blocks while it has the
 * arena's lock dropped for its madvise calls, and gives back only the
 * pages it wants. Until 2026-12-06 a _heapmin() that walked the arena
 * meanwhile passed those runs by, and returned with their other pages
 * dirty and their chunks, empty once the runs came back, still mapped (an
 * outside tester: 4 MiB dirty and 9 empty chunks after 1-5 calls in 30,
 * with the background thread's decay at 5 ms). Now it waits for such a
 * section to end before it walks an arena (arena_purge with `settle`,
 * chunk.c).
 *
 * The test holds an arena in such a section itself (arena_dropped_enter),
 * starts a _heapmin() in another thread, then frees a block of the arena,
 * as the purge's runs come back, and ends the section: the block's pages
 * must be given back by that same call. (The wait is bounded, 250 ms an
 * arena: the test ends the section well within it.)
 */
#include "test_cmocka.h"
#include "internal.h"
#include "large_blocks.h"

static tm_arena_t *X;
static volatile int done; /* the _heapmin() thread has returned */

static int setup(void **state) {
    (void)state;
    tm_init();
    X = arena_get(tm_narenas - 1); /* no thread is bound to the last one */
    return X ? 0 : -1;
}

static void *heapmin_thread(void *arg) {
    (void)arg;
    int rc = TM_API(_heapmin)();
    __atomic_store_n(&done, rc == 0 ? 1 : 2, __ATOMIC_RELEASE);
    return NULL;
}

static void test_heapmin_waits_for_a_purge_under_way(void **state) {
    (void)state;
    char *keep = big(X, PG(1)); /* the chunk stays: its pages can be looked at */
    char *p = big(X, BLK);
    memset(p, 0x5a, BLK);
    assert_int_equal(resident(p, BLK), BLK >> TM_PAGE_SHIFT);

    arena_lock(X);
    arena_dropped_enter(X); /* as a growth purge that dropped the lock */
    arena_unlock(X);

    done = 0;
    pthread_t t;
    tu_thread_create(&t, heapmin_thread, NULL);
    sleep_ms(50);
    /* it waits for the section (on a slow machine it may not have reached
     * the arena yet: either way it has not returned) */
    assert_int_equal(__atomic_load_n(&done, __ATOMIC_ACQUIRE), 0);

    big_free(p); /* as the purge's runs come back, dirty */
    arena_lock(X);
    arena_dropped_leave(X);
    arena_unlock(X);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(done, 1);

    /* that call gave the block's pages back */
    assert_int_equal(resident(p, BLK), 0);
    trimalloc_arena_stats_t st;
    assert_int_equal(TM_API(trimalloc_stats_arena)(X->index, &st), 0);
    assert_int_equal(st.dirty, 0);
    big_free(keep);
}

/* Free what the test holds; the emptied chunk goes with the next purge. */
static int teardown(void **state) {
    (void)state;
    if (X->dropped) { /* a failed assertion left the section open */
        arena_lock(X);
        arena_dropped_leave(X);
        arena_unlock(X);
    }
    big_free_all();
    arena_purge(X, true, NULL);
    return X->nchunks == 0 ? 0 : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_heapmin_waits_for_a_purge_under_way, teardown),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
