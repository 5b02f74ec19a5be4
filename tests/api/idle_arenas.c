/*
 * idle_arenas.c -- pages left idle in one thread's arena are given back
 * when another thread, in another arena, faults in fresh pages: the
 * process's resident size follows what it holds, not what each arena once
 * held.
 *
 * Thread A allocates 8 MiB of large blocks, writes them, frees all but
 * every eighth, and stays alive (so the next thread gets another arena)
 * but idle. 100 ms later thread B allocates and writes 8 MiB of its own:
 * A's idle pages go back as B's come in. Without that, B's 8 MiB would add
 * to A's. (The blocks A keeps leave no chunk of its empty: an empty chunk
 * would move to B's arena whole instead, tests/api/chunk_adopt.c.)
 *
 * And when the last thread but the main one exits, every arena left
 * without a thread gives back its free pages at once, all but 1 MiB each,
 * unless dirty_decay_ms is -1; the main thread's arena keeps them. At
 * most once a second, though: a second such exit within the second leaves
 * the release to the first slow-path call of any thread after it.
 */
#include "test_cmocka.h"

#include <stdbool.h>

#define BLK ((size_t)256 * 1024) /* a large block, not a huge one */
#define NBLK 32                  /* 8 MiB */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int a_done, a_may_exit;

static void wait_for(int *flag) {
    tu_lock(&mu);
    while (!*flag) pthread_cond_wait(&cv, &mu);
    tu_unlock(&mu);
}

static void set(int *flag) {
    tu_lock(&mu);
    *flag = 1;
    pthread_cond_broadcast(&cv);
    tu_unlock(&mu);
}

static void touch_and_keep(void **p) {
    for (int i = 0; i < NBLK; i++) {
        p[i] = TM_API(malloc)(BLK);
        TU_CHECK(p[i] != NULL, "malloc(%zu)", BLK);
        memset(p[i], 0x6b, BLK);
    }
}

static void *thread_a(void *arg) {
    (void)arg;
    void *p[NBLK];
    touch_and_keep(p);
    for (int i = 0; i < NBLK; i++)
        if (i % 8) TM_API(free)(p[i]);
    set(&a_done);
    wait_for(&a_may_exit); /* alive, so that B is bound to another arena */
    for (int i = 0; i < NBLK; i += 8) TM_API(free)(p[i]);
    return NULL;
}

typedef struct {
    size_t released, rss_growth;
} b_result_t;

static unsigned narenas(void) {
    trimalloc_stats_t st;
    TU_CHECK(TM_API(trimalloc_stats_get)(&st) == 0, "stats");
    return st.narenas;
}

static size_t released_bytes(void) {
    trimalloc_stats_t st;
    TU_CHECK(TM_API(trimalloc_stats_get)(&st) == 0, "stats");
    return st.released;
}

static void *thread_b(void *arg) {
    b_result_t *r = arg;
    void *p[NBLK];
    size_t released0 = released_bytes(), rss0 = tu_rss_bytes();
    touch_and_keep(p);
    size_t rss1 = tu_rss_bytes();
    r->released = released_bytes() - released0;
    r->rss_growth = rss1 > rss0 ? rss1 - rss0 : 0;
    for (int i = 0; i < NBLK; i++) TM_API(free)(p[i]);
    return NULL;
}

static void test_idle_pages_of_another_thread_go_back(void **state) {
    (void)state;
    if (narenas() < 2) skip();
    pthread_t a, b;
    tu_thread_create(&a, thread_a, NULL);
    wait_for(&a_done);
    struct timespec idle = {0, 100 * 1000 * 1000}; /* A's pages stay idle a while */
    while (nanosleep(&idle, &idle) != 0) {
    }
    b_result_t r = {0, 0};
    tu_thread_create(&b, thread_b, &r);
    tu_thread_join(b);
    set(&a_may_exit);
    tu_thread_join(a);
    print_message("B's 8 MiB: %zu KiB released meanwhile, resident size grew %zu KiB\n",
                  r.released >> 10, r.rss_growth >> 10);
    /* most of A's 8 MiB went back while B faulted in its own */
    assert_true(r.released >= 4 * TU_MIB);
    /* sanitizers keep shadow memory for every byte written */
    if (!TU_ASAN && !TU_TSAN) assert_true(r.rss_growth <= 5 * TU_MIB);
}

