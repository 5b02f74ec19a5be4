/*
 * idle_caches.c (unit) -- with background_thread:1, the cache of a thread
 * that sleeps is drained once it has not moved for a whole window
 * (dirty_decay_ms, at least 1 s: world.c), so its blocks go back to their
 * slabs and the pages can decay; without the background thread it keeps
 * them. The sleeping thread's own blocks keep their bytes, and its cache
 * works when it wakes.
 */
#include "test_cmocka.h"
#include "internal.h"

#include <time.h>

enum { NBLOCKS = 64, NHELD = 8, SIZE = 64 };

typedef struct sleeper {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int phase; /* 1: cache filled, asleep; 2: wake up */
    tm_tcache_t *tc;
    const char *why;
} sleeper_t;

static void *sleeper_main(void *arg) {
    sleeper_t *s = arg;
    tu_block_t b[NBLOCKS];
    for (int i = 0; i < NBLOCKS; i++) b[i] = tu_block_new(SIZE, 1, (uint64_t)i);
    for (int i = NHELD; i < NBLOCKS; i++) tu_block_free(&b[i]); /* into the cache */
    pthread_mutex_lock(&s->mu);
    s->tc = tm_tls.own;
    s->phase = 1;
    pthread_cond_broadcast(&s->cv);
    while (s->phase != 2) pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    /* awake: what it held is intact, and its cache serves it again */
    for (int i = 0; i < NHELD; i++) tu_block_free(&b[i]);
    for (int i = 0; i < NBLOCKS; i++) b[i] = tu_block_new(SIZE, 2, (uint64_t)i);
    for (int i = 0; i < NBLOCKS; i++) tu_block_free(&b[i]);
    if (tcache_blocks_locked(tm_tls.own) == 0) s->why = "the woken thread's cache holds nothing";
    return NULL;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static size_t cached(tm_tcache_t *tc) {
    tm_lock(&tc->mu);
    size_t n = tcache_blocks_locked(tc);
    pthread_mutex_unlock(&tc->mu);
    return n;
}

/* The background thread on, with a window of decay_ms (at least 1 s), and
 * running: the setter starts it (background.c). */
static void bg_on(long decay_ms) {
    assert_int_equal(TM_API(trimalloc_option_set)("dirty_decay_ms", decay_ms), 0);
    assert_int_equal(TM_API(trimalloc_option_set)("background_thread", 1), 0);
    for (int i = 0; i < 100 && !tu_threads_named("trimalloc-bg"); i++) sleep_ms(10);
}

/* Off again, gone, and the default window back. */
static void bg_off(void) {
    assert_int_equal(TM_API(trimalloc_option_set)("background_thread", 0), 0);
    for (int i = 0; i < 300 && tu_threads_named("trimalloc-bg"); i++) sleep_ms(10);
    assert_int_equal(TM_API(trimalloc_option_set)("dirty_decay_ms", 10000), 0);
}

/* Start a sleeper, wait until its cache is filled; returns what it holds. */
static size_t start_sleeper(sleeper_t *s, pthread_t *t) {
    *s = (sleeper_t){PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, NULL, NULL};
    tu_thread_create(t, sleeper_main, s);
    pthread_mutex_lock(&s->mu);
    while (s->phase != 1) pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    return cached(s->tc);
}

static void wake_sleeper(sleeper_t *s, pthread_t t) {
    pthread_mutex_lock(&s->mu);
    s->phase = 2;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    tu_thread_join(t);
    if (s->why) fail_msg("%s", s->why);
}

/* Without the background thread a sleeping thread keeps its cache: 3
 * windows of 1 s, and every block still there. */
static void test_without_the_background_thread_the_cache_stays(void **state) {
    (void)state;
    assert_int_equal(TM_API(trimalloc_option_set)("dirty_decay_ms", 1000), 0);
    sleeper_t s;
    pthread_t t;
    size_t before = start_sleeper(&s, &t);
    assert_true(before >= NBLOCKS - NHELD);
    sleep_ms(3000);
    size_t after = cached(s.tc);
    wake_sleeper(&s, t);
    assert_int_equal(after, before);
}

/* With it, the cache is emptied after about a window (polled for up to 30
 * windows: the machine may be busy), and the thread goes on normally. */
static void test_the_background_thread_drains_a_sleeping_cache(void **state) {
    (void)state;
    sleeper_t s;
    pthread_t t;
    assert_true(start_sleeper(&s, &t) >= NBLOCKS - NHELD);
    bg_on(1000);
    size_t left = cached(s.tc);
    for (int i = 0; i < 300 && left; i++) {
        sleep_ms(100);
        left = cached(s.tc);
    }
    wake_sleeper(&s, t);
    assert_int_equal(tu_threads_named("trimalloc-bg"), 1);
    if (left) fail_msg("the sleeping thread's cache still holds %zu blocks after 30 windows", left);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    bg_off();
}

/* A cache reused by a new thread starts a new record: the digest only
 * reflects how many blocks each bin holds, and until 2026-12-05 a pool's
 * new worker that came back to its predecessor's counts was drained at
 * the first scan, 0.3 s into its idleness (found by an outside tester). */
typedef struct idler {
    tm_tcache_t *tc;
    long idle_ms;
    size_t before, after;
} idler_t;

static void *idler_main(void *arg) {
    idler_t *a = arg;
    void *p[20];
    for (int i = 0; i < 20; i++) p[i] = TM_API(malloc)(SIZE);
    for (int i = 0; i < 20; i++) TM_API(free)(p[i]);
    a->tc = tm_tls.own;
    a->before = cached(a->tc);
    sleep_ms(a->idle_ms);
    a->after = cached(a->tc);
    return NULL;
}

static void test_a_reused_cache_starts_a_new_record(void **state) {
    (void)state;
    bg_on(1000);
    idler_t a = {NULL, 500, 0, 0}, b = {NULL, 300, 0, 0};
    pthread_t t;
    tu_thread_create(&t, idler_main, &a); /* scanned while idle, then exits */
    tu_thread_join(t);
    sleep_ms(1200);
    tu_thread_create(&t, idler_main, &b); /* the same work, likely in a's cache */
    tu_thread_join(t);
    bg_off();
    if (b.tc != a.tc) skip(); /* another cache: nothing inherited to test */
    if (b.after != b.before)
        fail_msg("a reused cache was drained %ld ms into its idleness (%zu -> %zu blocks); "
                 "the window is 1 s", b.idle_ms, b.before, b.after);
}

/* Caches the scan emptied leave the count tcache_total_mb is shared by:
 * with 4 MiB for 9 caches (this thread's, 7 sleepers', a worker's), a
 * share of 455 KiB holds the worker's 4 KiB bin at 9 blocks; once the
 * sleepers have been emptied, the worker's next bursts get a share of 2
 * MiB or more, and the bin its whole capacity of 32 and more. */
typedef struct burster {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int phase; /* 1: first bursts done; 2: go on */
    uint32_t cap1, cap2;
} burster_t;

static uint32_t bursts_4k(void) {
    void *p[64];
    for (int round = 0; round < 10; round++) {
        for (int i = 0; i < 64; i++) p[i] = TM_API(malloc)(4096);
        for (int i = 0; i < 64; i++) TM_API(free)(p[i]);
    }
    return tc_bin_cap(&tm_tls.own->bins[size_class_of(4096)]);
}

static void *burster_main(void *arg) {
    burster_t *b = arg;
    uint32_t cap = bursts_4k();
    pthread_mutex_lock(&b->mu);
    b->cap1 = cap;
    b->phase = 1;
    pthread_cond_broadcast(&b->cv);
    while (b->phase != 2) pthread_cond_wait(&b->cv, &b->mu);
    pthread_mutex_unlock(&b->mu);
    b->cap2 = bursts_4k();
    return NULL;
}

static void test_emptied_caches_leave_the_share(void **state) {
    (void)state;
    enum { SLEEPERS = 7 };
    assert_int_equal(TM_API(trimalloc_option_set)("tcache_total_mb", 4), 0);
    sleeper_t s[SLEEPERS];
    pthread_t ts[SLEEPERS], tb;
    for (int i = 0; i < SLEEPERS; i++) start_sleeper(&s[i], &ts[i]);
    burster_t b = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};
    tu_thread_create(&tb, burster_main, &b);
    pthread_mutex_lock(&b.mu);
    while (b.phase != 1) pthread_cond_wait(&b.cv, &b.mu);
    pthread_mutex_unlock(&b.mu);
    bg_on(1000);
    size_t left = 1;
    for (int i = 0; i < 300 && left; i++) {
        sleep_ms(100);
        left = 0;
        for (int k = 0; k < SLEEPERS; k++) left += cached(s[k].tc);
    }
    pthread_mutex_lock(&b.mu);
    b.phase = 2;
    pthread_cond_broadcast(&b.cv);
    pthread_mutex_unlock(&b.mu);
    tu_thread_join(tb);
    for (int i = 0; i < SLEEPERS; i++) wake_sleeper(&s[i], ts[i]);
    bg_off();
    assert_int_equal(TM_API(trimalloc_option_set)("tcache_total_mb", 64), 0);
    assert_int_equal(left, 0);
    if (b.cap1 > 16) fail_msg("with 9 caches sharing 4 MiB the 4 KiB bin reached %u blocks", b.cap1);
    if (b.cap2 < 32)
        fail_msg("with the 7 sleepers' caches emptied the 4 KiB bin stayed at %u blocks (was %u)",
                 b.cap2, b.cap1);
}

