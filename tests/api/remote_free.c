/*
 * remote_free.c -- which blocks and which arena a thread gets when blocks
 * and arenas move between threads:
 *   - a thread that frees an object another thread allocated, then
 *     allocates one of the same size, does not get that object back (nor
 *     anything in a cache line holding the other thread's objects): it
 *     would go on writing the other thread's cache line (passive false
 *     sharing, as in Hoard's cache-scratch);
 *   - a thread that replaces one that exited takes over its arena, so it
 *     reuses the memory the first one left there;
 *   - the process's initial thread is not counted when threads are bound to
 *     arenas: the first thread it starts shares arena 0 with it (a worker
 *     that takes over the data the main thread built uses the same slabs),
 *     the next one gets an arena of its own; in a fork child the thread
 *     that forked is the initial thread, and the first thread it starts
 *     shares its arena.
 * The first two start an idle thread first (tu_arena_holder_start), so that
 * the threads they look at are not the one that shares arena 0.
 */
#include "test_cmocka.h"

#include <sys/wait.h>
#include <unistd.h>

#define LINE 64

static unsigned narenas(void)
{
    trimalloc_stats_t st;
    assert_int_equal(TM_API(trimalloc_stats_get)(&st), 0);
    return st.narenas;
}

enum { NOBJ = 8 };
static void *objs[NOBJ];
static void *got;

static void *scratch_thread(void *arg)
{
    (void)arg;
    /* Empty every cache, this thread's too, so the free below lands in an
     * empty bin, whatever the thread start-up allocated. */
    assert_int_equal(TM_API(_heapmin)(), 0);
    TM_API(free)(objs[1]);
    got = TM_API(malloc)(16);
    assert_non_null(got);
    memset(got, 0x5a, 16);
    TM_API(free)(got);
    return NULL;
}

