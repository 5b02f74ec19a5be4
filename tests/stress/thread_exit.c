/*
 * thread_exit.c -- short-lived threads, and allocation during thread exit.
 *
 * Waves of threads each allocate blocks, free some, hand some to the main
 * thread (which checks and frees them after the threads are gone), and exit
 * -- by returning or through pthread_exit, joined or detached. While a
 * thread exits, destructors registered by this test run, and they use the
 * allocator: they verify and free blocks the thread allocated earlier, and
 * allocate new blocks, some of which outlive the thread.
 *
 * The allocator has its own thread-exit hook that flushes the thread's
 * cache. Our destructors must work whether they run before or after it, so
 * three kinds are registered, covering both orders whatever mechanism the
 * allocator uses:
 *   - a pthread key created at start-up (a low key index) and one created
 *     later (a high index); glibc runs key destructors in index order;
 *   - each key destructor re-arms itself with pthread_setspecific for a few
 *     rounds, so later rounds run after every first-round destructor,
 *     including an allocator's key destructor;
 *   - a glibc thread_local destructor (__cxa_thread_atexit_impl), which runs
 *     before all key destructors.
 */
#include <stdatomic.h>
#include <stdbool.h>

#include "test_cmocka.h"

enum {
    WAVE = 16,        /* threads alive at once */
    PER_THREAD = 64,  /* blocks a thread allocates in its body */
    /* Extra rounds each key destructor asks for. glibc runs at most 4
     * (PTHREAD_DESTRUCTOR_ITERATIONS); TSan finishes its view of a thread in
     * a key destructor of round 4, after which instrumented code crashes
     * inside TSan, so under TSan our destructors stop at round 3. */
    REARM = TU_TSAN ? 2 : 3,
};

/* Blocks handed to the main thread, from thread bodies and destructors. */
static struct {
    pthread_mutex_t lock;
    tu_block_t *b; /* grown with TM_API(realloc) */
    size_t len, cap;
} orphans = {.lock = PTHREAD_MUTEX_INITIALIZER};

static pthread_key_t early_key, late_key;
static atomic_long dtor_runs, dtor_allocs, cxa_runs;

/* Detached threads cannot be joined: each reports when its last
 * destructor round is over. */
static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond = PTHREAD_COND_INITIALIZER;
static long detached_done;

static void orphan_add(tu_block_t b)
{
    tu_lock(&orphans.lock);
    if (orphans.len == orphans.cap) {
        size_t cap = orphans.cap ? 2 * orphans.cap : 256;
        tu_block_t *nb = TM_API(realloc)(orphans.b, cap * sizeof *nb);
        TU_CHECK(nb != NULL, "realloc(orphans, %zu)", cap);
        orphans.b = nb;
        orphans.cap = cap;
    }
    orphans.b[orphans.len++] = b;
    tu_unlock(&orphans.lock);
}

/* Verify every orphan, then free them all; returns how many there were.
 * Detached threads may still be adding to the list. */
static size_t orphans_release(void)
{
    tu_lock(&orphans.lock);
    size_t n = orphans.len;
    for (size_t k = 0; k < n; k++)
        tu_block_check(&orphans.b[k]);
    for (size_t k = 0; k < n; k++)
        tu_block_free(&orphans.b[k]);
    orphans.len = 0;
    tu_unlock(&orphans.lock);
    return n;
}

/* What a destructor gets: blocks of the dying thread to check and free, and
 * how many more rounds to ask for. Allocated with TM_API(malloc) and freed
 * by the destructor's last round. */
struct tls_state {
    uint64_t tid;
    int rounds_left;
    int detached;
    int is_late; /* the late key's state reports a detached thread's end */
    tu_block_t b[8];
};

static struct tls_state *tls_state_new(uint64_t tid, int detached, int is_late, tu_rng_t *rng)
{
    struct tls_state *st = TM_API(malloc)(sizeof *st);
    TU_CHECK(st != NULL, "malloc(tls_state)");
    st->tid = tid;
    st->rounds_left = REARM;
    st->detached = detached;
    st->is_late = is_late;
    for (int i = 0; i < 8; i++)
        st->b[i] = tu_block_new(tu_rand_size(rng, TU_MIB, 20), tid, 1000 + (uint64_t)i);
    return st;
}

/* The work every destructor does: check and free the blocks it was given,
 * allocate fresh ones (kept for the next round or handed to main), and
 * churn a little. */
