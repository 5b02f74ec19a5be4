/*
 * heapmin_concurrent.c -- _heapmin() while every other thread is busy in the
 * allocator: the world-stop handshake (world.c) must drain caches whose
 * owners are in the middle of their fast paths, without losing, doubling or
 * corrupting a block.
 *
 *   churn       WORKERS threads allocate, fill, verify and free at full
 *               speed, hand blocks to each other (cross-thread frees), and
 *               verify everything they hold whenever a _heapmin finished;
 *               TRIMMERS threads call _heapmin() (and _heapchk())
 *               back to back, concurrently with each other; a
 *               spawner starts short-lived threads (joined and detached)
 *               that allocate, free and exit during the trims.
 *   callers     many threads call _heapmin() at the same moment, again and
 *               again, each holding a live set that must survive.
 *   pause_mid   workers that stop inside a burst (blocked holding nothing
 *               of the allocator's) while others churn and trims run.
 *   stats       statistics read back to back while two threads churn
 *               large runs through their queues and another trims.
 * No time limits: all loops are counted. Iterations scale with
 * TRIMALLOC_TEST_SCALE and shrink under sanitizers.
 */
#include <sched.h>
#include <stdatomic.h>

#include "test_cmocka.h"

enum {
    WORKERS = 4,
    TRIMMERS = 2,
    HELD = 128,    /* blocks a worker holds */
    MAILBOX = 64,  /* blocks in flight to a worker */
};

/* The whole heap is consistent: _heapchk() (heap_crt.c) walks every arena.
 * _HEAPEMPTY (nothing allocated yet, as in the CRT) is as good as _HEAPOK. */
static atomic_long trims_done;

/* _heapmin from any thread: 0, errno kept (errno is per thread). */
static void heapmin_any_thread(void)
{
    errno = 12345;
    int rc = TM_API(_heapmin)();
    int e = errno;
    TU_CHECK(rc == 0, "_heapmin() = %d", rc);
    TU_CHECK(e == 12345, "_heapmin() changed errno to %d", e);
    atomic_fetch_add(&trims_done, 1);
}

static size_t huge_max(void)
{
    return TU_TSAN ? 512 * TU_KIB : 3 * TU_MIB;
}

/* ---- mailboxes: cross-thread frees ----------------------------------------------- */

typedef struct mailbox {
    pthread_mutex_t lock;
    tu_block_t b[MAILBOX];
    int n;
} mailbox_t;

static mailbox_t boxes[WORKERS];

/* Give b to worker `to`; false if its box is full (we keep b then). */
static int mail(int to, tu_block_t b)
{
    mailbox_t *m = &boxes[to];
    int ok = 0;
    tu_lock(&m->lock);
    if (m->n < MAILBOX) {
        m->b[m->n++] = b;
        ok = 1;
    }
    tu_unlock(&m->lock);
    return ok;
}

/* Verify and free whatever others sent us. */
static void drain_mail(int me)
{
    tu_block_t local[MAILBOX];
    mailbox_t *m = &boxes[me];
    tu_lock(&m->lock);
    int n = m->n;
    memcpy(local, m->b, (size_t)n * sizeof local[0]);
    m->n = 0;
    tu_unlock(&m->lock);
    for (int i = 0; i < n; i++)
        tu_block_free(&local[i]);
}

/* ---- churn ----------------------------------------------------------------------------- */

static atomic_int churn_stop;
static atomic_int workers_left;

static void *worker_main(void *arg)
{
    int id = (int)(intptr_t)arg;
    tu_rng_t rng;
    tu_rng_seed(&rng, 0xc0de + (uint64_t)id);
    tu_block_t held[HELD];
    memset(held, 0, sizeof held);
    uint64_t seq = 0;
    long steps = tu_scaled(150000, 10000);
    long seen_trims = atomic_load(&trims_done);
    for (long s = 0; s < steps; s++) {
        tu_block_t *b = &held[tu_rand(&rng) % HELD];
        if (b->p) {
            if (tu_chance(&rng, 25)) {
                int to = (int)(tu_rand(&rng) % WORKERS);
                if (to != id && mail(to, *b)) {
                    b->p = NULL;
                    continue;
                }
            }
            tu_block_free(b);
        } else {
            *b = tu_block_new(tu_rand_size(&rng, huge_max(), 2), (uint64_t)id, ++seq);
        }
        if ((s & 63) == 0)
            drain_mail(id);
        /* a trim finished since we last looked: everything we hold is intact */
        long t = atomic_load_explicit(&trims_done, memory_order_relaxed);
        if (t != seen_trims) {
            seen_trims = t;
            for (int i = 0; i < HELD; i++)
                if (held[i].p)
                    tu_block_check(&held[i]);
        }
    }
    for (int i = 0; i < HELD; i++)
        tu_block_free(&held[i]);
    atomic_fetch_sub(&workers_left, 1);
    /* keep taking mail until everyone is done sending */
    while (atomic_load(&workers_left) > 0)
        drain_mail(id);
    drain_mail(id);
    return NULL;
}

