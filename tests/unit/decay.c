/*
 * decay.c (unit) -- the decay (chunk.c): resident free pages that stay
 * free for dirty_decay_ms go back to the kernel on a later GC tick, pages
 * freed or used again within the window do not, and -1 keeps them all.
 *
 * Arena X (the last one, which no thread of this program is bound to) is
 * driven directly through arena_alloc_large; arena_decay_tick() is called
 * by the test, as a thread cache's GC tick would; mincore() says which
 * pages are resident. Where a window must have closed the test sleeps
 * past it and tries again a few times (a preempted test can only make a
 * window longer, never shorter). The last test goes through malloc and
 * free: the ticks come from the thread cache's GC.
 */
#include "test_cmocka.h"
#include "internal.h"
#include "large_blocks.h"

#include <dirent.h>

static tm_arena_t *X;
static long saved_decay;

/* An atomic store, as trimalloc_option_set makes: the background thread of
 * the last test reads the option. */
static void set_decay(long ms) { __atomic_store_n(&tm_opt.dirty_decay_ms, ms, __ATOMIC_RELAXED); }

static int setup(void **state) {
    (void)state;
    tm_init();
    saved_decay = tm_opt.dirty_decay_ms;
    X = arena_get(tm_narenas - 1);
    return X ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    set_decay(saved_decay);
    return 0;
}

/* Free what the test holds; X's empty chunks are unmapped. */
static int teardown(void **state) {
    (void)state;
    /* off whatever a failed background test left (test_no_thread_from_a_tick
     * sets the option without a thread) */
    __atomic_store_n(&tm_opt.background_thread, 0, __ATOMIC_SEQ_CST);
    big_free_all();
    arena_purge(X, true, NULL);
    return X->nchunks == 0 ? 0 : -1;
}

/* Runs first: a window of a minute, so the pages, free for a few
 * milliseconds, are not due however the test is scheduled. */
static void test_pages_freed_within_the_window_stay(void **state) {
    (void)state;
    set_decay(60000);
    /* closes the quarter that began at start-up; a new one begins */
    arena_decay_tick(TM_DECAY_TICK_PAGES);
    char *x = idle_region(X);
    size_t before = released();
    for (int i = 0; i < 3; i++) arena_decay_tick(TM_DECAY_TICK_PAGES);
    assert_int_equal(resident(x, 8 * BLK), 512);
    assert_int_equal(released(), before);
}

static void test_idle_pages_go_back_after_the_window(void **state) {
    (void)state;
    set_decay(50);
    char *x = idle_region(X);
    size_t before = released();
    /* the quarters that close first may have begun before the pages
     * were freed; four after them have them free throughout */
    for (int i = 0; i < 10 && resident(x, 8 * BLK); i++) {
        sleep_ms(60);
        arena_decay_tick(TM_DECAY_TICK_PAGES);
    }
    assert_int_equal(resident(x, 8 * BLK), 0);
    assert_true(released() - before >= PG(512));
}

/* The window is kept in quarters: pages freed just after a quarter began
 * go back once the four quarters after it have closed, 1.25 windows after
 * they were freed -- a single window of the full length would need two
 * (its first close still counts the time before the free). Ticks every
 * 25 ms: 20 of them make 1.25 windows of 400 ms, 32 make two; the test
 * allows 26. (Preemption makes the ticks further apart, which only brings
 * the pages back in fewer of them.) */
static void test_idle_pages_go_back_a_quarter_after_the_window(void **state) {
    (void)state;
    set_decay(400);
    sleep_ms(110);
    arena_decay_tick(TM_DECAY_TICK_PAGES); /* a quarter begins */
    char *x = idle_region(X);
    int ticks = 0;
    while (ticks < 26 && resident(x, 8 * BLK)) {
        sleep_ms(25);
        arena_decay_tick(TM_DECAY_TICK_PAGES);
        ticks++;
    }
    assert_int_equal(resident(x, 8 * BLK), 0);
}

