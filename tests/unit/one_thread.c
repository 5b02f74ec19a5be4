/*
 * one_thread.c (unit) -- arena locks while the process has one thread
 * (internal.h, arena_lock): with glibc's __libc_single_threaded set, an
 * arena is held without its mutex ("bare"); once a second thread exists,
 * with the mutex. A fork from a one-thread process leaves the child's
 * arenas unheld, so a child that then starts threads takes their mutexes
 * and releases them.
 *
 * The tests run in this order on purpose: the first two need a process
 * that has never started a thread (glibc does not set the variable again
 * once a thread was started), the last one starts threads.
 */
#include <sys/wait.h>

#include "test_cmocka.h"
#include "internal.h"

static tm_arena_t *own_arena(void) {
    tm_init();
    tm_arena_t *a = arena_get(TM_MAX_ARENAS - 5); /* no thread is bound to it */
    assert_non_null(a);
    return a;
}

static void test_one_thread_holds_an_arena_without_its_mutex(void **state) {
    (void)state;
    if (!&__libc_single_threaded || !__libc_single_threaded) skip();
    tm_arena_t *a = own_arena();
    assert_true(tm_one_thread());
    arena_lock(a);
    assert_true(a->bare);
    /* the mutex itself is free */
    assert_int_equal(pthread_mutex_trylock(&a->lock), 0);
    pthread_mutex_unlock(&a->lock);
    arena_unlock(a);
    assert_false(a->bare);
    /* large blocks come and go, the heap stays consistent */
    for (int i = 0; i < 200; i++) {
        size_t n = (size_t)(1 + i % 64) << 13;
        unsigned char *p = TM_API(malloc)(n);
        assert_non_null(p);
        tu_fill(p, n, (uint64_t)i);
        assert_int_equal(tu_find_bad(p, n, (uint64_t)i), (size_t)-1);
        TM_API(free)(p);
    }
    int rc = TM_API(_heapchk)();
    assert_true(rc == _HEAPOK || rc == _HEAPEMPTY);
}

/* ---- a fork from one thread, whose child starts threads ---- */

enum { CHILD_THREADS = 2, CHILD_ROUNDS = 3000 };

static void *child_worker(void *arg) {
    uint64_t seed = (uintptr_t)arg;
    void *keep[8] = {0};
    size_t keep_n[8] = {0};
    for (int i = 0; i < CHILD_ROUNDS; i++) {
        int k = i & 7;
        if (keep[k]) {
            if (tu_find_bad(keep[k], keep_n[k], seed + (uint64_t)k) != (size_t)-1) return (void *)1;
            TM_API(free)(keep[k]);
        }
        keep_n[k] = (size_t)(1 + (seed * 31 + (uint64_t)i) % 48) << 12;
        keep[k] = TM_API(malloc)(keep_n[k]);
        if (!keep[k]) return (void *)1;
        tu_fill(keep[k], keep_n[k], seed + (uint64_t)k);
    }
    for (int k = 0; k < 8; k++) TM_API(free)(keep[k]);
    return NULL;
}

static void test_a_fork_from_one_thread_leaves_the_arenas_unheld(void **state) {
    (void)state;
    if (!&__libc_single_threaded || !__libc_single_threaded) skip();
    tm_arena_t *a = own_arena();
    void *p = TM_API(malloc)(64 << 10); /* this thread's arena is in use */
    assert_non_null(p);
    pid_t pid = fork(); /* the prepare handler takes every arena bare */
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(60); /* a child left with a held mutex would wait for good */
        if (a->bare) _exit(2);
        TM_API(free)(p);
        /* not under the sanitizers: their runtimes start no threads in a
         * fork child reliably (tests/stress/fork.c) */
        if (!TU_TSAN && !TU_ASAN) {
            pthread_t t[CHILD_THREADS];
            for (uintptr_t i = 0; i < CHILD_THREADS; i++)
                if (pthread_create(&t[i], NULL, child_worker, (void *)(i + 1)) != 0) _exit(3);
            if (tm_one_thread()) _exit(4);
            void *r = child_worker((void *)7);
            for (int i = 0; i < CHILD_THREADS; i++) {
                void *tr;
                pthread_join(t[i], &tr);
                if (tr) r = tr;
            }
            if (r) _exit(5);
        }
        int rc = TM_API(_heapchk)();
        _exit(rc == _HEAPOK || rc == _HEAPEMPTY ? 0 : 6);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_false(a->bare); /* the parent handler let go of them too */
    TM_API(free)(p);
}

/* ---- with a second thread, the mutex ---- */

static pthread_barrier_t barrier;

static void *wait_twice(void *arg) {
    tm_arena_t *a = arg;
    pthread_barrier_wait(&barrier); /* the main thread holds a */
    int busy = pthread_mutex_trylock(&a->lock);
    if (busy == 0) pthread_mutex_unlock(&a->lock);
    pthread_barrier_wait(&barrier);
    return (void *)(intptr_t)busy;
}

static void test_a_second_thread_makes_the_lock_a_mutex(void **state) {
    (void)state;
    tm_arena_t *a = own_arena();
    assert_int_equal(pthread_barrier_init(&barrier, NULL, 2), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, wait_twice, a), 0);
    assert_false(tm_one_thread());
    arena_lock(a);
    assert_false(a->bare);
    pthread_barrier_wait(&barrier);
    pthread_barrier_wait(&barrier); /* the other thread found it taken */
    arena_unlock(a);
    void *busy;
    assert_int_equal(pthread_join(t, &busy), 0);
    assert_int_equal((int)(intptr_t)busy, EBUSY);
    pthread_barrier_destroy(&barrier);
    /* and it is free again */
    assert_int_equal(pthread_mutex_trylock(&a->lock), 0);
    pthread_mutex_unlock(&a->lock);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_thread_holds_an_arena_without_its_mutex),
        cmocka_unit_test(test_a_fork_from_one_thread_leaves_the_arenas_unheld),
        cmocka_unit_test(test_a_second_thread_makes_the_lock_a_mutex),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