static void dtor_work(struct tls_state *st, int round)
{
    tu_rng_t rng;
    tu_rng_seed(&rng, st->tid * 131 + (uint64_t)round);
    for (int i = 0; i < 8; i++)
        tu_block_free(&st->b[i]);
    for (int i = 0; i < 32; i++) {
        void *p = TM_API(malloc)(tu_rand_size(&rng, 64 * TU_KIB, 0));
        TU_CHECK(p != NULL, "malloc in destructor");
        TM_API(free)(p);
    }
    for (int i = 0; i < 8; i++) {
        tu_block_t b = tu_block_new(tu_rand_size(&rng, TU_MIB, 20), st->tid,
                                    2000 + 10 * (uint64_t)round + (uint64_t)i);
        if (i < 2)
            orphan_add(b); /* outlives the thread */
        else
            st->b[i] = b;
        atomic_fetch_add(&dtor_allocs, 1);
    }
    st->b[0].p = st->b[1].p = NULL; /* handed over */
}

static void key_dtor(pthread_key_t key, void *v)
{
    struct tls_state *st = v;
    atomic_fetch_add(&dtor_runs, 1);
    dtor_work(st, REARM - st->rounds_left);
    if (st->rounds_left-- > 0) {
        /* ask glibc for another round, after this round's other destructors */
        int rc = pthread_setspecific(key, st);
        TU_CHECK(rc == 0, "pthread_setspecific in destructor: %d", rc);
        return;
    }
    for (int i = 0; i < 8; i++)
        tu_block_free(&st->b[i]);
    int report = st->detached && st->is_late;
    TM_API(free)(st);
    if (report) {
        tu_lock(&done_lock);
        detached_done++;
        pthread_cond_broadcast(&done_cond);
        tu_unlock(&done_lock);
    }
}

static void early_dtor(void *v)
{
    key_dtor(early_key, v);
}

static void late_dtor(void *v)
{
    key_dtor(late_key, v);
}

#ifdef __GLIBC__
/* glibc's thread_local destructor registration (what C++ uses). */
extern int __cxa_thread_atexit_impl(void (*fn)(void *), void *obj, void *dso) __attribute__((weak));
extern void *__dso_handle __attribute__((weak));

static void cxa_dtor(void *v)
{
    struct tls_state *st = v;
    atomic_fetch_add(&cxa_runs, 1);
    st->rounds_left = 0;
    dtor_work(st, 0);
    for (int i = 0; i < 8; i++)
        tu_block_free(&st->b[i]);
    TM_API(free)(st);
}
#endif

/* The early key is created before main runs, before most programs'
 * first allocation. */
__attribute__((constructor(101))) static void make_early_key(void)
{
    if (pthread_key_create(&early_key, early_dtor) != 0)
        abort();
}

struct thread_arg {
    uint64_t tid;
    int detached;
    int use_pthread_exit;
};

static void *short_lived(void *arg)
{
    struct thread_arg a = *(struct thread_arg *)arg;
    TM_API(free)(arg); /* allocated by the main thread */
    tu_rng_t rng;
    tu_rng_seed(&rng, a.tid);

    tu_block_t b[PER_THREAD];
    for (int i = 0; i < PER_THREAD; i++)
        b[i] = tu_block_new(tu_rand_size(&rng, 2 * TU_MIB, 10), a.tid, (uint64_t)i);
    for (int i = 0; i < PER_THREAD; i++) {
        if (i % 4 == 0)
            orphan_add(b[i]); /* main frees it later */
        else if (i % 4 == 1)
            continue; /* freed below, after the destructors are set */
        else
            tu_block_free(&b[i]);
    }

    int rc = pthread_setspecific(early_key, tls_state_new(a.tid, a.detached, 0, &rng));
    TU_CHECK(rc == 0, "pthread_setspecific(early)");
    rc = pthread_setspecific(late_key, tls_state_new(a.tid, a.detached, 1, &rng));
    TU_CHECK(rc == 0, "pthread_setspecific(late)");
#ifdef __GLIBC__
    if (__cxa_thread_atexit_impl && &__dso_handle) {
        rc = __cxa_thread_atexit_impl(cxa_dtor, tls_state_new(a.tid, 0, 0, &rng), &__dso_handle);
        TU_CHECK(rc == 0, "__cxa_thread_atexit_impl");
    }
#endif
    for (int i = 1; i < PER_THREAD; i += 4)
        tu_block_free(&b[i]);
    if (a.use_pthread_exit)
        pthread_exit(NULL);
    return NULL;
}