static void *trimmer_main(void *arg)
{
    (void)arg;
    long n = 0;
    while (!atomic_load(&churn_stop) || n == 0) {
        heapmin_any_thread();
        if (n % 8 == 0)
            tu_heap_ok();
        n++;
    }
    return (void *)(intptr_t)n;
}

/* Short-lived threads: allocate, free some, hand one block to a worker's
 * mailbox (freed there after we are gone), exit. */
static void *short_lived(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    tu_rng_t rng;
    tu_rng_seed(&rng, id);
    tu_block_t b[32];
    for (int i = 0; i < 32; i++)
        b[i] = tu_block_new(tu_rand_size(&rng, TU_MIB, 5), id, (uint64_t)i);
    for (int i = 0; i < 32; i++) {
        if (i == 0 && mail((int)(id % WORKERS), b[i]))
            continue;
        tu_block_free(&b[i]);
    }
    return NULL;
}

static atomic_long detached_running;

static void *short_lived_detached(void *arg)
{
    short_lived(arg);
    atomic_fetch_sub(&detached_running, 1);
    return NULL;
}

static void *spawner_main(void *arg)
{
    (void)arg;
    uint64_t id = 1000;
    long waves = 0;
    while (!atomic_load(&churn_stop) || waves == 0) {
        pthread_t t[4];
        for (int i = 0; i < 4; i++)
            tu_thread_create(&t[i], short_lived, (void *)(uintptr_t)id++);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_t d;
        atomic_fetch_add(&detached_running, 1);
        int rc = pthread_create(&d, &attr, short_lived_detached, (void *)(uintptr_t)id++);
        TU_CHECK(rc == 0, "pthread_create: %d", rc);
        pthread_attr_destroy(&attr);
        for (int i = 0; i < 4; i++)
            tu_thread_join(t[i]);
        waves++;
    }
    return (void *)(intptr_t)waves;
}

static void test_churn_with_trims_and_thread_churn(void **state)
{
    (void)state;
    for (int i = 0; i < WORKERS; i++) {
        pthread_mutex_init(&boxes[i].lock, NULL);
        boxes[i].n = 0;
    }
    atomic_store(&churn_stop, 0);
    atomic_store(&workers_left, WORKERS);
    atomic_store(&trims_done, 0);
    pthread_t w[WORKERS], tr[TRIMMERS], sp;
    for (int i = 0; i < WORKERS; i++)
        tu_thread_create(&w[i], worker_main, (void *)(intptr_t)i);
    for (int i = 0; i < TRIMMERS; i++)
        tu_thread_create(&tr[i], trimmer_main, NULL);
    tu_thread_create(&sp, spawner_main, NULL);

    for (int i = 0; i < WORKERS; i++)
        tu_thread_join(w[i]);
    atomic_store(&churn_stop, 1);
    long trims = 0;
    for (int i = 0; i < TRIMMERS; i++)
        trims += (long)(intptr_t)tu_thread_join(tr[i]);
    long waves = (long)(intptr_t)tu_thread_join(sp);
    while (atomic_load(&detached_running) > 0)
        sched_yield();
    /* mail sent by short-lived threads after the workers' last look */
    for (int i = 0; i < WORKERS; i++)
        drain_mail(i);
    print_message("%ld trims, %ld waves of short-lived threads\n", trims, waves);
    assert_true(trims >= TRIMMERS);

    errno = 12345;
    assert_int_equal(TM_API(_heapmin)(), 0);
    assert_int_equal(errno, 12345);
    tu_heap_ok();
    trimalloc_stats_t st;
    TM_API(trimalloc_stats_get)(&st);
    assert_int_equal(st.tcache_bytes, 0);
}

/* ---- many simultaneous callers ------------------------------------------------------- */

enum { CALLERS = 6 };
static pthread_barrier_t callers_barrier;