static void test_pages_used_in_the_window_are_not_due(void **state) {
    (void)state;
    /* quarters of 100 ms; the first sleep stays well inside the window,
     * or the pages, free and untouched for all of it, would be due at
     * once (see the next test) */
    set_decay(400);
    char *x = idle_region(X);
    sleep_ms(110);
    arena_decay_tick(TM_DECAY_TICK_PAGES); /* a quarter begins with the 512 pages free */
    /* used and freed again inside the quarter: the count of free resident
     * pages dipped, so the pages did not stay free through the window */
    void *p = big(X, 8 * BLK);
    assert_ptr_equal(p, x);
    big_free(p);
    sleep_ms(110);
    arena_decay_tick(TM_DECAY_TICK_PAGES); /* closes it: nothing is due */
    assert_int_equal(resident(x, 8 * BLK), 512);
    /* the four quarters after it have them free throughout */
    for (int i = 0; i < 10 && resident(x, 8 * BLK); i++) {
        sleep_ms(110);
        arena_decay_tick(TM_DECAY_TICK_PAGES);
    }
    assert_int_equal(resident(x, 8 * BLK), 0);
}

/* A pause with no tick at all (every thread idle, or every call a cache
 * hit): pages left free and untouched for a whole window through it are
 * due at the first tick after it, though the quarter the pause left open
 * began before they were freed. Until 2026-12-06 they waited four more
 * quarters (an outside tester's server: a 311 MiB spike kept 10 s into
 * light traffic after a 30 s pause). */
static void test_pages_free_through_a_pause_go_back_at_the_next_tick(void **state) {
    (void)state;
    set_decay(400);
    arena_decay_tick(TM_DECAY_TICK_PAGES);
    sleep_ms(300); /* the coarse clock's epoch measured (chunk.c, epoch_ns) */
    arena_decay_tick(TM_DECAY_TICK_PAGES);
    sleep_ms(110);
    arena_decay_tick(TM_DECAY_TICK_PAGES); /* a quarter begins ... */
    char *x = idle_region(X);              /* ... and the pages are freed in it */
    sleep_ms(600);                         /* no tick: a pause longer than the window */
    size_t before = released();
    arena_decay_tick(TM_DECAY_TICK_PAGES); /* the first tick after it */
    assert_int_equal(resident(x, 8 * BLK), 0);
    assert_true(released() - before >= PG(512));
}

/* A slow-path call that is not a GC tick (the thread's counter short of
 * TC_GC_EVERY) still ticks the decay once the coarse clock's epoch has
 * moved on: under light traffic the caches serve most calls, and a tick
 * every TC_GC_EVERY slow-path calls gave back a 200 MB spike at 3 MB/s
 * (an outside tester, 2026-12-07). Here every call is a refill of an
 * empty bin made with the GC counter at 0, so none of them is a GC tick;
 * on the old code the pages stayed. */
static void test_slow_path_calls_tick_the_decay(void **state) {
    (void)state;
    set_decay(50);
    char *x = idle_region(X);
    TM_API(free)(TM_API(malloc)(3000)); /* this thread's cache exists */
    tm_tcache_t *tc = tm_tls.own;
    assert_non_null(tc);
    unsigned cls = size_class_of(3000);
    for (int i = 0; i < 20 && resident(x, 8 * BLK) >= 64; i++) {
        sleep_ms(30);
        tm_lock(&tc->mu);
        tcache_drain_locked(tc); /* the bin empty: the malloc below refills */
        tc->gc_tick = 0;
        pthread_mutex_unlock(&tc->mu);
        void *p = tcache_malloc_slow(3000, cls);
        assert_non_null(p);
        TM_API(free)(p);
    }
    /* all but a few: the count the ticks saw low in the quarters while the
     * region was made (a few pages) stays, below the 64 pages (PURGE_MIN,
     * chunk.c) an arena must have free for a purge to look at it */
    assert_true(resident(x, 8 * BLK) < 64);
}

static void test_minus_one_keeps_them(void **state) {
    (void)state;
    set_decay(-1);
    char *x = idle_region(X);
    for (int i = 0; i < 3; i++) {
        sleep_ms(30);
        arena_decay_tick(TM_DECAY_TICK_PAGES);
    }
    assert_int_equal(resident(x, 8 * BLK), 512);
}

/* Arena a: N_IDLE blocks of BLK (in two chunks: one holds fewer than
 * 1024 pages), written, then freed; their addresses in x[]. */
