/*
 * fork_lazy.c (unit) -- the fork handlers are registered once the process
 * has a second thread, before any allocator lock is taken from then on
 * (init.c): a single-threaded process never registers them and its fork
 * children work without them; a thread that never allocated can fork while
 * another thread is inside the allocator's locked sections, and the child
 * can still take every lock.
 *
 * The tests run in order: the first while this process has one thread.
 * In the prefixed library used here, pthread_create's own allocations go
 * to glibc's malloc, so the only allocator calls are the test's.
 */
#include "test_cmocka.h"
#include "internal.h"

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

static void test_one_thread_registers_nothing(void **state) {
    (void)state;
#if !TM_LAZY_FORK
    skip(); /* no __libc_single_threaded: registered at start-up */
#else
    assert_true(__libc_single_threaded);
#endif
    /* every kind of locked section: refills, large and huge blocks, a
     * trim (the trim lock, the cache registry, every arena) */
    for (int i = 0; i < 4; i++) assert_true(workout((unsigned char)i));
    void *many[256];
    for (int i = 0; i < 256; i++) assert_non_null(many[i] = TM_API(malloc)(16 + (size_t)i * 8));
    for (int i = 0; i < 256; i++) TM_API(free)(many[i]);
    assert_int_equal(TM_API(_heapmin)(), 0);
    assert_int_equal(tm_fork_ready, 0);
    /* a single-threaded fork needs none: the child allocates, frees and
     * trims. (Whether the child registers them is not checked: under
     * ThreadSanitizer it does, after its first allocation.) */
    assert_int_equal(fork_and_check(0), 0);
    assert_int_equal(tm_fork_ready, 0);
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

int main(void) {
    tm_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_thread_registers_nothing),
        cmocka_unit_test(test_fork_from_a_thread_that_never_allocated),
        cmocka_unit_test(test_children_inherit_the_registration),
    };
    return cmocka_run_group_tests_name("unit_fork_lazy", tests, NULL, NULL);
}