static void *caller_main(void *arg)
{
    int id = (int)(intptr_t)arg;
    tu_rng_t rng;
    tu_rng_seed(&rng, 0xca11 + (uint64_t)id);
    enum { LIVE = 64, SPIKE = 512 };
    tu_block_t live[LIVE];
    static __thread tu_block_t spike[SPIKE];
    for (int i = 0; i < LIVE; i++)
        live[i] = tu_block_new(tu_rand_size(&rng, huge_max(), 10), (uint64_t)id, (uint64_t)i);
    long rounds = tu_scaled(40, 5);
    for (long r = 0; r < rounds; r++) {
        for (int i = 0; i < SPIKE; i++)
            spike[i] = tu_block_new(tu_rand_size(&rng, huge_max(), 10), (uint64_t)id,
                                    1000 + (uint64_t)i);
        for (int i = 0; i < SPIKE; i++)
            tu_block_free(&spike[i]);
        pthread_barrier_wait(&callers_barrier); /* everyone calls at once */
        heapmin_any_thread();
        for (int i = 0; i < LIVE; i++)
            tu_block_check(&live[i]);
        /* replace a few live blocks so the live set moves around */
        for (int i = 0; i < 4; i++) {
            int k = (int)(tu_rand(&rng) % LIVE);
            tu_block_free(&live[k]);
            live[k] = tu_block_new(tu_rand_size(&rng, huge_max(), 10), (uint64_t)id,
                                   (uint64_t)(r * 100 + i));
        }
    }
    for (int i = 0; i < LIVE; i++)
        tu_block_free(&live[i]);
    return NULL;
}

static void test_simultaneous_callers(void **state)
{
    (void)state;
    atomic_store(&trims_done, 0);
    assert_int_equal(pthread_barrier_init(&callers_barrier, NULL, CALLERS), 0);
    pthread_t t[CALLERS];
    for (int i = 0; i < CALLERS; i++)
        tu_thread_create(&t[i], caller_main, (void *)(intptr_t)i);
    for (int i = 0; i < CALLERS; i++)
        tu_thread_join(t[i]);
    pthread_barrier_destroy(&callers_barrier);
    assert_int_equal(atomic_load(&trims_done), (long)CALLERS * tu_scaled(40, 5));
    tu_heap_ok();
    assert_int_equal(TM_API(_heapmin)(), 0);
    trimalloc_stats_t st;
    TM_API(trimalloc_stats_get)(&st);
    assert_int_equal(st.tcache_bytes, 0);
}

/* ---- threads that stop between bursts while trims run ----------------------------------
 * Each burst fills the thread's cache, then the thread sleeps on a
 * condition variable until the main thread has trimmed; it then checks its
 * live set and goes on. Alternates busy and blocked owners under the same
 * trims, so the handshake sees both states many times. */

enum { PAUSERS = 4 };
static pthread_mutex_t pause_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pause_cond = PTHREAD_COND_INITIALIZER;
static int pause_waiting, pause_gen;
static atomic_int pausers_done;

static void *pauser_main(void *arg)
{
    int id = (int)(intptr_t)arg;
    tu_rng_t rng;
    tu_rng_seed(&rng, 0xba5e + (uint64_t)id);
    enum { LIVE = 96 };
    tu_block_t live[LIVE];
    memset(live, 0, sizeof live);
    long bursts = tu_scaled(30, 4);
    int gen = 0;
    for (long b = 0; b < bursts; b++) {
        for (int i = 0; i < 2000; i++) {
            tu_block_t *x = &live[tu_rand(&rng) % LIVE];
            if (x->p)
                tu_block_free(x);
            else
                *x = tu_block_new(tu_rand_size(&rng, TU_MIB, 5), (uint64_t)id,
                                  (uint64_t)(b * 10000 + i));
        }
        if (id % 2 == 0 || b % 2 == 0) { /* half the time, odd threads keep going */
            tu_lock(&pause_lock);
            pause_waiting++;
            pthread_cond_broadcast(&pause_cond);
            while (pause_gen == gen)
                pthread_cond_wait(&pause_cond, &pause_lock);
            gen = pause_gen;
            tu_unlock(&pause_lock);
            for (int i = 0; i < LIVE; i++)
                if (live[i].p)
                    tu_block_check(&live[i]);
        } else {
            tu_lock(&pause_lock);
            gen = pause_gen; /* skip this round */
            tu_unlock(&pause_lock);
        }
    }
    for (int i = 0; i < LIVE; i++)
        tu_block_free(&live[i]);
    atomic_fetch_add(&pausers_done, 1);
    tu_lock(&pause_lock);
    pthread_cond_broadcast(&pause_cond);
    tu_unlock(&pause_lock);
    return NULL;
}