static void test_short_lived_threads(void **state)
{
    (void)state;
    assert_int_equal(pthread_key_create(&late_key, late_dtor), 0);

    long total = tu_scaled(480, 48);
    long detached = 0;
    size_t orphaned = 0; /* blocks that outlived their thread */
    uint64_t tid = 1;
    for (long done = 0; done < total; done += WAVE) {
        pthread_t ts[WAVE];
        int joinable[WAVE];
        for (int i = 0; i < WAVE; i++) {
            struct thread_arg *a = TM_API(malloc)(sizeof *a);
            assert_non_null(a);
            a->tid = tid++;
            a->detached = (i % 8) == 7;
            a->use_pthread_exit = (i % 3) == 1;
            joinable[i] = !a->detached;
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            if (a->detached) {
                pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
                detached++;
            }
            assert_int_equal(pthread_create(&ts[i], &attr, short_lived, a), 0);
            pthread_attr_destroy(&attr);
        }
        for (int i = 0; i < WAVE; i++)
            if (joinable[i])
                tu_thread_join(ts[i]);

        /* Now and then, while threads come and go: give back what exited
         * threads cached, then check the blocks they left and free them. */
        if ((done / WAVE) % 8 == 7) {
            assert_int_equal(TM_API(_heapmin)(), 0);
            orphaned += orphans_release();
        }
    }
    tu_lock(&done_lock);
    while (detached_done < detached)
        pthread_cond_wait(&done_cond, &done_lock);
    tu_unlock(&done_lock);

    /* Every thread ran both key destructors 1 + REARM times. */
    long threads = tid - 1;
    assert_int_equal(atomic_load(&dtor_runs), threads * 2 * (1 + REARM));
#ifdef __GLIBC__
    if (__cxa_thread_atexit_impl && &__dso_handle)
        assert_int_equal(atomic_load(&cxa_runs), threads);
#endif

    /* Give back what exited threads cached, then check what they left. */
    errno = 0;
    assert_int_equal(TM_API(_heapmin)(), 0);
    orphaned += orphans_release();
    print_message("%ld threads (%ld detached), %zu blocks outlived their thread, %ld allocations "
                  "in destructors\n",
                  threads, detached, orphaned, atomic_load(&dtor_allocs));
    /* a quarter of each thread's blocks, and 2 per destructor call */
    assert_int_equal(orphaned, (size_t)threads * (PER_THREAD / 4) +
                                   2 * (size_t)(atomic_load(&dtor_runs) + atomic_load(&cxa_runs)));
}

/* Threads that allocate nothing at all, or only in a destructor: the
 * allocator's per-thread state is created during exit, or never. */
static void *idle_thread(void *arg)
{
    /* arg, if any, was allocated by the main thread: this thread's first
     * use of the allocator is the destructor that frees it */
    if (arg != NULL) {
        int rc = pthread_setspecific(late_key, arg);
        TU_CHECK(rc == 0, "pthread_setspecific");
    }
    return NULL;
}

static void test_threads_without_allocations(void **state)
{
    (void)state;
    tu_rng_t rng;
    tu_rng_seed(&rng, 6);
    long before = atomic_load(&dtor_runs);
    long n = tu_scaled(64, 8);
    for (long i = 0; i < n; i++) {
        pthread_t t;
        struct tls_state *st = NULL;
        if (i & 1)
            st = tls_state_new(100000 + (uint64_t)i, 0, 1, &rng); /* made here, freed there */
        tu_thread_create(&t, idle_thread, st);
        tu_thread_join(t);
    }
    assert_int_equal(atomic_load(&dtor_runs) - before, (n / 2) * (1 + REARM));
    assert_int_equal(TM_API(_heapmin)(), 0);
    orphans_release();
    TM_API(free)(orphans.b);
    orphans.b = NULL;
    orphans.cap = 0;
}

/* A thread whose first allocation comes from a key destructor in glibc's
 * last round (the destructor re-arms itself until then). Its cache must
 * not outlive it: until 2026-12-05 the allocator's exit key came before
 * the program's, glibc had passed it in that round, the cache stayed
 * registered with a pointer into the dead thread's memory, and the next
 * _heapmin wrote there (a crash once the thread's stack was unmapped). */
static pthread_key_t last_round_key;
static __thread int last_round_calls;

static void last_round_dtor(void *v)
{
    if (++last_round_calls < 4) { /* glibc runs at most 4 rounds */
        int rc = pthread_setspecific(last_round_key, v);
        TU_CHECK(rc == 0, "pthread_setspecific");
        return;
    }
    unsigned char *p = TM_API(malloc)(40); /* this thread's first allocation */
    TU_CHECK(p != NULL, "malloc in the last destructor round");
    memset(p, 0x3d, 40);
    TM_API(free)(p);
}

