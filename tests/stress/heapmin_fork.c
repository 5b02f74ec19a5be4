/*
 * heapmin_fork.c -- _heapmin() and fork(): the fork handlers take the trim
 * lock (so a fork waits for a trim in progress and a trim never sees half a
 * fork), and in the child the caches of the threads that did not survive
 * the fork have been emptied into the arenas. So, in a child forked while
 * other threads were allocating and another thread was inside _heapmin:
 *   - _heapmin() returns 0, keeps errno, and does not hang on a lock some
 *     parent thread held at the fork;
 *   - no thread cache holds anything afterwards and the child is the only
 *     thread with a cache;
 *   - the blocks the forking thread held are intact, and a spike the child
 *     allocates and frees is given back (RSS, not under sanitizers);
 *   - _heapchk() == _HEAPOK.
 * The child reports by exit status (TU_CHECK aborts with a message).
 */
#include <stdatomic.h>
#include <sys/wait.h>

#include "test_cmocka.h"

#if TU_TSAN
/* As in fork.c: let a child of a multi-threaded parent run on. */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
    return "die_after_fork=0";
}
#endif

enum { HAMMERS = 3, HELD = 64, MAIN_LIVE = 128 };

static atomic_int stop;
static atomic_long parent_trims;

static void *hammer_main(void *arg)
{
    int id = (int)(intptr_t)arg;
    tu_rng_t rng;
    tu_rng_seed(&rng, 0xf04c + (uint64_t)id);
    tu_block_t held[HELD];
    memset(held, 0, sizeof held);
    uint64_t seq = 0;
    size_t huge_max = TU_TSAN ? 512 * TU_KIB : 3 * TU_MIB;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        tu_block_t *b = &held[tu_rand(&rng) % HELD];
        if (b->p)
            tu_block_free(b);
        else
            *b = tu_block_new(tu_rand_size(&rng, huge_max, 3), (uint64_t)id, ++seq);
    }
    for (int i = 0; i < HELD; i++)
        tu_block_free(&held[i]);
    return NULL;
}

static void *trimmer_main(void *arg)
{
    (void)arg;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        tu_heapmin_ok();
        atomic_fetch_add(&parent_trims, 1);
        /* back-to-back trims would starve fork() of the trim lock (the
         * mutex is not fair); a real program trims now and then */
        usleep(200);
    }
    return NULL;
}

static tu_block_t main_live[MAIN_LIVE];

static void child_body(int round)
{
    tu_heapmin_ok(); /* must not hang on a lock a vanished thread held */
    tu_heap_ok();
    trimalloc_stats_t st;
    TU_CHECK(TM_API(trimalloc_stats_get)(&st) == 0, "trimalloc_stats_get");
    TU_CHECK(st.tcache_bytes == 0, "child: %zu bytes in thread caches after _heapmin",
             st.tcache_bytes);
    TU_CHECK(st.nthreads <= 1, "child: %u threads with a cache", st.nthreads);
    for (int i = 0; i < MAIN_LIVE; i++)
        tu_block_check(&main_live[i]);

    /* a spike of the child's own, given back */
    enum { N = 512 };
    static tu_block_t spike[N];
    tu_rng_t rng;
    tu_rng_seed(&rng, 0xc41d + (uint64_t)round);
    size_t rss0 = tu_rss_bytes(), bytes = 0;
    for (int i = 0; i < N; i++) {
        spike[i] = tu_block_new(tu_rand_size(&rng, 4 * TU_MIB, 40), 99, (uint64_t)i);
        bytes += spike[i].size;
    }
    size_t rss1 = tu_rss_bytes();
    for (int i = 0; i < N; i++)
        tu_block_free(&spike[i]);
    tu_heapmin_ok();
    tu_heap_ok();
    size_t rss2 = tu_rss_bytes();
    if (!TU_ASAN && !TU_TSAN && rss0 && bytes > 8 * TU_MIB)
        TU_CHECK(rss1 > rss2 && rss1 - rss2 >= bytes / 2,
                 "child: spike of %zu KiB, RSS %zu -> %zu -> %zu KiB", bytes >> 10, rss0 >> 10,
                 rss1 >> 10, rss2 >> 10);
    for (int i = 0; i < MAIN_LIVE; i++)
        tu_block_check(&main_live[i]);
    TU_CHECK(TM_API(trimalloc_stats_get)(&st) == 0, "trimalloc_stats_get");
    TU_CHECK(st.tcache_bytes == 0, "child: %zu bytes cached after the second _heapmin",
             st.tcache_bytes);
}