#define N_IDLE 24
static void idle_blocks(tm_arena_t *a, char **x) {
    for (int i = 0; i < N_IDLE; i++) {
        x[i] = big(a, BLK);
        memset(x[i], 0x5a, BLK);
    }
    for (int i = 0; i < N_IDLE; i++) big_free(x[i]);
    arena_lock(a);
    run_stash_flush_locked(a);
    arena_unlock(a);
}

static size_t resident_blocks(char **x) {
    size_t r = 0;
    for (int i = 0; i < N_IDLE; i++) r += resident(x[i], BLK);
    return r;
}

/* A thread cache's tick gives back at most TM_DECAY_TICK_PAGES pages, all
 * arenas together, and the rest on the next ticks: 1536 due pages take
 * three. (Before, one tick gave back all 1536: a malloc that ticked as a
 * spike decayed took 10-48 ms.) The background thread's tick gives back
 * all that is due. With dirty_decay_ms 0 every tick closes a quarter and
 * what stayed free through it falls due. */
static void test_a_tick_gives_back_a_bounded_amount(void **state) {
    (void)state;
    char *x[N_IDLE];
    set_decay(0);
    arena_decay_tick(SIZE_MAX); /* nothing left due from before */
    idle_blocks(X, x);
    assert_int_equal(resident_blocks(x), 1536);
    int ticks = 0;
    for (size_t left = 1536; left && ticks < 20; ticks++) {
        size_t given = arena_decay_tick(TM_DECAY_TICK_PAGES), now = resident_blocks(x);
        assert_true(given <= TM_DECAY_TICK_PAGES);
        assert_true(left - now <= given); /* no other thread purges X */
        left = now;
    }
    assert_int_equal(resident_blocks(x), 0);
    assert_true(ticks >= 3);

    idle_blocks(X, x);
    assert_int_equal(resident_blocks(x), 1536);
    arena_decay_tick(SIZE_MAX); /* the quarter that held the blocks: 0 due */
    arena_decay_tick(SIZE_MAX); /* one that had them free throughout */
    assert_int_equal(resident_blocks(x), 0);
    set_decay(10000);
}

/* Free the one-page block p of arena X (as big_free, for blocks big() does
 * not track). */
static void page_free(void *p) {
    tm_chunk_t *c = chunk_of_entry(pagemap_lookup((uintptr_t)p));
    assert_non_null(c);
    arena_free_large(c, (uint32_t)(((uintptr_t)p - c->base) >> TM_PAGE_SHIFT), p);
}

/* A tick's loop of purges (each drops the arena's lock for its madvise
 * calls) starts no new one while a thread waits for the arena to settle:
 * fork's prepare handler, _heapchk and _heapwalk wait for every such
 * section, and with the background thread giving back thousands of runs
 * in a row they waited for all of them (a reviewer measured fork() at
 * 440-460 ms). 200 one-page runs are due; with a settler waiting, one
 * purge (64 runs at most) goes, the rest stays due for the next tick. */
static void test_a_waiting_settler_stops_the_loop(void **state) {
    (void)state;
    enum { N = 400 };
    static char *pg[N];
    set_decay(0);
    arena_decay_tick(SIZE_MAX); /* nothing left due from before */
    for (int i = 0; i < N; i++) {
        pg[i] = arena_alloc_large(X, PG(1), 0, false);
        assert_non_null(pg[i]);
        pg[i][0] = 1;
    }
    for (int i = 0; i < N; i += 2) page_free(pg[i]); /* 200 runs: live pages between */
    arena_decay_tick(SIZE_MAX); /* closes the quarter that held them: 0 due */
    size_t res = 0;
    for (int i = 0; i < N; i += 2) res += resident(pg[i], PG(1));
    assert_int_equal(res, N / 2);
    X->settlers = 1; /* as a thread in arena_settle_locked (none runs here) */
    arena_decay_tick(SIZE_MAX);
    X->settlers = 0;
    res = 0;
    for (int i = 0; i < N; i += 2) res += resident(pg[i], PG(1));
    assert_true(res > 0 && res < N / 2); /* one purge, not the whole loop */
    arena_decay_tick(SIZE_MAX); /* the rest */
    res = 0;
    for (int i = 0; i < N; i += 2) res += resident(pg[i], PG(1));
    assert_int_equal(res, 0);
    for (int i = 1; i < N; i += 2) page_free(pg[i]);
    set_decay(10000);
}

