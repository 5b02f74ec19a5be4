/*
 * chunk_adopt.c -- an arena that must grow takes an empty chunk of another
 * arena before it maps a new one (chunk.c, chunk_adopt): a thread of
 * another arena allocates and frees three chunks' worth of large blocks,
 * then this thread allocates as much. Until 2026-12-06 this thread's arena
 * mapped three chunks of its own while the other arena kept three empty
 * ones (an outside tester's threads taking turns at bursts of 8-64 KiB
 * blocks peaked at 928 MiB, 245 with the change; tcmalloc 272).
 */
#include "test_cmocka.h"

enum { BLOCK = 64 << 10, NB = 3 * (4 << 20) / BLOCK };

static void *blocks[NB];

static trimalloc_stats_t stats(void)
{
    trimalloc_stats_t st;
    assert_int_equal(TM_API(trimalloc_stats_get)(&st), 0);
    return st;
}

static trimalloc_arena_stats_t arena_stats(unsigned i)
{
    trimalloc_arena_stats_t s;
    assert_int_equal(TM_API(trimalloc_stats_arena)(i, &s), 0);
    return s;
}

/* bytes of chunks over all arenas */
static size_t chunk_bytes(void)
{
    size_t sum = 0;
    for (unsigned i = 0, n = stats().narenas; i < n; i++)
        sum += arena_stats(i).mapped;
    return sum;
}

static void fill_blocks(unsigned char tag)
{
    for (int i = 0; i < NB; i++) {
        blocks[i] = TM_API(malloc)(BLOCK);
        TU_CHECK(blocks[i] != NULL, "malloc(%d) failed", BLOCK);
        memset(blocks[i], tag + i, BLOCK);
    }
}

/* This thread allocates as much as the burst did: the arenas' chunks
 * grow by one at most (the blocks need not fit the three exactly), as the
 * burst's empty chunks are taken; then its blocks are checked and freed. */
static void fill_with_few_new_chunks(size_t before)
{
    fill_blocks(7);
    size_t after = chunk_bytes();
    if (after > before + (4 << 20))
        fail_msg("chunks grew from %zu to %zu bytes", before, after);
    for (int i = 0; i < NB; i++) {
        assert_int_equal(tu_find_not_byte(blocks[i], BLOCK, (unsigned char)(7 + i)), (size_t)-1);
        TM_API(free)(blocks[i]);
    }
}

static void *burst_thread(void *arg)
{
    (void)arg;
    fill_blocks(1);
    for (int i = 0; i < NB; i++)
        TM_API(free)(blocks[i]);
    return NULL;
}

static void test_a_growing_arena_takes_another_arenas_empty_chunks(void **state)
{
    (void)state;
    if (stats().narenas < 2)
        skip();
    tu_arena_holder_start(); /* the burst's thread gets an arena of its own */
    assert_int_equal(TM_API(_heapmin)(), 0); /* no empty chunk anywhere */
    void *own = TM_API(malloc)(16);
    assert_non_null(own);

    pthread_t t;
    tu_thread_create(&t, burst_thread, NULL);
    tu_thread_join(t);
    size_t before = chunk_bytes();

    fill_with_few_new_chunks(before);
    TM_API(free)(own);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    tu_arena_holder_stop();
}

/* The same with the burst's thread alive and idle after it freed its
 * blocks, in an order spread over its chunks: the arena keeps its last
 * freed large runs (chunk.c), and an outside reviewer found that, one in
 * each chunk, they kept every chunk of a burst from being empty, so the
 * next thread's arena mapped its own (threads taking turns at 64 MiB
 * bursts: peak RSS 75 -> 224 MiB). */
static pthread_mutex_t idle_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t idle_cv = PTHREAD_COND_INITIALIZER;
static int burst_done, may_exit;

static void *burst_then_idle_thread(void *arg)
{
    (void)arg;
    fill_blocks(1);
    for (int step = 0; step < 5; step++) /* 0, 5, 10, ... then 1, 6, 11, ...: every chunk in turn */
        for (int i = step; i < NB; i += 5)
            TM_API(free)(blocks[i]);
    tu_lock(&idle_mu);
    burst_done = 1;
    pthread_cond_broadcast(&idle_cv);
    while (!may_exit)
        pthread_cond_wait(&idle_cv, &idle_mu);
    tu_unlock(&idle_mu);
    return NULL;
}

static void test_kept_runs_leave_chunks_empty(void **state)
{
    (void)state;
    if (stats().narenas < 2)
        skip();
    tu_arena_holder_start();
    assert_int_equal(TM_API(_heapmin)(), 0);
    void *own = TM_API(malloc)(16);
    assert_non_null(own);

    burst_done = may_exit = 0;
    pthread_t t;
    tu_thread_create(&t, burst_then_idle_thread, NULL);
    tu_lock(&idle_mu);
    while (!burst_done)
        pthread_cond_wait(&idle_cv, &idle_mu);
    tu_unlock(&idle_mu);
    size_t before = chunk_bytes();

    fill_with_few_new_chunks(before);
    tu_lock(&idle_mu);
    may_exit = 1;
    pthread_cond_broadcast(&idle_cv);
    tu_unlock(&idle_mu);
    tu_thread_join(t);
    TM_API(free)(own);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    tu_arena_holder_stop();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_growing_arena_takes_another_arenas_empty_chunks),
        cmocka_unit_test(test_kept_runs_leave_chunks_empty),
    };
    return cmocka_run_group_tests_name("api_chunk_adopt", tests, NULL, NULL);
}
