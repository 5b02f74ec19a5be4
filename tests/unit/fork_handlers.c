/*
 * fork_handlers.c (unit) -- the fork handlers (init.c): registered at
 * start-up, before any the program registers, so a program's own
 * prepare, parent and child handlers may allocate, also when the program
 * registered them before it started its first thread (with the handlers
 * registered at the second thread, as until 2026-12-05, such a fork hung);
 * a thread that never allocated can fork while another thread is inside
 * the allocator's locked sections, and the child can still take every
 * lock.
 *
 * The tests run in order: the first while this process has one thread.
 * In the prefixed library used here, pthread_create's own allocations go
 * to glibc's malloc, so the only allocator calls are the test's.
 */
#include "test_cmocka.h"
#include "internal.h"

#include <stdatomic.h>
#include <sys/wait.h>

#define LARGE ((size_t)64 << 10)        /* a large block: taken under its arena's lock */
#define HUGE_SIZE ((size_t)8 << 20)     /* a huge block */

/* Small, large and huge blocks, filled and checked; true if all went well. */
static bool workout(unsigned char fill) {
    void *p[3] = {TM_API(malloc)(48), TM_API(malloc)(LARGE), TM_API(malloc)(HUGE_SIZE)};
    size_t n[3] = {48, LARGE, HUGE_SIZE};
    bool ok = true;
    for (int i = 0; i < 3; i++) {
        if (!p[i]) return false;
        memset(p[i], fill, n[i]);
    }
    for (int i = 0; i < 3; i++) {
        for (size_t k = 0; k < n[i]; k += 509) ok &= ((unsigned char *)p[i])[k] == fill;
        TM_API(free)(p[i]);
    }
    return ok;
}

/* Fork; the child runs workout() and _heapmin() and exits 0 if they did
 * what they should (1, 2) and the handlers are registered if expect_ready
 * is 2 (10 + the state otherwise). */
static int fork_and_check(int expect_ready) {
    pid_t pid = fork();
    if (pid == 0) {
        if (!workout(0x3c)) _exit(1);
        if (TM_API(_heapmin)() != 0) _exit(2);
        int s = __atomic_load_n(&tm_fork_ready, __ATOMIC_RELAXED);
        _exit(expect_ready == 2 && s != 2 ? 10 + s : 0);
    }
    if (pid < 0) return -1;
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void test_registered_at_start_up(void **state) {
    (void)state;
    assert_int_equal(tm_fork_ready, 2);
    /* every kind of locked section: refills, large and huge blocks, a
     * trim (the trim lock, the cache registry, every arena) */
    for (int i = 0; i < 4; i++) assert_true(workout((unsigned char)i));
    assert_int_equal(TM_API(_heapmin)(), 0);
    assert_int_equal(fork_and_check(2), 0);
}

/* ---- the program's own handlers allocate ------------------------------------ */

static int program_handler_calls;

/* A large block: taken and given back under an arena lock, which the
 * allocator's prepare handler holds until its parent or child handler. */
static void program_handler(void) {
    unsigned char *p = TM_API(malloc)(LARGE);
    if (!p) abort();
    memset(p, 0x77, LARGE);
    TM_API(free)(p);
    program_handler_calls++;
}

static void *allocate_a_little(void *arg) {
    (void)arg;
    TM_API(free)(TM_API(malloc)(LARGE));
    return NULL;
}

/* Registered before the process has a second thread, as a library that
 * sets itself up in main() would; then a thread, then a fork. glibc runs
 * the program's prepare handler before ours (registered later, it comes
 * first in prepare order) and its parent/child handlers after ours. A
 * hang here is the bug: the alarm makes it a failure, in parent and
 * child alike. */
static void test_program_handlers_may_allocate(void **state) {
    (void)state;
    assert_int_equal(pthread_atfork(program_handler, program_handler, program_handler), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, allocate_a_little, NULL), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    TM_API(free)(TM_API(malloc)(LARGE)); /* a locked section with two threads seen */
    alarm(120);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(120);
        _exit(program_handler_calls == 2 && workout(0x21) ? 0 : 1);
    }
    assert_true(pid > 0);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    alarm(0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(program_handler_calls, 2); /* prepare and parent */
}

/* ---- a thread that never allocated forks while this one is in locked sections */

enum { FORKS = 40 };
static void *parked[8]; /* large blocks of this thread's arena, freed by each child */
static volatile int forker_done;
static int child_status[FORKS];

static void *forker(void *arg) {
    (void)arg;
    for (int i = 0; i < FORKS; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            /* The main thread's arena lock was likely held at the fork:
             * freeing its blocks takes it, then a new cache and blocks. */
            bool ok = true;
            for (int k = 0; k < 8; k++) {
                ok &= ((unsigned char *)parked[k])[LARGE - 1] == (unsigned char)k;
                TM_API(free)(parked[k]);
            }
            ok &= workout(0x5a);
            _exit(ok ? 0 : 1);
        }
        int status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) != pid) child_status[i] = -1;
        else child_status[i] = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    __atomic_store_n(&forker_done, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void test_fork_from_a_thread_that_never_allocated(void **state) {
    (void)state;
    for (int k = 0; k < 8; k++) {
        assert_non_null(parked[k] = TM_API(malloc)(LARGE));
        memset(parked[k], k, LARGE);
    }
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, forker, NULL), 0);
    /* Large blocks are allocated and freed under this thread's arena
     * lock: this thread holds it most of the time the forker runs. Without
     * the registration before the first of them, a child would wait for it
     * forever. */
    while (!__atomic_load_n(&forker_done, __ATOMIC_ACQUIRE)) {
        void *p = TM_API(malloc)(LARGE);
        assert_non_null(p);
        ((char *)p)[0] = 1;
        TM_API(free)(p);
    }
    assert_int_equal(pthread_join(t, NULL), 0);
    for (int i = 0; i < FORKS; i++) assert_int_equal(child_status[i], 0);
    assert_int_equal(tm_fork_ready, 2);
    for (int k = 0; k < 8; k++) TM_API(free)(parked[k]);
}