/* Through the public functions: a freed large block of 500 pages, then
 * mallocs and frees of a 64 KiB block; the thread cache's GC ticks once
 * every 64 large allocations (tcache.c, tcache_gc_tick_large). With dirty_decay_ms 0 each tick closes a
 * quarter and only that quarter counts, so the 500 pages go back on the
 * second tick after they were freed, but for the 16 the 64 KiB block takes
 * again and again. */
static void test_ticks_come_from_malloc(void **state) {
    (void)state;
    assert_int_equal(TM_API(trimalloc_option_set)("dirty_decay_ms", 0), 0);
    size_t before = released();
    char *blk = TM_API(malloc)(PG(500)); /* large: below huge_threshold */
    assert_non_null(blk);
    memset(blk, 1, PG(500));
    TM_API(free)(blk);
    for (int i = 0; i < 200 && released() - before < PG(400); i++) {
        char *p = TM_API(malloc)(PG(16));
        assert_non_null(p);
        p[0] = 1;
        TM_API(free)(p);
    }
    assert_true(released() - before >= PG(400));
    assert_int_equal(TM_API(trimalloc_option_set)("dirty_decay_ms", 10000), 0);
}

/* The background thread's sleep: an eighth of dirty_decay_ms, 10 ms to
 * 1 s, 1 s with the decay off; always a timespec nanosleep accepts. At the
 * default of 10 s it used to be {0, 10^9}, which nanosleep refuses at
 * once: the thread spun. */
