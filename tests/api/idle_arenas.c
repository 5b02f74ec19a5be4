/*
 * idle_arenas.c -- pages left idle in one thread's arena are given back
 * when another thread, in another arena, faults in fresh pages: the
 * process's resident size follows what it holds, not what each arena once
 * held.
 *
 * Thread A allocates 8 MiB of large blocks, writes them, frees them, and
 * stays alive (so the next thread gets another arena) but idle. 100 ms
 * later thread B allocates and writes 8 MiB of its own: A's idle pages go
 * back as B's come in. Without that, B's 8 MiB would add to A's.
 */
#include "test_cmocka.h"

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
    for (int i = 0; i < NBLK; i++) TM_API(free)(p[i]);
    set(&a_done);
    wait_for(&a_may_exit); /* alive, so that B is bound to another arena */
    return NULL;
}

typedef struct {
    size_t released, rss_growth;
} b_result_t;

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
    trimalloc_stats_t st;
    assert_int_equal(TM_API(trimalloc_stats_get)(&st), 0);
    if (st.narenas < 2) skip();
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idle_pages_of_another_thread_go_back),
    };
    return cmocka_run_group_tests_name("api_idle_arenas", tests, NULL, NULL);
}
