/*
 * cancel.c (unit) -- a pending thread cancel is not acted on inside the
 * allocator. fork(), _heapchk(), _heapwalk() and _heapset() wait, with an
 * arena's lock, for the sections that drop it (a growth purge's madvise, a
 * chunk's mmap: arena_lock_settled), and that wait is a condition
 * variable's, a cancellation point. Until 2026-12-06 a thread with a
 * deferred cancel pending was cancelled there and unwound holding the
 * trim lock and the arena's lock (fork: every lock its prepare handler had
 * taken), and every later _heapmin or slow-path call of the process hung
 * (found by an outside tester). None of these calls is a cancellation
 * point in POSIX; the cancel must be acted on at the thread's next one.
 *
 * Each test holds arena 0 in such a section itself (arena_dropped_enter),
 * starts a thread that makes the call, cancels it, then ends the section.
 */
#include "test_cmocka.h"
#include "internal.h"

#include <sys/wait.h>

static pthread_barrier_t started;
static volatile int returned; /* the call came back (and how) */

static void *heapchk_thread(void *arg) {
    (void)arg;
    pthread_barrier_wait(&started);
    returned = TM_API(_heapchk)() == _HEAPOK ? 1 : 2;
    pthread_testcancel(); /* where the cancel belongs */
    return NULL;
}

static void *fork_thread(void *arg) {
    (void)arg;
    pthread_barrier_wait(&started);
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    /* waitpid is a cancellation point: not this test's */
    int cancel, status = 0;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    returned = pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) ? 1 : 2;
    pthread_setcancelstate(cancel, NULL);
    pthread_testcancel();
    return NULL;
}

static void cancel_inside(void *(*fn)(void *)) {
    /* AddressSanitizer's thread teardown misreads the stack a cancelled
     * thread unwound (a stack-buffer-underflow in sigaltstack, in its own
     * code, gcc 12): nothing of the allocator's to see there */
    if (TU_ASAN) skip();
    void *keep = TM_API(malloc)(100); /* the arenas exist */
    assert_non_null(keep);
    tm_arena_t *a = tm_arenas[0];
    assert_non_null(a);
    arena_lock(a);
    arena_dropped_enter(a); /* as a section that dropped the lock */
    arena_unlock(a);

    returned = 0;
    pthread_barrier_init(&started, NULL, 2);
    pthread_t t;
    tu_thread_create(&t, fn, NULL);
    pthread_barrier_wait(&started);
    struct timespec pause = {0, 50 * 1000 * 1000};
    nanosleep(&pause, NULL); /* the thread is in the call, or about to be */
    assert_int_equal(pthread_cancel(t), 0);
    /* On the old code the thread is cancelled in the wait and exits,
     * keeping the arena's lock: found here, before this thread takes it.
     * (A slow machine may not show it within the 200 ms; the fixed code
     * never exits before the section ends, however long this waits.) */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 200 * 1000 * 1000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    void *res = NULL;
    if (pthread_timedjoin_np(t, &res, &until) == 0)
        fail_msg("the thread was cancelled inside the call (returned %d)", returned);

    arena_lock(a);
    arena_dropped_leave(a);
    arena_unlock(a);
    assert_int_equal(pthread_join(t, &res), 0);
    assert_int_equal(returned, 1);         /* the call finished */
    assert_ptr_equal(res, PTHREAD_CANCELED); /* and the cancel came after */
    pthread_barrier_destroy(&started);

    /* nothing was left locked */
    assert_int_equal(TM_API(_heapmin)(), 0);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    TM_API(free)(keep);
}

static void test_heapchk_is_no_cancellation_point(void **state) {
    (void)state;
    cancel_inside(heapchk_thread);
}

static void test_fork_is_no_cancellation_point(void **state) {
    (void)state;
    cancel_inside(fork_thread);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heapchk_is_no_cancellation_point),
        cmocka_unit_test(test_fork_is_no_cancellation_point),
    };
    return cmocka_run_group_tests_name("unit_cancel", tests, NULL, NULL);
}