static void test_blocked_and_busy_owners(void **state)
{
    (void)state;
    pthread_t t[PAUSERS];
    pause_waiting = 0;
    pause_gen = 0;
    atomic_store(&pausers_done, 0);
    for (int i = 0; i < PAUSERS; i++)
        tu_thread_create(&t[i], pauser_main, (void *)(intptr_t)i);
    long trims = 0;
    for (;;) {
        /* trim while some threads are blocked and others may be busy */
        heapmin_any_thread();
        trims++;
        tu_lock(&pause_lock);
        if (atomic_load(&pausers_done) == PAUSERS) {
            tu_unlock(&pause_lock);
            break;
        }
        if (pause_waiting > 0) {
            pause_waiting = 0;
            pause_gen++;
            pthread_cond_broadcast(&pause_cond);
        } else {
            /* wait for someone to block, or for the end */
            while (pause_waiting == 0 && atomic_load(&pausers_done) < PAUSERS)
                pthread_cond_wait(&pause_cond, &pause_lock);
        }
        tu_unlock(&pause_lock);
    }
    for (int i = 0; i < PAUSERS; i++)
        tu_thread_join(t[i]);
    print_message("%ld trims\n", trims);
    heapmin_any_thread();
    tu_heap_ok();
    trimalloc_stats_t st;
    TM_API(trimalloc_stats_get)(&st);
    assert_int_equal(st.tcache_bytes, 0);
}

/* ---- statistics read while owners use their large-run queues and trims run -- */

static atomic_int runs_left;

/* Runs of 3-20 pages, mostly this thread's own: the owner's lockless
 * append to and retake from its queue (tcache.c, rl_push_owner). */
static void *run_churn(void *arg)
{
    tu_rng_t r;
    tu_rng_seed(&r, (uint64_t)(uintptr_t)arg);
    tu_block_t held[8] = {{0}};
    long n = tu_scaled(20000, 2000);
    for (long i = 0; i < n; i++) {
        tu_block_t *b = &held[tu_rand(&r) % 8];
        tu_block_free(b);
        *b = tu_block_new(tu_rand_range(&r, 8 << 10, 80 << 10), (uint64_t)(uintptr_t)arg,
                          (uint64_t)i);
    }
    for (int i = 0; i < 8; i++)
        tu_block_free(&held[i]);
    atomic_fetch_sub(&runs_left, 1);
    return NULL;
}

static void *trims_while_runs(void *arg)
{
    (void)arg;
    while (atomic_load(&runs_left) > 0)
        tu_heapmin_ok();
    return NULL;
}

/* trimalloc_stats_get() reads the queues (and _heapmin's counters) without
 * stopping their owners: no race (the ThreadSanitizer flavour of this
 * test found one on the _heapmin counters, 2026-12-05), and figures that
 * stay plausible. */
static void test_stats_while_queues_and_trims_move(void **state)
{
    (void)state;
    enum { CHURNERS = 2 };
    pthread_t t[CHURNERS], trimmer;
    atomic_store(&runs_left, CHURNERS);
    for (int i = 0; i < CHURNERS; i++)
        tu_thread_create(&t[i], run_churn, (void *)(uintptr_t)(i + 1));
    tu_thread_create(&trimmer, trims_while_runs, NULL);
    long reads = 0;
    while (atomic_load(&runs_left) > 0 || reads < 10) {
        trimalloc_stats_t st;
        assert_int_equal(TM_API(trimalloc_stats_get)(&st), 0);
        /* two threads' queues (1 MiB each) and caches, far below this */
        assert_true(st.tcache_bytes < 64 * TU_MIB);
        assert_true(st.allocated <= st.mapped);
        assert_true(st.heapmin_last_pause_ns <= st.heapmin_max_pause_ns);
        reads++;
    }
    for (int i = 0; i < CHURNERS; i++)
        tu_thread_join(t[i]);
    tu_thread_join(trimmer);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_churn_with_trims_and_thread_churn),
        cmocka_unit_test(test_simultaneous_callers),
        cmocka_unit_test(test_blocked_and_busy_owners),
        cmocka_unit_test(test_stats_while_queues_and_trims_move),
    };
    return cmocka_run_group_tests_name("stress_heapmin_concurrent (" TU_FLAVOUR ")", tests, NULL,
                                       NULL);
}
