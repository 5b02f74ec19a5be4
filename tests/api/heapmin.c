/*
 * heapmin.c -- the basic contract of _heapmin(): it returns 0 on Linux and
 * leaves errno unchanged, whatever state the heap is in (fresh, busy, just
 * emptied, with another thread holding cached blocks), and the blocks the
 * program still holds keep their contents, and no thread cache keeps a
 * block, however many threads there are. The deep tests (how much memory
 * comes back, concurrency with running threads) live elsewhere.
 */
#include "test_cmocka.h"

#include <sys/resource.h>

#define ERRNO_SENTINEL 31337

/* _heapmin() with errno preset; asserts the result and the errno. */
static void heapmin_checked(void)
{
    errno = ERRNO_SENTINEL;
    int rc = TM_API(_heapmin)();
    int e = errno;
    assert_int_equal(rc, 0);
    if (e != ERRNO_SENTINEL)
        fail_msg("_heapmin changed errno from %d to %d (%s)", ERRNO_SENTINEL, e, strerror(e));
}

static void test_heapmin_first_call(void **state)
{
    (void)state;
    heapmin_checked(); /* may be the first call into the allocator at all */
    heapmin_checked();
}

/* Live blocks of every kind survive, and freed ones are reusable after. */
static void test_heapmin_live_blocks(void **state)
{
    (void)state;
    enum { N = 600 };
    static tu_block_t b[N];
    tu_rng_t rng;
    tu_rng_seed(&rng, 77);
    size_t huge = TU_TSAN || TU_ASAN ? 4 * TU_MIB : 16 * TU_MIB;
    long rounds = tu_scaled(5, 1);
    for (long round = 0; round < rounds; round++) {
        for (int i = 0; i < N; i++)
            b[i] = tu_block_new(tu_rand_size(&rng, huge, 10), 0, (uint64_t)i);
        /* free every other block: leaves holes in slabs and runs */
        for (int i = 0; i < N; i += 2)
            tu_block_free(&b[i]);
        heapmin_checked();
        for (int i = 1; i < N; i += 2)
            tu_block_check(&b[i]);
        /* refill the holes, then check everything again */
        for (int i = 0; i < N; i += 2)
            b[i] = tu_block_new(tu_rand_size(&rng, huge, 10), 0, (uint64_t)(N + i));
        heapmin_checked();
        for (int i = 0; i < N; i++)
            tu_block_free(&b[i]);
        heapmin_checked();
    }
}

/* A thread that filled its cache and is now blocked: _heapmin runs while
 * it is parked, its live blocks survive, and it keeps allocating after. */
struct parked {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int phase; /* 0: working, 1: parked, 2: released */
};

static void *parked_thread(void *arg)
{
    struct parked *pk = arg;
    enum { N = 300 };
    tu_block_t keep[N];
    tu_rng_t rng;
    tu_rng_seed(&rng, 88);
    for (int i = 0; i < N; i++) {
        /* churn so the thread cache holds freed blocks */
        void *tmp = TM_API(malloc)(tu_rand_size(&rng, TU_MIB, 10));
        TU_CHECK(tmp != NULL, "malloc failed");
        keep[i] = tu_block_new(tu_rand_size(&rng, TU_MIB, 10), 1, (uint64_t)i);
        TM_API(free)(tmp);
    }
    tu_lock(&pk->lock);
    pk->phase = 1;
    pthread_cond_broadcast(&pk->cond);
    while (pk->phase != 2)
        pthread_cond_wait(&pk->cond, &pk->lock);
    tu_unlock(&pk->lock);
    for (int i = 0; i < N; i++)
        tu_block_check(&keep[i]);
    for (int i = 0; i < N; i++) {
        tu_block_free(&keep[i]);
        keep[i] = tu_block_new(tu_rand_size(&rng, TU_MIB, 10), 1, (uint64_t)(N + i));
    }
    for (int i = 0; i < N; i++)
        tu_block_free(&keep[i]);
    return NULL;
}

