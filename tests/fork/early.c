/*
 * early.c -- start-up and fork with handlers registered before trimalloc's
 * (tests/fork/early_lib.c, built four ways; the start-up cases need the
 * drop-in library, where glibc's own allocations are trimalloc's). A hang here is the failure:
 * each case hung until 2026-12-07 (found by an outside tester).
 *   fork_early_atexit        start-up: the first allocation from inside atexit
 *   fork_early_atfork_many   start-up: the first allocation from inside pthread_atfork
 *   fork_early_atfork_alloc  forks whose other handlers allocate, and whose
 *                            handler takes a lock another thread holds
 *                            around fflush(NULL), or is a cancellation point
 *                            reached with a cancellation pending
 *   fork_early_atfork_alloc_prefixed  the handlers that allocate, with the
 *                            prefixed library (the sanitizer builds too)
 */
#include "test_cmocka.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

extern int early_registered, early_prepares, early_parent_ok, early_child_ok;

/* fork; the child checks its blocks (and, with child_handler, that the
 * library's child handler's did) and exits 0 if all is well */
static void fork_once(bool child_handler)
{
    pid_t pid = fork();
    if (pid == 0) {
        char *p = TM_API(malloc)(300);
        int ok = p != NULL && (!child_handler || early_child_ok);
        if (p) {
            memset(p, 5, 300);
            ok &= p[299] == 5;
        }
        TM_API(free)(p);
        _exit(ok ? 0 : 1);
    }
    assert_true(pid > 0);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static atomic_int stop;

static void *churn(void *arg)
{
    (void)arg;
    void *keep[64] = {0};
    for (unsigned i = 0; !atomic_load(&stop); i++) {
        unsigned k = i % 64;
        TM_API(free)(keep[k]);
        keep[k] = TM_API(malloc)(i % 5 == 0 ? 70000 : 16 + i % 900);
    }
    for (int k = 0; k < 64; k++)
        TM_API(free)(keep[k]);
    return NULL;
}

/* n forks while another thread allocates and frees all along */
static void forks_with_churn(int n, bool child_handler)
{
    pthread_t t;
    atomic_store(&stop, 0);
    assert_int_equal(pthread_create(&t, NULL, churn, NULL), 0);
    for (int i = 0; i < n; i++)
        fork_once(child_handler);
    atomic_store(&stop, 1);
    assert_int_equal(pthread_join(t, NULL), 0);
}

#if defined(EARLY_ATEXIT) || defined(EARLY_ATFORK_MANY)
static void test_start_up(void **state)
{
    (void)state;
    /* reaching here is most of it: the start-up used to hang */
#ifdef EARLY_ATEXIT
    assert_int_equal(early_registered, 40);
#else
    assert_int_equal(early_registered, 60);
#endif
    void *p = TM_API(malloc)(1000);
    assert_non_null(p);
    TM_API(free)(p);
    forks_with_churn(10, false);
}
#endif

#ifdef EARLY_ATFORK_ALLOC
static void test_handlers_that_allocate(void **state)
{
    (void)state;
    assert_int_equal(early_registered, 1);
    /* one thread, then with another one allocating all along */
    for (int i = 0; i < 10; i++)
        fork_once(true);
    forks_with_churn(30, true);
    assert_int_equal(early_prepares, 40);
    assert_int_equal(early_parent_ok, 40);
}

/* The library's prepare handler takes its own lock, which another thread
 * holds while it calls fflush(NULL) (glibc's FILE-list lock): fine as long
 * as nothing takes the list lock before the prepare handlers have run, as
 * glibc's fork does not (a version of trimalloc's prepare handler that
 * took it first hung every fork here: a reviewer, 2026-12-07). */
extern pthread_mutex_t early_mu;

static void *flusher(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        pthread_mutex_lock(&early_mu);
        fflush(NULL);
        pthread_mutex_unlock(&early_mu);
    }
    return NULL;
}

static void test_fork_while_handler_lock_holder_flushes(void **state)
{
    (void)state;
    int before = early_prepares;
    pthread_t f;
    atomic_store(&stop, 0);
    assert_int_equal(pthread_create(&f, NULL, flusher, NULL), 0);
    for (int i = 0; i < 50; i++)
        fork_once(true);
    atomic_store(&stop, 1);
    assert_int_equal(pthread_join(f, NULL), 0);
    assert_int_equal(early_prepares, before + 50);
}

/* A thread with a cancellation pending (deferred) forks: the library's
 * prepare handler, which runs after trimalloc's, is a cancellation point
 * (early_lib.c). Until 2026-12-07 the thread was cancelled there, out of
 * fork() with every allocator lock held, and the next fork or refill here
 * hung (an outside tester). Now the fork completes, every handler runs,
 * and the cancellation acts at the thread's next cancellation point. */
static pid_t cancelled_fork_pid;
static int cancelled_after_fork;

static void *fork_cancelled_main(void *arg)
{
    (void)arg;
    pthread_cancel(pthread_self()); /* pending until a cancellation point */
    pid_t pid = fork();
    if (pid == 0)
        _exit(early_child_ok ? 0 : 1);
    cancelled_fork_pid = pid;
    cancelled_after_fork = 1;
    pthread_testcancel();
    return NULL; /* not reached */
}

static void test_fork_with_a_cancellation_pending(void **state)
{
    (void)state;
    int prepares = early_prepares, parents = early_parent_ok;
    pthread_t t;
    void *ret = NULL;
    assert_int_equal(pthread_create(&t, NULL, fork_cancelled_main, NULL), 0);
    assert_int_equal(pthread_join(t, &ret), 0);
    assert_true(ret == PTHREAD_CANCELED);
    assert_int_equal(cancelled_after_fork, 1); /* cancelled after fork(), not inside */
    assert_true(cancelled_fork_pid > 0);
    int status = 0;
    assert_int_equal(waitpid(cancelled_fork_pid, &status, 0), cancelled_fork_pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(early_prepares, prepares + 1);
    assert_int_equal(early_parent_ok, parents + 1);
    forks_with_churn(5, true); /* every lock was given back */
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
#if defined(EARLY_ATEXIT) || defined(EARLY_ATFORK_MANY)
        cmocka_unit_test(test_start_up),
#else
        cmocka_unit_test(test_handlers_that_allocate),
        cmocka_unit_test(test_fork_while_handler_lock_holder_flushes),
        cmocka_unit_test(test_fork_with_a_cancellation_pending),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
