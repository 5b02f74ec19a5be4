/*
 * world_wait.c (unit) -- owners stuck on their fast path (busy set, as a
 * thread preempted in malloc is) while _heapmin stops the world: the
 * trimmer sets them aside and waits for them all in one window (world.c),
 * not one window each, gives up on them at its end, and each then empties
 * its own cache on its next call, with every block it holds intact.
 * Before 2026-12-05 each busy owner had a 50 ms window of its own, one
 * after another: with 64 busy threads one _heapmin took seconds.
 */
#include "test_cmocka.h"
#include "internal.h"

enum { STUCK = 4, NBLOCKS = 64, NHELD = 8, SIZE = 48 };

typedef struct stuck {
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    int *phase; /* 1 per thread ready; 2: let go */
    int *ready;
    tm_tcache_t *tc;
    const char *why;
    bool busy;         /* held on its fast path (else quiet, off it) */
    bool stopped;      /* the trimmer stops its cache (else it leaves it alone) */
    size_t held_after; /* blocks its cache held when let go */
} stuck_t;

static void *stuck_main(void *arg) {
    stuck_t *s = arg;
    tu_block_t b[NBLOCKS];
    for (int i = 0; i < NBLOCKS; i++) b[i] = tu_block_new(SIZE, 1, (uint64_t)i);
    for (int i = NHELD; i < NBLOCKS; i++) tu_block_free(&b[i]); /* into the cache */
    s->tc = tm_tls.own;
    pthread_mutex_lock(s->mu);
    /* as if preempted in the middle of a malloc (the fast path sets it) */
    if (s->busy) __atomic_store_n(&tm_tls.busy, 1, __ATOMIC_SEQ_CST);
    (*s->ready)++;
    pthread_cond_broadcast(s->cv);
    while (*s->phase != 2) pthread_cond_wait(s->cv, s->mu);
    pthread_mutex_unlock(s->mu);
    if (s->busy) __atomic_store_n(&tm_tls.busy, 0, __ATOMIC_RELEASE);
    /* skipped by the trimmer: its cache still holds its blocks and, if it
     * was stopped, drains on this first call; the blocks it held are
     * intact */
    s->held_after = tcache_blocks_locked(s->tc);
    if (s->busy && s->held_after == 0) s->why = "a skipped cache was emptied anyway";
    for (int i = 0; i < NHELD; i++) tu_block_free(&b[i]);
    if (s->stopped && !s->why && tcache_blocks_locked(s->tc) > NHELD)
        s->why = "the skipped cache did not empty itself on its next call";
    return NULL;
}

static void test_stuck_owners_share_one_window(void **state) {
    (void)state;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    int phase = 1, ready = 0;
    stuck_t s[STUCK];
    pthread_t t[STUCK];
    for (int i = 0; i < STUCK; i++) {
        s[i] = (stuck_t){&mu, &cv, &phase, &ready, .busy = true, .stopped = true};
        tu_thread_create(&t[i], stuck_main, &s[i]);
    }
    pthread_mutex_lock(&mu);
    while (ready != STUCK) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);

    unsigned long windows = world_wait_windows, skipped = world_busy_skipped;
    assert_int_equal(TM_API(_heapmin)(), 0);
    assert_int_equal(world_wait_windows - windows, 1);  /* one window for all four */
    assert_int_equal(world_busy_skipped - skipped, STUCK); /* all four given up at its end */
    for (int i = 0; i < STUCK; i++) assert_true(tcache_blocks_locked(s[i].tc) > 0);

    pthread_mutex_lock(&mu);
    phase = 2;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < STUCK; i++) {
        tu_thread_join(t[i]);
        if (s[i].why) fail_msg("thread %d: %s", i, s[i].why);
    }
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

/* The background thread's idle scan (world_drain_idle_caches) takes a
 * cache whose bins have not moved for a window, but not one whose owner
 * is on its fast path: that owner is not idle, and stopping its cache made
 * the scan wait out the whole window for it, holding the registry lock
 * that every thread start and exit takes (before 2026-12-07: one window
 * per scan that picked it). A quiet owner off its fast path is drained by
 * the same scans, so they did look at the caches. */
static void test_idle_scan_passes_busy_owners(void **state) {
    (void)state;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    int phase = 1, ready = 0;
    stuck_t s[STUCK + 1]; /* the last one quiet */
    pthread_t t[STUCK + 1];
    for (int i = 0; i <= STUCK; i++) {
        s[i] = (stuck_t){&mu, &cv, &phase, &ready, .busy = i < STUCK};
        tu_thread_create(&t[i], stuck_main, &s[i]);
    }
    pthread_mutex_lock(&mu);
    while (ready != STUCK + 1) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);

    /* scans a third of a window apart (dirty_decay_ms, at least 1 s): the
     * fourth comes a whole window after the first saw the digests */
    long ms = 0;
    assert_int_equal(TM_API(trimalloc_option_get)("dirty_decay_ms", &ms), 0);
    assert_true(ms >= 0);
    uint64_t window = (uint64_t)(ms < 1000 ? 1000 : ms) * 1000000ull;
    uint64_t t0 = os_now_ns();
    unsigned long windows = world_wait_windows;
    unsigned drained = 0;
    for (int k = 0; k <= 4; k++) drained += world_drain_idle_caches(t0 + (uint64_t)k * window / 3);
    assert_int_equal(world_wait_windows - windows, 0); /* never waited for a busy owner */
    assert_true(drained >= 1);                           /* the quiet one at least */
    for (int i = 0; i < STUCK; i++) {
        assert_int_equal(__atomic_load_n(&s[i].tc->drain_pending, __ATOMIC_RELAXED), 0);
        assert_true(tcache_blocks_locked(s[i].tc) > 0);
    }

    pthread_mutex_lock(&mu);
    phase = 2;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    for (int i = 0; i <= STUCK; i++) {
        tu_thread_join(t[i]);
        if (s[i].why) fail_msg("thread %d: %s", i, s[i].why);
    }
    assert_int_equal(s[STUCK].held_after, 0); /* the quiet owner's cache was drained */
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stuck_owners_share_one_window),
        cmocka_unit_test(test_idle_scan_passes_busy_owners),
    };
    return cmocka_run_group_tests_name("unit_world_wait", tests, NULL, NULL);
}