static void test_background_interval(void **state) {
    (void)state;
    static const struct { long decay_ms, want_ms; } cases[] = {
        {-1, 1000}, {0, 10}, {79, 10}, {80, 10}, {88, 11}, {4000, 500},
        {7999, 999}, {8000, 1000}, {10000, 1000}, {3600000, 1000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct timespec ts = background_interval(cases[i].decay_ms);
        assert_true(ts.tv_nsec >= 0 && ts.tv_nsec < 1000000000L);
        assert_int_equal(ts.tv_sec * 1000 + ts.tv_nsec / 1000000, cases[i].want_ms);
        assert_int_equal(ts.tv_nsec % 1000000, 0);
    }
}

/* the background thread, running */
static unsigned bg_threads(void) { return tu_threads_named("trimalloc-bg"); }

/* No malloc or free starts the background thread: libc calls free with
 * its own locks held (pthread_join frees a dead thread's TLS block under
 * glibc's stack-cache lock), and pthread_create takes some of them; a GC
 * tick that started the thread there hung the process (an outside
 * tester). With the option on but no thread (as a setter leaves it when
 * the start fails), 64 large allocations -- a GC tick -- start none; the
 * setter does. */
static void test_no_thread_from_a_tick(void **state) {
    (void)state;
    assert_int_equal(bg_threads(), 0);
    __atomic_store_n(&tm_opt.background_thread, 1, __ATOMIC_SEQ_CST);
    for (int i = 0; i < 64 * 4; i++) { /* 4 ticks */
        char *p = TM_API(malloc)(PG(16));
        assert_non_null(p);
        TM_API(free)(p);
    }
    sleep_ms(50);
    assert_int_equal(bg_threads(), 0);
    assert_false(background_running()); /* so the ticks decay themselves */
}

/* background_thread:1 -- the setter starts the thread; from then on pages
 * decay while the program makes no allocator call at all; turned off, the
 * thread exits. (Runs last: the thread ticks every arena.) */
static void test_background_thread(void **state) {
    (void)state;
    assert_int_equal(bg_threads(), 0);
    assert_int_equal(TM_API(trimalloc_option_set)("dirty_decay_ms", 50), 0);
    assert_int_equal(TM_API(trimalloc_option_set)("background_thread", 1), 0);
    for (int i = 0; i < 100 && !bg_threads(); i++) sleep_ms(10);
    assert_int_equal(bg_threads(), 1);
    /* read first: the thread may give the region back before this thread
     * runs again (seen once in 40 runs with two busy loops competing) */
    size_t before = released();
    char *x = idle_region(X); /* arena functions only: no tick from here on */
    for (int i = 0; i < 60 && resident(x, 8 * BLK); i++) sleep_ms(50);
    assert_int_equal(resident(x, 8 * BLK), 0);
    /* the background thread counts the bytes once its madvise returns:
     * this thread can see the pages gone before that (strace of a failed
     * run under AddressSanitizer, about 1 in 15 there, 2026-12-06) */
    for (int i = 0; i < 100 && released() - before < PG(512); i++) sleep_ms(10);
    assert_true(released() - before >= PG(512));
    /* turned off, the GC ticks decay again at once, not once the thread
     * has seen it (a reviewer: they left it to the exiting thread) */
    assert_true(background_running());
    assert_int_equal(TM_API(trimalloc_option_set)("background_thread", 0), 0);
    assert_false(background_running());
    for (int i = 0; i < 300 && bg_threads(); i++) sleep_ms(10);
    assert_int_equal(bg_threads(), 0);
    assert_int_equal(TM_API(trimalloc_option_set)("dirty_decay_ms", 10000), 0);
}

/* A fork child has no background thread: the option reads 0 there, and
 * setting it to 1 starts one of the child's own. (Until 2026-12-07 the
 * option read 1 in the child, and setting it returned 0 and started
 * nothing; an outside tester.) The parent runs one, so ThreadSanitizer,
 * which refuses a thread started after a multi-threaded fork, checks only
 * the first half. */
static int child_background(void) {
    long v = -1;
    if (TM_API(trimalloc_option_get)("background_thread", &v) != 0 || v != 0) return 10;
    if (bg_threads() != 0 || background_running()) return 11;
    if (TU_TSAN) return 0;
    if (TM_API(trimalloc_option_set)("background_thread", 1) != 0) return 12;
    for (int i = 0; i < 100 && !bg_threads(); i++) sleep_ms(10);
    if (bg_threads() != 1 || !background_running()) return 13;
    if (TM_API(trimalloc_option_get)("background_thread", &v) != 0 || v != 1) return 14;
    if (TM_API(trimalloc_option_set)("background_thread", 0) != 0) return 15;
    return 0;
}

static void test_fork_child_background(void **state) {
    (void)state;
    assert_int_equal(TM_API(trimalloc_option_set)("background_thread", 1), 0);
    for (int i = 0; i < 100 && !bg_threads(); i++) sleep_ms(10);
    assert_int_equal(bg_threads(), 1);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) _exit(child_background());
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    long v = 0;
    assert_int_equal(TM_API(trimalloc_option_get)("background_thread", &v), 0);
    assert_int_equal(v, 1); /* the parent's stays */
    assert_int_equal(TM_API(trimalloc_option_set)("background_thread", 0), 0);
    for (int i = 0; i < 300 && bg_threads(); i++) sleep_ms(10);
    assert_int_equal(bg_threads(), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_pages_freed_within_the_window_stay, teardown),
        cmocka_unit_test_teardown(test_idle_pages_go_back_after_the_window, teardown),
        cmocka_unit_test_teardown(test_idle_pages_go_back_a_quarter_after_the_window, teardown),
        cmocka_unit_test_teardown(test_pages_used_in_the_window_are_not_due, teardown),
        cmocka_unit_test_teardown(test_pages_free_through_a_pause_go_back_at_the_next_tick, teardown),
        cmocka_unit_test_teardown(test_slow_path_calls_tick_the_decay, teardown),
        cmocka_unit_test_teardown(test_minus_one_keeps_them, teardown),
        cmocka_unit_test_teardown(test_a_tick_gives_back_a_bounded_amount, teardown),
        cmocka_unit_test_teardown(test_a_waiting_settler_stops_the_loop, teardown),
        cmocka_unit_test(test_ticks_come_from_malloc),
        cmocka_unit_test(test_background_interval),
        cmocka_unit_test_teardown(test_no_thread_from_a_tick, teardown),
        cmocka_unit_test_teardown(test_background_thread, teardown),
        cmocka_unit_test_teardown(test_fork_child_background, teardown),
    };
    return cmocka_run_group_tests_name("unit_decay", tests, setup, group_teardown);
}