/* Registered, a fork child finds them registered (fork_child ran). */
static void test_children_inherit_the_registration(void **state) {
    (void)state;
    assert_int_equal(tm_fork_ready, 2);
    assert_int_equal(fork_and_check(2), 0);
}

/* ---- a fork waits for a section that dropped its arena's lock ------------------- */

static atomic_int section_state; /* 1: in the section; 2: left it */

/* What a growth purge does around its madvise calls: count itself in
 * (arena_dropped_enter) under the lock, drop it, work, take it back and
 * count itself out (arena_dropped_leave). */
static void *dropped_section(void *arg) {
    tm_arena_t *a = arg;
    arena_lock(a);
    arena_dropped_enter(a);
    arena_unlock(a);
    atomic_store(&section_state, 1);
    struct timespec ts = {0, 100 * 1000 * 1000}; /* the fork comes meanwhile */
    nanosleep(&ts, NULL);
    arena_lock(a);
    arena_dropped_leave(a);
    atomic_store(&section_state, 2);
    arena_unlock(a);
    return NULL;
}

/* Until 2026-12-05 the prepare handler took the lock while such a section
 * was under way, and the child kept what it held (runs being purged)
 * for good. Now the fork waits: the child sees the section ended. */
static void test_fork_waits_for_dropped_sections(void **state) {
    (void)state;
    TM_API(free)(TM_API(malloc)(LARGE));
    tm_arena_t *a = arena_get(0);
    assert_non_null(a);
    atomic_store(&section_state, 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, dropped_section, a), 0);
    /* detached: a child forked while it runs has no thread to join, and
     * ThreadSanitizer would report it leaked there */
    assert_int_equal(pthread_detach(t), 0);
    while (atomic_load(&section_state) == 0) os_yield();
    pid_t pid = fork();
    if (pid == 0) _exit(a->dropped == 0 && atomic_load(&section_state) == 2 && workout(0x42) ? 0 : 1);
    assert_true(pid > 0);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    while (atomic_load(&section_state) != 2) os_yield();
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void) {
    tm_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registered_at_start_up),
        cmocka_unit_test(test_program_handlers_may_allocate),
        cmocka_unit_test(test_fork_from_a_thread_that_never_allocated),
        cmocka_unit_test(test_children_inherit_the_registration),
        cmocka_unit_test(test_fork_waits_for_dropped_sections),
    };
    return cmocka_run_group_tests_name("unit_fork_handlers", tests, NULL, NULL);
}