static void *arm_last_round(void *arg)
{
    (void)arg;
    int rc = pthread_setspecific(last_round_key, (void *)1);
    TU_CHECK(rc == 0, "pthread_setspecific");
    return NULL;
}

static unsigned caches_now(void)
{
    trimalloc_stats_t st;
    assert_int_equal(TM_API(trimalloc_stats_get)(&st), 0);
    return st.nthreads;
}

/* n threads running fn, one after the other, each on a stack above
 * glibc's cache of stacks (unmapped once joined): after each, the count
 * of caches is what it was (its cache went with it), and with trim_each
 * a _heapmin, which would write into a cache left behind, succeeds. */
static void threads_leave_no_cache(void *(*fn)(void *), int n, bool trim_each)
{
    TM_API(free)(TM_API(malloc)(8)); /* this thread's cache exists */
    unsigned before = caches_now();
    pthread_attr_t attr;
    assert_int_equal(pthread_attr_init(&attr), 0);
    assert_int_equal(pthread_attr_setstacksize(&attr, (size_t)64 << 20), 0);
    for (int i = 0; i < n; i++) {
        pthread_t t;
        assert_int_equal(pthread_create(&t, &attr, fn, NULL), 0);
        assert_int_equal(pthread_join(t, NULL), 0);
        assert_int_equal(caches_now(), before);
        if (trim_each)
            assert_int_equal(TM_API(_heapmin)(), 0);
    }
    assert_int_equal(pthread_attr_destroy(&attr), 0);
}

static void test_first_allocation_in_the_last_destructor_round(void **state)
{
    (void)state;
    if (TU_TSAN)
        skip(); /* ThreadSanitizer's own thread state is gone by the last round:
                   its runtime aborts in the interceptors the allocator calls */
    assert_int_equal(pthread_key_create(&last_round_key, last_round_dtor), 0);
    threads_leave_no_cache(arm_last_round, 4, false);
    assert_int_equal(TM_API(_heapmin)(), 0);
    assert_int_equal(pthread_key_delete(last_round_key), 0);
    tu_heap_ok();
}

/* A key destructor of the program's that frees its value and calls
 * pthread_exit (undefined by POSIX; glibc's malloc copes): glibc starts the
 * thread's exit again and skips the key destructors not yet called, the
 * allocator's among them. Until 2026-12-06 the cache stayed registered
 * with a pointer into the dead thread's memory: the count of caches grew
 * with every such thread, and the next _heapmin wrote there (a crash once
 * the stack was unmapped; an outside tester). */
static pthread_key_t exit_key;

static void exit_dtor(void *v)
{
    unsigned char *p = v;
    for (int i = 0; i < 64; i++)
        TU_CHECK(p[i] == 0x6e, "a key's block changed before its destructor");
    TM_API(free)(p);
    pthread_exit(NULL);
}

static void *set_exit_key(void *arg)
{
    (void)arg;
    unsigned char *p = TM_API(malloc)(64);
    TU_CHECK(p != NULL, "malloc");
    memset(p, 0x6e, 64);
    void *q[16];
    for (int i = 0; i < 16; i++) { /* blocks in its cache when it exits */
        q[i] = TM_API(malloc)(100 + 50 * (size_t)i);
        TU_CHECK(q[i] != NULL, "malloc");
    }
    for (int i = 0; i < 16; i++)
        TM_API(free)(q[i]);
    int rc = pthread_setspecific(exit_key, p);
    TU_CHECK(rc == 0, "pthread_setspecific");
    return NULL;
}

static void test_key_destructor_that_calls_pthread_exit(void **state)
{
    (void)state;
    if (TU_TSAN)
        skip(); /* pthread_exit inside ThreadSanitizer's own exit path */
    assert_int_equal(pthread_key_create(&exit_key, exit_dtor), 0);
    threads_leave_no_cache(set_exit_key, 8, true);
    assert_int_equal(pthread_key_delete(exit_key), 0);
    tu_heap_ok();
}

/* Detached threads that never allocate, exiting while glibc's cache of
 * thread stacks is full: in its last stage of exit (after the key
 * destructors) such a thread frees the TLS blocks of the cached stacks
 * that drop out, which is its first call into the allocator. Until
 * 2026-12-05 that made it a cache no destructor came to unregister, with a
 * pointer into the thread's stack, and the next _heapmin wrote there once
 * glibc had unmapped the stack (a crash; found by review). Only the
 * drop-in flavour sees glibc's frees. */