static void test_heapmin_in_fork_child(void **state)
{
    (void)state;
    tu_rng_t rng;
    tu_rng_seed(&rng, 0x3a1);
    for (int i = 0; i < MAIN_LIVE; i++)
        main_live[i] = tu_block_new(tu_rand_size(&rng, 2 * TU_MIB, 10), 0, (uint64_t)i);

    atomic_store(&stop, 0);
    pthread_t h[HAMMERS], tr;
    for (int i = 0; i < HAMMERS; i++)
        tu_thread_create(&h[i], hammer_main, (void *)(intptr_t)i);
    tu_thread_create(&tr, trimmer_main, NULL);

    long forks = tu_scaled(40, 8);
    for (long f = 0; f < forks; f++) {
        /* let the hammers and the trimmer get going between forks */
        for (int k = 0; k < 200; k++) {
            tu_block_t *b = &main_live[tu_rand(&rng) % MAIN_LIVE];
            tu_block_free(b);
            *b = tu_block_new(tu_rand_size(&rng, 2 * TU_MIB, 10), 0, (uint64_t)(f * 1000 + k));
        }
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            child_body((int)f);
            _exit(0);
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            fail_msg("fork %ld: child %s %d", f, WIFEXITED(status) ? "exited" : "killed by signal",
                     WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        /* the parent goes on with a trim of its own */
        tu_heapmin_ok();
        for (int i = 0; i < MAIN_LIVE; i++)
            tu_block_check(&main_live[i]);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < HAMMERS; i++)
        tu_thread_join(h[i]);
    tu_thread_join(tr);
    print_message("%ld forks, %ld trims in the parent's trimmer thread\n", forks,
                  atomic_load(&parent_trims));
    for (int i = 0; i < MAIN_LIVE; i++)
        tu_block_free(&main_live[i]);
    tu_heapmin_ok();
    tu_heap_ok();
}

/* A child forked from a single-threaded moment, after threads that had
 * full caches exited: their blocks are in the arenas, not lost. */
static void *fill_and_exit(void *arg)
{
    tu_rng_t rng;
    tu_rng_seed(&rng, (uint64_t)(uintptr_t)arg);
    tu_block_t b[256];
    for (int i = 0; i < 256; i++)
        b[i] = tu_block_new(tu_rand_size(&rng, TU_MIB, 5), 7, (uint64_t)i);
    for (int i = 0; i < 256; i++)
        tu_block_free(&b[i]);
    return NULL;
}

static void test_heapmin_in_child_after_exits(void **state)
{
    (void)state;
    for (int i = 0; i < 4; i++) {
        pthread_t t;
        tu_thread_create(&t, fill_and_exit, (void *)(uintptr_t)(i + 1));
        tu_thread_join(t);
    }
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        tu_heapmin_ok();
        tu_heap_ok();
        trimalloc_stats_t st;
        TU_CHECK(TM_API(trimalloc_stats_get)(&st) == 0, "stats");
        TU_CHECK(st.tcache_bytes == 0, "%zu bytes cached", st.tcache_bytes);
        /* and the child can go on allocating and trimming, with a thread
         * of its own -- not under TSan, which sees the allocator's locks,
         * re-initialised by pthread_mutex_init in the child while the
         * parent's copy was locked, as still held ("double lock") */
        if (!TU_TSAN) {
            pthread_t t;
            tu_thread_create(&t, fill_and_exit, (void *)(uintptr_t)99);
            tu_thread_join(t);
        } else {
            fill_and_exit((void *)(uintptr_t)99);
        }
        tu_heapmin_ok();
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heapmin_in_fork_child),
        cmocka_unit_test(test_heapmin_in_child_after_exits),
    };
    return cmocka_run_group_tests_name("stress_heapmin_fork (" TU_FLAVOUR ")", tests, NULL, NULL);
}