/* A thread in a steady loop of malloc/free pairs keeps the same tops, so
 * it is drained too, once a window, while it runs: the world stop's
 * handshake then meets a live owner. Its blocks keep their bytes and the
 * heap checks. (Most of each round is spent checking the held blocks, out
 * of the allocator, so a scan mostly sees the same tops.) */
typedef struct steady {
    volatile int stop;
    long rounds, bad;
} steady_t;

static void *steady_main(void *arg) {
    steady_t *s = arg;
    tu_block_t held[NHELD];
    for (int i = 0; i < NHELD; i++) held[i] = tu_block_new(SIZE, 3, (uint64_t)i);
    while (!__atomic_load_n(&s->stop, __ATOMIC_RELAXED)) {
        tu_block_t b = tu_block_new(32, 4, (uint64_t)s->rounds);
        if (tu_find_bad(b.p, b.size, b.seed) != SIZE_MAX) s->bad++;
        TM_API(free)(b.p);
        for (int k = 0; k < 50; k++)
            for (int i = 0; i < NHELD; i++)
                if (tu_find_bad(held[i].p, held[i].size, held[i].seed) != SIZE_MAX) s->bad++;
        s->rounds++;
    }
    for (int i = 0; i < NHELD; i++) tu_block_free(&held[i]);
    return NULL;
}

