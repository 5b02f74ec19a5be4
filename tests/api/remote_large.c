/*
 * remote_large.c -- large blocks freed by a thread of another arena wait in
 * that thread's cache and go home to their arena together (tcache.c,
 * tcache_free_large):
 *   - the first frees wait (the arena's free count does not move, and the
 *     statistics count the bytes as cached, not as held), later ones go
 *     home in a few batches, not one by one;
 *   - _heapmin() sends home what waits in the cache of a thread that is
 *     alive and idle, and thread exit what waits in its own;
 *   - a malloc of the same length in pages takes a waiting block back (no
 *     arena hands out a block), one of another length does not, and the
 *     length is the block's current one after a realloc in place.
 * What a bad free of such a block does is in tests/bad_input
 * (double-remote-large, interior-remote-large-page). Each test first starts
 * an idle thread (tu_arena_holder_start): the first thread the main thread
 * starts shares its arena, and the threads here must not.
 */
#include "test_cmocka.h"

enum { NB = 40, BLOCK = 40 << 10 }; /* 10 pages: above the largest size class */

static unsigned narenas(void)
{
    trimalloc_stats_t st;
    assert_int_equal(TM_API(trimalloc_stats_get)(&st), 0);
    return st.narenas;
}

static trimalloc_arena_stats_t arena_stats(unsigned i)
{
    trimalloc_arena_stats_t s;
    assert_int_equal(TM_API(trimalloc_stats_arena)(i, &s), 0);
    return s;
}

static uint64_t large_nfree(unsigned i) { return arena_stats(i).large_nfree; }

static trimalloc_stats_t stats(void)
{
    trimalloc_stats_t st;
    assert_int_equal(TM_API(trimalloc_stats_get)(&st), 0);
    return st;
}

/* The arena whose large_nmalloc count grows by n while fn(arg) runs. */
static unsigned arena_of(void (*fn)(void *), void *arg, unsigned n)
{
    unsigned na = narenas();
    uint64_t before[256];
    for (unsigned i = 0; i < na; i++)
        before[i] = arena_stats(i).large_nmalloc;
    fn(arg);
    for (unsigned i = 0; i < na; i++)
        if (arena_stats(i).large_nmalloc - before[i] == n)
            return i;
    fail_msg("no arena handed out the %u large blocks", n);
    return 0;
}

static void *blocks[NB];

static void alloc_blocks(void *arg)
{
    (void)arg;
    for (int i = 0; i < NB; i++) {
        blocks[i] = TM_API(malloc)(BLOCK);
        TU_CHECK(blocks[i] != NULL, "malloc(%d) failed", BLOCK);
        memset(blocks[i], i + 1, BLOCK);
    }
}

static void *one;

static void alloc_one(void *arg)
{
    (void)arg;
    one = TM_API(malloc)(BLOCK);
    TU_CHECK(one != NULL, "malloc(%d) failed", BLOCK);
}

static void *alloc_thread(void *arg)
{
    alloc_blocks(arg);
    return NULL;
}

static void alloc_in_thread(void *arg)
{
    pthread_t t;
    tu_thread_create(&t, alloc_thread, arg);
    tu_thread_join(t);
}

static void check_blocks(int from)
{
    for (int i = from; i < NB; i++)
        assert_int_equal(tu_find_not_byte(blocks[i], BLOCK, (unsigned char)(i + 1)), (size_t)-1);
}

static void test_remote_large_frees_go_home_in_batches(void **state)
{
    (void)state;
    if (narenas() < 2)
        skip(); /* one arena: no block is remote */
    tu_arena_holder_start();
    assert_int_equal(TM_API(_heapmin)(), 0);
    void *own = TM_API(malloc)(BLOCK); /* binds this thread to its arena */
    assert_non_null(own);
    /* a thread that has exited leaves its arena to the next one, so the
     * blocks are made by a thread while this one holds its own arena */
    unsigned x = arena_of(alloc_in_thread, NULL, NB);
    unsigned me = arena_of(alloc_blocks, NULL, NB);
    assert_int_not_equal(me, x); /* blocks[] are now this thread's own: free them */
    for (int i = 0; i < NB; i++)
        TM_API(free)(blocks[i]);
    x = arena_of(alloc_in_thread, NULL, NB);
    assert_int_not_equal(me, x);

    check_blocks(0);
    uint64_t nfree0 = large_nfree(x);
    trimalloc_stats_t st0 = stats();
    TM_API(free)(blocks[0]);
    /* waits in this thread's cache: counted as cached, no longer as held */
    assert_int_equal(large_nfree(x), nfree0);
    trimalloc_stats_t st1 = stats();
    assert_int_equal(st1.allocated, st0.allocated - BLOCK);
    assert_int_equal(st1.tcache_bytes, st0.tcache_bytes + BLOCK);

    unsigned batches = 0;
    uint64_t last = nfree0;
    for (int i = 1; i < NB; i++) {
        TM_API(free)(blocks[i]);
        uint64_t now = large_nfree(x);
        if (now != last)
            batches++;
        last = now;
    }
    assert_true(batches >= 1);
    if (batches > NB / 4)
        fail_msg("%d remote frees went home in %u batches", NB, batches);
    assert_true(last - nfree0 >= NB - 32);
    /* _heapmin sends home what still waits */
    assert_int_equal(TM_API(_heapmin)(), 0);
    assert_int_equal(large_nfree(x) - nfree0, NB);
    assert_int_equal(stats().tcache_bytes, 0);
    TM_API(free)(own);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    tu_arena_holder_stop();
}