static void test_remote_object_not_handed_back(void **state)
{
    (void)state;
    if (narenas() < 2)
        skip(); /* one arena: no block is remote */
    tu_arena_holder_start();
    for (int i = 0; i < NOBJ; i++) {
        objs[i] = TM_API(malloc)(16);
        assert_non_null(objs[i]);
        memset(objs[i], i, 16);
    }
    pthread_t t;
    tu_thread_create(&t, scratch_thread, NULL);
    tu_thread_join(t);
    tu_arena_holder_stop();
    assert_true(got != objs[1]);
    for (int i = 0; i < NOBJ; i++)
        if (i != 1 && ((uintptr_t)got & ~(uintptr_t)(LINE - 1)) ==
                          ((uintptr_t)objs[i] & ~(uintptr_t)(LINE - 1)))
            fail_msg("the thread got %p, in the cache line of another thread's object %p", got,
                     objs[i]);
    /* the objects the main thread still holds are intact, the heap too */
    for (int i = 0; i < NOBJ; i++)
        if (i != 1)
            assert_int_equal(tu_find_not_byte(objs[i], 16, (unsigned char)i), (size_t)-1);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    for (int i = 0; i < NOBJ; i++)
        if (i != 1)
            TM_API(free)(objs[i]);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

static void *first_block(void *arg)
{
    void **out = arg;
    *out = TM_API(malloc)(100);
    assert_non_null(*out);
    return NULL;
}

static void test_replacement_thread_takes_arena(void **state)
{
    (void)state;
    if (narenas() < 2)
        skip();
    tu_arena_holder_start();
    void *a = NULL, *b = NULL;
    pthread_t t;
    tu_thread_create(&t, first_block, &a);
    tu_thread_join(t);
    tu_thread_create(&t, first_block, &b);
    tu_thread_join(t);
    tu_arena_holder_stop();
    uintptr_t chunk = (uintptr_t)4 << 20;
    if (((uintptr_t)a & ~(chunk - 1)) != ((uintptr_t)b & ~(chunk - 1)))
        fail_msg("a replacement thread allocated %p, not in the chunk of its predecessor's %p", b,
                 a);
    TM_API(free)(a);
    TM_API(free)(b);
}

/* Threads bound to each arena, from the statistics. */
static unsigned arena_threads(unsigned i)
{
    trimalloc_arena_stats_t s;
    assert_int_equal(TM_API(trimalloc_stats_arena)(i, &s), 0);
    return s.nthreads;
}

static pthread_barrier_t bound, release;

static void *bound_thread(void *arg)
{
    (void)arg;
    void *p = TM_API(malloc)(16); /* binds this thread to an arena */
    TU_CHECK(p != NULL, "malloc(16) failed");
    TM_API(free)(p);
    pthread_barrier_wait(&bound);
    pthread_barrier_wait(&release);
    return NULL;
}

static void test_initial_thread_shares_arena_zero(void **state)
{
    (void)state;
    if (narenas() < 2)
        skip();
    void *m = TM_API(malloc)(16); /* this (the initial) thread is bound */
    assert_non_null(m);
    unsigned before0 = arena_threads(0), before1 = arena_threads(1);
    assert_int_equal(before0, 1); /* the other tests' threads have exited */
    assert_int_equal(before1, 0);
    assert_int_equal(pthread_barrier_init(&bound, NULL, 2), 0);
    assert_int_equal(pthread_barrier_init(&release, NULL, 3), 0); /* both threads and this one */
    pthread_t t1, t2;
    tu_thread_create(&t1, bound_thread, NULL);
    pthread_barrier_wait(&bound);
    assert_int_equal(arena_threads(0), 2); /* the first thread: arena 0 */
    assert_int_equal(arena_threads(1), 0);
    tu_thread_create(&t2, bound_thread, NULL);
    pthread_barrier_wait(&bound);
    assert_int_equal(arena_threads(0), 2);
    assert_int_equal(arena_threads(1), 1); /* the second: one of its own */
    pthread_barrier_wait(&release);
    tu_thread_join(t1);
    tu_thread_join(t2);
    assert_int_equal(arena_threads(0), 1);
    assert_int_equal(arena_threads(1), 0);
    pthread_barrier_destroy(&bound);
    pthread_barrier_destroy(&release);
    TM_API(free)(m);
}

/* In a child forked by a thread other than the main one: that thread is
 * the child's initial thread, so the first thread it starts shares its
 * arena. Returns the child's exit status (0: as expected). */
static int child_checks(void)
{
    void *m = TM_API(malloc)(16);
    if (!m)
        return 2;
    unsigned mine = UINT32_MAX, n = narenas();
    for (unsigned i = 0; i < n; i++)
        if (arena_threads(i) == 1) /* the only thread with a cache */
            mine = i;
    if (mine == UINT32_MAX)
        return 4;
    assert_int_equal(pthread_barrier_init(&bound, NULL, 2), 0);
    assert_int_equal(pthread_barrier_init(&release, NULL, 2), 0);
    pthread_t t;
    if (pthread_create(&t, NULL, bound_thread, NULL) != 0)
        return 5;
    pthread_barrier_wait(&bound);
    int rc = arena_threads(mine) == 2 ? 0 : 6;
    pthread_barrier_wait(&release);
    pthread_join(t, NULL);
    TM_API(free)(m);
    return rc;
}

static void *forking_thread(void *arg)
{
    int *status = arg;
    void *p = TM_API(malloc)(16); /* bound in the parent (counted there) */
    TU_CHECK(p != NULL, "malloc(16)");
    pid_t pid = fork();
    TU_CHECK(pid >= 0, "fork");
    if (pid == 0)
        _exit(child_checks());
    TU_CHECK(waitpid(pid, status, 0) == pid, "waitpid");
    TM_API(free)(p);
    return NULL;
}

static void test_fork_child_initial_thread(void **state)
{
    (void)state;
    /* ThreadSanitizer does not let a child of a multi-threaded parent start
     * threads (and sees the locks the child re-initialises as still held:
     * tests/stress/heapmin_fork.c) */
    if (narenas() < 2 || TU_TSAN)
        skip();
    tu_arena_holder_start(); /* the forking thread is not the one sharing arena 0 */
    int status = -1;
    pthread_t t;
    tu_thread_create(&t, forking_thread, &status);
    tu_thread_join(t);
    tu_arena_holder_stop();
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_remote_object_not_handed_back),
        cmocka_unit_test(test_replacement_thread_takes_arena),
        cmocka_unit_test(test_initial_thread_shares_arena_zero),
        cmocka_unit_test(test_fork_child_initial_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