static void test_heapmin_with_parked_thread(void **state)
{
    (void)state;
    struct parked pk = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    pthread_t t;
    tu_thread_create(&t, parked_thread, &pk);
    tu_lock(&pk.lock);
    while (pk.phase != 1)
        pthread_cond_wait(&pk.cond, &pk.lock);
    tu_unlock(&pk.lock);

    heapmin_checked();
    heapmin_checked();

    tu_lock(&pk.lock);
    pk.phase = 2;
    pthread_cond_broadcast(&pk.cond);
    tu_unlock(&pk.lock);
    tu_thread_join(t);
    heapmin_checked();
}

/* More idle threads than one stop group holds (world.c: 64 caches), each
 * with a few blocks cached: every cache is drained, whichever group it
 * falls in, and each thread's live block survives. */
enum { MANY = 150 };
static pthread_barrier_t many_parked, many_release;

static void *many_thread(void *arg)
{
    uintptr_t id = (uintptr_t)arg;
    tu_block_t keep = tu_block_new(48 + id % 200, 1, id);
    void *tmp[6];
    for (int i = 0; i < 6; i++)
        tmp[i] = TM_API(malloc)(16 + 16 * (size_t)i);
    for (int i = 0; i < 6; i++)
        TM_API(free)(tmp[i]); /* into this thread's cache */
    pthread_barrier_wait(&many_parked);
    pthread_barrier_wait(&many_release);
    tu_block_check(&keep);
    tu_block_free(&keep);
    return NULL;
}

static void test_heapmin_many_idle_threads(void **state)
{
    (void)state;
    pthread_t t[MANY];
    pthread_barrier_init(&many_parked, NULL, MANY + 1);
    pthread_barrier_init(&many_release, NULL, MANY + 1);
    for (uintptr_t i = 0; i < MANY; i++)
        tu_thread_create(&t[i], many_thread, (void *)i);
    pthread_barrier_wait(&many_parked);
    trimalloc_stats_t st;
    assert_int_equal(TM_API(trimalloc_stats_get)(&st), 0);
    if (st.tcache_bytes < (size_t)MANY * 6 * 16)
        fail_msg("only %zu bytes cached by %d threads before the trim", st.tcache_bytes, MANY);
    heapmin_checked();
    assert_int_equal(TM_API(trimalloc_stats_get)(&st), 0);
    if (st.tcache_bytes != 0)
        fail_msg("%zu bytes still in thread caches after _heapmin", st.tcache_bytes);
    pthread_barrier_wait(&many_release);
    for (int i = 0; i < MANY; i++)
        tu_thread_join(t[i]);
    pthread_barrier_destroy(&many_parked);
    pthread_barrier_destroy(&many_release);
}

/* A call with nothing cached touches no page of its own: the trimmer's
 * buffer for the caches' blocks is faulted in only as far as the fullest
 * cache of a stop group needs (world.c). Until 2026-12-07 every call
 * faulted in all of it, 20 pages (an outside tester, by strace; 1000
 * faults for the 50 calls here). Not under the sanitizers, whose runtimes
 * fault pages of their own. */
static void test_idle_heapmin_faults_nothing(void **state)
{
    (void)state;
    if (TU_ASAN || TU_TSAN)
        skip();
    heapmin_checked(); /* every cache empty from here on */
    heapmin_checked();
    struct rusage u0, u1;
    assert_int_equal(getrusage(RUSAGE_SELF, &u0), 0);
    for (int i = 0; i < 50; i++)
        TM_API(_heapmin)();
    assert_int_equal(getrusage(RUSAGE_SELF, &u1), 0);
    long faults = u1.ru_minflt - u0.ru_minflt;
    if (faults > 25)
        fail_msg("50 calls of _heapmin with nothing cached made %ld page faults", faults);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heapmin_first_call),
        cmocka_unit_test(test_heapmin_live_blocks),
        cmocka_unit_test(test_idle_heapmin_faults_nothing),
        cmocka_unit_test(test_heapmin_with_parked_thread),
        cmocka_unit_test(test_heapmin_many_idle_threads),
    };
    return cmocka_run_group_tests_name("api_heapmin (" TU_FLAVOUR ")", tests, NULL, NULL);
}
