/*
 * trim_lock.c (unit) -- the trim lock (heapmin_lock: _heapmin, malloc_trim,
 * the CRT heap walkers, fork) is taken in turn. A thread that takes and
 * releases it back to back must not keep it from another that asked:
 * with a plain mutex it got it again before the waiter woke, and an outside
 * tester's other _heapmin callers waited 0.7-3 s, fork() up to 1 s
 * (2026-12-07).
 *
 * No clock: the looping thread counts its holds, and the waiter checks how
 * many went by between its asking and its turn -- at most the hold under
 * way when it asked, and not even the next one.
 */
#include "test_cmocka.h"
#include "internal.h"

#include <signal.h>
#include <stdatomic.h>

static volatile int stop;
static unsigned long holds; /* the looper's, written while it holds the lock */

static void *looper(void *arg) {
    (void)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        heapmin_lock();
        __atomic_store_n(&holds, holds + 1, __ATOMIC_RELAXED);
        /* a hold long enough for a waiter to fall asleep, as a _heapmin's */
        for (volatile unsigned i = 0; i < 100000; i++) {
        }
        heapmin_unlock();
    }
    return NULL;
}

static void test_a_waiter_gets_its_turn(void **state) {
    (void)state;
    pthread_t t;
    stop = 0;
    assert_int_equal(pthread_create(&t, NULL, looper, NULL), 0);
    while (__atomic_load_n(&holds, __ATOMIC_RELAXED) < 10) sched_yield();
    unsigned fair = 0, worst = 0;
    for (int i = 0; i < 100; i++) {
        unsigned long before = __atomic_load_n(&holds, __ATOMIC_RELAXED);
        heapmin_lock();
        unsigned long during = __atomic_load_n(&holds, __ATOMIC_RELAXED);
        heapmin_unlock();
        fair += during - before <= 1;
        if (during - before > worst) worst = (unsigned)(during - before);
        sched_yield(); /* let the looper queue again */
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    assert_int_equal(pthread_join(t, NULL), 0);
    print_message("turns with at most one hold of the looper's before them: %u of 100 "
                  "(worst %u)\n", fair, worst);
    /* Not all 100: this thread may be preempted between reading the count
     * and asking for the lock, and the looper then runs on. A lock without
     * turns gives the looper thousands of holds nearly every time. */
    assert_true(fair >= 90);
}

/* A turn that its waiter does not take is passed over: the waiter here is
 * kept in a signal handler (as a stop-the-world collector that suspends
 * threads with signals keeps them) when its turn comes, and a later caller
 * gets the lock without waiting for it; the waiter queues again once it
 * runs and gets a turn of its own. Until 2026-12-07 the later caller waited
 * as long as the waiter was kept (an outside tester: 3 s, every _heapmin,
 * malloc_trim, _heapchk and fork). The watchdog lets the waiter go after
 * 10 s if nothing else does, so that the old lock fails here, not hangs. */
static atomic_int parked, let_go, waiter_got;

static void park_handler(int sig) {
    (void)sig;
    atomic_store(&parked, 1);
    while (!atomic_load(&let_go)) sched_yield();
}

static void *turn_waiter(void *arg) {
    (void)arg;
    heapmin_lock();
    atomic_store(&waiter_got, 1);
    heapmin_unlock();
    return NULL;
}

static void *watchdog(void *arg) {
    (void)arg;
    struct timespec step = {0, 10 * 1000 * 1000};
    for (int i = 0; i < 1000 && !atomic_load(&let_go); i++) nanosleep(&step, NULL);
    atomic_store(&let_go, 1);
    return NULL;
}

static void test_a_turn_not_taken_is_passed_over(void **state) {
    (void)state;
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = park_handler;
    sigemptyset(&sa.sa_mask);
    assert_int_equal(sigaction(SIGUSR1, &sa, &old), 0);
    atomic_store(&parked, 0);
    atomic_store(&let_go, 0);
    atomic_store(&waiter_got, 0);

    pthread_t w, dog;
    heapmin_lock();
    assert_int_equal(pthread_create(&w, NULL, turn_waiter, NULL), 0);
    while (heapmin_waiters() == 0) sched_yield(); /* it has its ticket */
    assert_int_equal(pthread_kill(w, SIGUSR1), 0);
    while (!atomic_load(&parked)) sched_yield();
    assert_int_equal(pthread_create(&dog, NULL, watchdog, NULL), 0);
    unsigned long passed = heapmin_turns_passed;
    heapmin_unlock(); /* the turn goes to the parked waiter */
    heapmin_lock();   /* a later caller */
    int waiter_was_let_go = atomic_load(&let_go);
    heapmin_unlock();
    atomic_store(&let_go, 1);
    assert_int_equal(pthread_join(w, NULL), 0);
    assert_int_equal(pthread_join(dog, NULL), 0);
    assert_int_equal(sigaction(SIGUSR1, &old, NULL), 0);
    assert_false(waiter_was_let_go); /* it got the lock while the waiter was parked */
    assert_true(heapmin_turns_passed > passed);
    assert_true(atomic_load(&waiter_got)); /* the waiter queued again and got a turn */
    assert_int_equal(heapmin_waiters(), 0);
}

/* A trylock fails while someone holds the lock, succeeds when nobody does,
 * and the lock it takes is the same one (a blocking taker waits for it). */
static void test_trylock(void **state) {
    (void)state;
    assert_true(heapmin_trylock());
    assert_false(heapmin_trylock());
    heapmin_unlock();
    heapmin_lock();
    assert_false(heapmin_trylock());
    heapmin_unlock();
    assert_true(heapmin_trylock());
    heapmin_unlock();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trylock),
        cmocka_unit_test(test_a_waiter_gets_its_turn),
        cmocka_unit_test(test_a_turn_not_taken_is_passed_over),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