static void test_a_steady_thread_is_drained_while_it_runs(void **state) {
    (void)state;
    bg_on(1000);
    steady_t s = {0, 0, 0};
    pthread_t t;
    uint64_t before = __atomic_load_n(&tm_gstats.idle_drains, __ATOMIC_RELAXED), got = 0;
    tu_thread_create(&t, steady_main, &s);
    for (int i = 0; i < 600 && got < 2; i++) {
        sleep_ms(100);
        got = __atomic_load_n(&tm_gstats.idle_drains, __ATOMIC_RELAXED) - before;
    }
    __atomic_store_n(&s.stop, 1, __ATOMIC_RELAXED);
    tu_thread_join(t);
    bg_off();
    if (got < 2) fail_msg("%llu idle drains in 60 s of a steady loop", (unsigned long long)got);
    if (s.bad) fail_msg("%ld bad checks in %ld rounds", s.bad, s.rounds);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

/* The count of emptied caches matches their flags after threads that
 * allocate, free each other's blocks and exit while _heapmin (in a loop
 * on a thread of its own, and between waves) and the idle scan empty
 * caches: a count that drifted would make every share wrong (too high a
 * count clamps to one cache: no bound at all). Until 2026-12-05 a thread
 * that exited during a _heapmin could be flagged after it had left the
 * count, and the count only grew (found by an outside tester: 700+ for
 * one live cache). */
static int trim_stop;

static void *trim_loop(void *arg) {
    (void)arg;
    while (!__atomic_load_n(&trim_stop, __ATOMIC_RELAXED)) TM_API(_heapmin)();
    return NULL;
}

typedef struct churner {
    int id;
    void *volatile *swap;
    pthread_barrier_t *done, *go; /* emptied by _heapmin in between: exits marked */
} churner_t;

static void *churner_main(void *arg) {
    churner_t *c = arg;
    for (int round = 0; round < 50; round++) {
        void *p[32];
        for (int i = 0; i < 32; i++) p[i] = TM_API(malloc)((size_t)(16 + 48 * ((i + round) % 40)));
        for (int i = 0; i < 31; i++) TM_API(free)(p[i]);
        /* one block goes to whoever comes next */
        TM_API(free)(__atomic_exchange_n(c->swap, p[31], __ATOMIC_ACQ_REL));
        if (round % 25 == c->id % 25) sleep_ms(1);
    }
    pthread_barrier_wait(c->done);
    pthread_barrier_wait(c->go);
    return NULL;
}

static void test_the_count_of_emptied_caches_stays_exact(void **state) {
    (void)state;
    bg_on(0); /* a window of 1 s, the least */
    static void *volatile swap;
    pthread_barrier_t done, go;
    pthread_barrier_init(&done, NULL, 9);
    pthread_barrier_init(&go, NULL, 9);
    pthread_t trimmer;
    __atomic_store_n(&trim_stop, 0, __ATOMIC_RELAXED);
    tu_thread_create(&trimmer, trim_loop, NULL);
    for (int wave = 0; wave < 40; wave++) {
        churner_t c[8];
        pthread_t t[8];
        for (int i = 0; i < 8; i++) {
            c[i] = (churner_t){wave * 8 + i, &swap, &done, &go};
            tu_thread_create(&t[i], churner_main, &c[i]);
        }
        assert_int_equal(TM_API(_heapmin)(), 0); /* while they work */
        pthread_barrier_wait(&done);
        if (wave % 2) assert_int_equal(TM_API(_heapmin)(), 0); /* they exit marked */
        pthread_barrier_wait(&go);
        for (int i = 0; i < 8; i++) tu_thread_join(t[i]);
    }
    __atomic_store_n(&trim_stop, 1, __ATOMIC_RELAXED);
    tu_thread_join(trimmer);
    pthread_barrier_destroy(&done);
    pthread_barrier_destroy(&go);
    assert_int_equal(TM_API(_heapmin)(), 0); /* this thread's cache is marked too */
    bg_off();
    TM_API(free)(swap);
    unsigned flagged = 0, live = 0;
    tcache_registry_lock();
    for (tm_tcache_t *tc = tcache_registry_first(); tc; tc = tc->next) {
        live++;
        flagged += tc->drained_unused;
    }
    tcache_registry_unlock();
    if (tcache_drained_unused() != flagged || flagged > live)
        fail_msg("the count of emptied caches is %u, %u of the %u live caches are flagged",
                 tcache_drained_unused(), flagged, live);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_without_the_background_thread_the_cache_stays),
        cmocka_unit_test(test_the_background_thread_drains_a_sleeping_cache),
        cmocka_unit_test(test_a_reused_cache_starts_a_new_record),
        cmocka_unit_test(test_emptied_caches_leave_the_share),
        cmocka_unit_test(test_a_steady_thread_is_drained_while_it_runs),
        cmocka_unit_test(test_the_count_of_emptied_caches_stays_exact),
    };
    return cmocka_run_group_tests_name("unit_idle_caches", tests, NULL, NULL);
}