/* A thread that frees two of this thread's blocks, then waits. */
static pthread_barrier_t freed_two, go_on;
static int exit_at_once;

static void *free_two_thread(void *arg)
{
    (void)arg;
    TM_API(free)(blocks[0]);
    TM_API(free)(blocks[1]);
    if (!exit_at_once) {
        pthread_barrier_wait(&freed_two);
        pthread_barrier_wait(&go_on); /* alive and idle meanwhile */
    }
    return NULL;
}

static void free_two_elsewhere(int at_once)
{
    if (narenas() < 2)
        skip();
    tu_arena_holder_start();
    assert_int_equal(TM_API(_heapmin)(), 0);
    unsigned me = arena_of(alloc_blocks, NULL, NB);
    uint64_t nfree0 = large_nfree(me);
    exit_at_once = at_once;
    pthread_t t;
    if (!at_once) {
        assert_int_equal(pthread_barrier_init(&freed_two, NULL, 2), 0);
        assert_int_equal(pthread_barrier_init(&go_on, NULL, 2), 0);
    }
    tu_thread_create(&t, free_two_thread, NULL);
    if (!at_once) {
        pthread_barrier_wait(&freed_two);
        /* the thread's arena is not this one (it is the only other
         * thread), so both blocks wait in its cache */
        assert_int_equal(large_nfree(me), nfree0);
        assert_int_equal(TM_API(_heapmin)(), 0);
        assert_int_equal(large_nfree(me) - nfree0, 2);
        assert_int_equal(stats().tcache_bytes, 0);
        pthread_barrier_wait(&go_on);
    }
    tu_thread_join(t);
    assert_int_equal(large_nfree(me) - nfree0, 2);
    check_blocks(2);
    for (int i = 2; i < NB; i++)
        TM_API(free)(blocks[i]);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    if (!at_once) {
        pthread_barrier_destroy(&freed_two);
        pthread_barrier_destroy(&go_on);
    }
    tu_arena_holder_stop();
}

static void test_heapmin_sends_home_an_idle_threads_queue(void **state)
{
    (void)state;
    free_two_elsewhere(0);
}

static void test_thread_exit_sends_its_queue_home(void **state)
{
    (void)state;
    free_two_elsewhere(1);
}

/* Binds this thread to its arena (*own: a block that keeps it there), then
 * has a thread of another arena make n blocks with fill; returns this
 * thread's arena, *x the other. The caller frees *own and stops the
 * holder thread. */
static unsigned two_arenas(void (*fill)(void *), unsigned n, void **own, unsigned *x)
{
    tu_arena_holder_start();
    assert_int_equal(TM_API(_heapmin)(), 0);
    *own = TM_API(malloc)(BLOCK);
    assert_non_null(*own);
    unsigned me = arena_of(alloc_one, NULL, 1);
    TM_API(free)(one);
    *x = arena_of(fill, NULL, n);
    assert_int_not_equal(me, *x);
    return me;
}

static void test_queued_block_taken_back_for_same_length(void **state)
{
    (void)state;
    if (narenas() < 2)
        skip();
    void *own;
    unsigned x, me = two_arenas(alloc_in_thread, NB, &own, &x);
    uint64_t mine0 = arena_stats(me).large_nmalloc, theirs0 = arena_stats(x).large_nmalloc;

    /* 40 KiB = 10 pages: a malloc of 37000 B (10 pages) takes it back */
    TM_API(free)(blocks[0]);
    void *p = TM_API(malloc)(37000);
    assert_ptr_equal(p, blocks[0]);
    assert_true(TM_API(malloc_usable_size)(p) >= 37000);
    memset(p, 0x11, 37000);
    assert_int_equal(arena_stats(me).large_nmalloc, mine0);
    assert_int_equal(arena_stats(x).large_nmalloc, theirs0);

    /* another length (11 pages) does not take a waiting 10-page block */
    TM_API(free)(blocks[1]);
    void *q = TM_API(malloc)(45000);
    assert_non_null(q);
    assert_ptr_not_equal(q, blocks[1]);
    assert_int_equal(arena_stats(me).large_nmalloc, mine0 + 1);
    memset(q, 0x22, 45000);

    /* shrunk in place to 9 pages, then freed: a 10-page malloc must not
     * get it (it would overrun it), a 9-page one does (both above the
     * largest size class, 32 KiB) */
    void *r = TM_API(realloc)(blocks[2], 36000);
    assert_ptr_equal(r, blocks[2]);
    TM_API(free)(r);
    void *big = TM_API(malloc)(40000);
    assert_non_null(big);
    assert_ptr_not_equal(big, r);
    assert_true(TM_API(malloc_usable_size)(big) >= 40000);
    memset(big, 0x33, 40000);
    void *small = TM_API(malloc)(36500);
    assert_ptr_equal(small, r);
    assert_true(TM_API(malloc_usable_size)(small) >= 36500);
    memset(small, 0x44, 36500);

    check_blocks(3);
    TM_API(free)(p);
    TM_API(free)(q);
    TM_API(free)(big);
    TM_API(free)(small);
    for (int i = 3; i < NB; i++)
        TM_API(free)(blocks[i]);
    TM_API(free)(own);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    tu_arena_holder_stop();
}