static void *sleep_briefly(void *arg)
{
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    return arg;
}

static int threads_now(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    int n = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %d", &n) == 1)
            break;
    if (f)
        fclose(f);
    return n;
}

static void *allocate_once(void *arg)
{
    TM_API(free)(TM_API(malloc)(100));
    return sleep_briefly(arg);
}

/* Threads with 8 MiB stacks (glibc's default here), joined: their stacks
 * fill glibc's 40 MiB cache of stacks. */
static void fill_stack_cache(void)
{
    pthread_t t[8];
    for (int i = 0; i < 8; i++)
        tu_thread_create(&t[i], allocate_once, NULL);
    for (int i = 0; i < 8; i++)
        tu_thread_join(t[i]);
}

static void test_detached_threads_that_never_allocate(void **state)
{
    (void)state;
#ifdef TRIMALLOC_PREFIX
    skip(); /* glibc's own frees go to glibc's malloc here */
#endif
    TM_API(free)(TM_API(malloc)(8)); /* this thread's cache exists */
    unsigned before = caches_now();
    fill_stack_cache();
    fill_stack_cache();
    pthread_attr_t attr;
    assert_int_equal(pthread_attr_init(&attr), 0);
    assert_int_equal(pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED), 0);
    assert_int_equal(pthread_attr_setstacksize(&attr, (size_t)1 << 20), 0);
    for (int i = 0; i < 20; i++) {
        pthread_t t;
        assert_int_equal(pthread_create(&t, &attr, sleep_briefly, NULL), 0);
    }
    assert_int_equal(pthread_attr_destroy(&attr), 0);
    /* detached threads cannot be joined: wait until all have gone */
    for (int i = 0; i < 500 && threads_now() > 1; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(threads_now(), 1);
    assert_int_equal(caches_now(), before);
    /* cycle the stack cache: the exited threads' stacks are unmapped */
    for (int i = 0; i < 4; i++)
        fill_stack_cache();
    assert_int_equal(caches_now(), before);
    assert_int_equal(TM_API(_heapmin)(), 0);
    tu_heap_ok();
}

/* _heapmin unmaps the slot arrays (about 84 KiB each, a mapping of their
 * own) of the caches that exited threads left for reuse: until 2026-12-05
 * the address space they took followed the most threads that had ever run
 * at once (46 MB after 512, found by a tester). */
static pthread_barrier_t all_made;

static void *allocate_and_wait(void *arg)
{
    TM_API(free)(TM_API(malloc)(100)); /* this thread's cache exists */
    pthread_barrier_wait(&all_made);
    return arg;
}

static void test_heapmin_unmaps_exited_threads_slots(void **state)
{
    (void)state;
    enum { N = 32 };
    trimalloc_stats_t st;
    pthread_t t[N];
    assert_int_equal(pthread_barrier_init(&all_made, NULL, N + 1), 0);
    for (int i = 0; i < N; i++)
        tu_thread_create(&t[i], allocate_and_wait, NULL);
    pthread_barrier_wait(&all_made); /* N caches at once */
    for (int i = 0; i < N; i++)
        tu_thread_join(t[i]);
    assert_int_equal(pthread_barrier_destroy(&all_made), 0);
    assert_int_equal(TM_API(trimalloc_stats_get)(&st), 0);
    size_t before = st.metadata;
    assert_int_equal(TM_API(_heapmin)(), 0);
    assert_int_equal(TM_API(trimalloc_stats_get)(&st), 0);
    /* at least 64 KiB per exited thread's array */
    assert_true(st.metadata + (size_t)N * 64 * 1024 <= before);
    /* the caches serve new threads again */
    for (int i = 0; i < 4; i++) {
        tu_thread_create(&t[i], allocate_once, NULL);
        tu_thread_join(t[i]);
    }
    assert_int_equal(TM_API(_heapmin)(), 0);
    tu_heap_ok();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_short_lived_threads),
        cmocka_unit_test(test_threads_without_allocations),
        cmocka_unit_test(test_first_allocation_in_the_last_destructor_round),
        cmocka_unit_test(test_key_destructor_that_calls_pthread_exit),
        cmocka_unit_test(test_detached_threads_that_never_allocate),
        cmocka_unit_test(test_heapmin_unmaps_exited_threads_slots),
    };
    return cmocka_run_group_tests_name("stress_thread_exit (" TU_FLAVOUR ")", tests, NULL, NULL);
}