/* Past the gap between two releases at thread exit (tcache.c,
 * ORPHAN_GAP_MS) since the last one. */
static void wait_release_gap(void) {
    struct timespec gap = {1, 100 * 1000 * 1000};
    while (nanosleep(&gap, &gap) != 0) {
    }
}

/* What the exit of a thread like A (thread_a) releases when it is the last
 * thread but this one (the main, initial thread): bound to an arena of its
 * own, or (shared) to arena 0, which this thread keeps. */
static size_t released_by_exit(bool shared) {
    void *m = TM_API(malloc)(16); /* this thread is bound (to arena 0) */
    TU_CHECK(m != NULL, "malloc(16)");
    if (!shared)
        tu_arena_holder_start(); /* takes this thread's place in arena 0 */
    a_done = a_may_exit = 0;
    pthread_t t;
    tu_thread_create(&t, thread_a, NULL);
    wait_for(&a_done);
    if (!shared)
        tu_arena_holder_stop(); /* so that the thread is the last one */
    size_t released0 = released_bytes();
    set(&a_may_exit);
    tu_thread_join(t);
    size_t released = released_bytes() - released0;
    TM_API(free)(m);
    return released;
}

static void test_arena_of_exited_thread_gives_back(void **state) {
    (void)state;
    if (narenas() < 2) skip();
    long decay = 0;
    assert_int_equal(TM_API(trimalloc_option_get)("dirty_decay_ms", &decay), 0);
    if (decay < 0) skip(); /* TRIMALLOC_CONF turned it off */
    wait_release_gap(); /* the first test's last exit released its arenas */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    size_t alone = released_by_exit(false);
    print_message("the last thread but this one exited, alone in its arena: %zu KiB released\n",
                  alone >> 10);
    assert_true(alone >= 6 * TU_MIB); /* 8 MiB less the 1 MiB kept, less slack */
    /* The same again at once, as a program that runs rounds of threads
     * does: the pages stay for the next round, until a slow-path call of
     * some thread once the gap has passed. */
    size_t again = released_by_exit(false);
    print_message("the same within the second: %zu KiB released\n", again >> 10);
    /* This thread's first block of the size may be carved where a page
     * was never touched, and a growth purge of its own arena's idle pages
     * (not the release this checks) then comes with it: before the count. */
    TM_API(free)(TM_API(malloc)(BLK));
    size_t released0 = released_bytes();
    for (int i = 0; i < 100; i++) { /* not yet due: the pages stay */
        void *p = TM_API(malloc)(BLK);
        TU_CHECK(p != NULL, "malloc(%zu)", BLK);
        TM_API(free)(p);
    }
    size_t early = released_bytes() - released0;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    /* all of it within the second, or the machine was too busy to tell */
    bool timely = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 < 900;
    wait_release_gap();
    released0 = released_bytes();
    for (int i = 0; i < 200; i++) { /* 64 large allocations make a GC tick */
        void *p = TM_API(malloc)(BLK);
        TU_CHECK(p != NULL, "malloc(%zu)", BLK);
        TM_API(free)(p);
    }
    size_t later = released_bytes() - released0;
    print_message("slow-path calls of this thread: %zu KiB released within the second, %zu KiB after it\n",
                  early >> 10, later >> 10);
    if (timely) {
        assert_true(again < TU_MIB);
        assert_true(early < TU_MIB);
    } else {
        print_message("(over 0.9 s from the first exit to here: the machine is too busy to check the gap)\n");
    }
    assert_true(later >= 6 * TU_MIB);
    wait_release_gap();
    size_t shared = released_by_exit(true);
    print_message("a thread sharing the main thread's arena exited: %zu KiB released\n",
                  shared >> 10);
    assert_true(shared < TU_MIB); /* nothing of arena 0 */
    /* dirty_decay_ms:-1 keeps every free page */
    assert_int_equal(TM_API(trimalloc_option_set)("dirty_decay_ms", -1), 0);
    size_t off = released_by_exit(false);
    assert_int_equal(TM_API(trimalloc_option_set)("dirty_decay_ms", decay), 0);
    print_message("with dirty_decay_ms:-1: %zu KiB released\n", off >> 10);
    assert_true(off < TU_MIB);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idle_pages_of_another_thread_go_back),
        cmocka_unit_test(test_arena_of_exited_thread_gives_back),
    };
    return cmocka_run_group_tests_name("api_idle_arenas", tests, NULL, NULL);
}
