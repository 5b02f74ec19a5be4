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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