enum { NBIG = 31, BIG = 1 << 20 };
static void *bigs[NBIG];

static void *alloc_bigs_thread(void *arg)
{
    (void)arg;
    for (int i = 0; i < NBIG; i++) {
        bigs[i] = TM_API(malloc)(BIG);
        TU_CHECK(bigs[i] != NULL, "malloc(%d) failed", BIG);
        memset(bigs[i], 0x5c, 4096);
    }
    return NULL;
}

static void alloc_bigs_in_thread(void *arg)
{
    pthread_t t;
    tu_thread_create(&t, alloc_bigs_thread, arg);
    tu_thread_join(t);
}

/* The queue holds at most 1 MiB of runs, whatever went home before. Its
 * length used to adapt to the bytes of its last batch, starting at 4: the
 * first three 1 MiB runs waited (3 MiB), and while short runs of the
 * thread's own arena were queued too (c70872c, taken out), a thread that
 * had freed some kept up to 26 MiB of these 31 out of their arena (found
 * by a tester, 2026-12-05). The short runs of its own stay in the test. */
static void test_the_queue_holds_at_most_a_mebibyte(void **state)
{
    (void)state;
    if (narenas() < 2)
        skip();
    void *own;
    unsigned x;
    two_arenas(alloc_bigs_in_thread, NBIG, &own, &x);
    /* short runs of this thread's own arena come and go first */
    void *mine[40];
    for (int i = 0; i < 40; i++) {
        mine[i] = TM_API(malloc)(40 << 10);
        assert_non_null(mine[i]);
    }
    for (int i = 0; i < 40; i++)
        TM_API(free)(mine[i]);
    size_t base = stats().tcache_bytes, most = 0;
    for (int i = 0; i < NBIG; i++) {
        TM_API(free)(bigs[i]);
        size_t now = stats().tcache_bytes;
        if (now > most)
            most = now;
    }
    assert_true(most <= base + BIG);
    TM_API(free)(own);
    tu_arena_holder_stop();
}

/* Under a small tcache_total_mb the queue shrinks with the bins: at 1 MiB
 * a cache's share is at most 1 MiB, under a quarter of a cache with every
 * bin grown (4.4 MiB), and the queue's bound scales down with it, to under
 * 256 KiB. Until 2026-12-06 the queue kept its 1 MiB whatever the share
 * (here: all 40 blocks of 16 KiB, 640 KiB, waited). */
static void test_the_queue_shrinks_with_the_share(void **state)
{
    (void)state;
    if (narenas() < 2)
        skip();
    long total;
    assert_int_equal(TM_API(trimalloc_option_get)("tcache_total_mb", &total), 0);
    void *own;
    unsigned x;
    two_arenas(alloc_in_thread, NB, &own, &x);
    assert_int_equal(TM_API(trimalloc_option_set)("tcache_total_mb", 1), 0);
    uint64_t nfree0 = large_nfree(x);
    size_t base = stats().tcache_bytes, most = 0;
    for (int i = 0; i < NB; i++) {
        TM_API(free)(blocks[i]);
        size_t now = stats().tcache_bytes;
        if (now > most)
            most = now;
    }
    assert_true(most > base); /* the queue is still used */
    if (most - base >= (256u << 10))
        fail_msg("%zu bytes queued under tcache_total_mb:1", most - base);
    assert_int_equal(TM_API(trimalloc_option_set)("tcache_total_mb", total), 0);
    assert_int_equal(TM_API(_heapmin)(), 0);
    assert_int_equal(large_nfree(x) - nfree0, NB);
    TM_API(free)(own);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    tu_arena_holder_stop();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_remote_large_frees_go_home_in_batches),
        cmocka_unit_test(test_heapmin_sends_home_an_idle_threads_queue),
        cmocka_unit_test(test_thread_exit_sends_its_queue_home),
        cmocka_unit_test(test_queued_block_taken_back_for_same_length),
        cmocka_unit_test(test_the_queue_holds_at_most_a_mebibyte),
        cmocka_unit_test(test_the_queue_shrinks_with_the_share),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
