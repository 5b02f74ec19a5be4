/*
 * growth_purge.c (unit) -- the growth purge (chunk.c): an arena about to
 * fault in fresh pages gives back idle resident free pages, its own and
 * those that have stayed idle in other arenas -- but not pages another
 * arena freed just now, nor those of an arena that is itself growing, nor
 * an arena's idle pages that are fewer than its live ones.
 *
 * Two arenas, X (holds the idle pages) and Y (grows), driven directly
 * through arena_alloc_large; mincore() says which of X's pages are still
 * resident. "Idle" is measured in epochs of a coarse clock of 4 to 17 ms,
 * so the tests sleep 100 ms where pages must have stayed idle; where they
 * must not have, a preempted test could see an epoch pass, so those try up
 * to 5 times and need one success (without the rule, none succeeds).
 * X keeps a page of its chunk in use (keep_chunk): an empty chunk would
 * move to Y whole instead (chunk_adopt, tests/api/chunk_adopt.c).
 *
 * os_purge_probe (os.c) reads the statistics at each purge: a growth
 * purge makes its calls with the arena's lock dropped and the runs it
 * gives back held, and they must not count those as blocks.
 */
#include "test_cmocka.h"
#include "internal.h"
#include "large_blocks.h"

/* While probe_arena is set: every purge reads that arena's statistics
 * first (the purge has dropped its lock), keeping the largest allocated. */
static tm_arena_t *probe_arena;
static size_t probe_allocated, probe_dirty, probe_resident;
static unsigned probe_calls;

static void probe(void *p, size_t size) {
    (void)p;
    (void)size;
    trimalloc_arena_stats_t st;
    if (probe_arena && TM_API(trimalloc_stats_arena)(probe_arena->index, &st) == 0) {
        if (st.allocated > probe_allocated) probe_allocated = st.allocated;
        if (st.dirty > probe_dirty) probe_dirty = st.dirty;
        if (st.resident > probe_resident) probe_resident = st.resident;
        probe_calls++;
    }
}

static tm_arena_t *X, *Y;

static int setup(void **state) {
    (void)state;
    tm_init();
    if (tm_narenas < 2) return 0;
    X = arena_get(tm_narenas - 1);
    Y = arena_get(tm_narenas - 2);
    return X && Y ? 0 : -1;
}

/* A page of X's in use at the start of its idle region's chunk, so that
 * the chunk is not empty. */
static void keep_chunk(char *x) {
    assert_ptr_equal(big(X, PG(1)), x);
}

/* Free what the test holds; empty chunks are unmapped. */
static int teardown(void **state) {
    (void)state;
    big_free_all();
    if (tm_narenas < 2) return 0;
    arena_purge(X, true, NULL);
    arena_purge(Y, true, NULL);
    return X->nchunks == 0 && Y->nchunks == 0 ? 0 : -1;
}

static void test_idle_pages_of_another_arena_go_back(void **state) {
    (void)state;
    if (tm_narenas < 2) skip();
    char *x = idle_region(X);
    keep_chunk(x);
    sleep_ms(100); /* X's pages stay free through whole epochs */
    size_t before = released();
    for (int i = 0; i < 4; i++) {
        big(Y, BLK); /* 64 fresh pages: 64 of X's go back */
        assert_int_equal(resident(x, 8 * BLK), 512 - 64 * (size_t)(i + 1));
    }
    /* from the end of X's free run: its first pages, which the next block
     * carved there uses first, are the ones kept */
    assert_int_equal(resident(x, PG(256)), 256);
    assert_true(released() - before >= PG(4 * 64));
}

static void test_pages_freed_just_now_stay(void **state) {
    if (tm_narenas < 2) skip();
    int kept = 0;
    for (int attempt = 0; attempt < 5 && !kept; attempt++) {
        assert_int_equal(teardown(state), 0);
        idle_region(X);
        sleep_ms(100); /* X has faulted in no fresh page for a while ... */
        char *x = idle_region(X); /* ... and uses and frees its pages again */
        keep_chunk(x);
        big(Y, BLK);              /* fresh pages, right after */
        kept = resident(x, 8 * BLK) == 512;
    }
    assert_true(kept);
}

static void test_growing_arena_is_not_purged(void **state) {
    (void)state;
    if (tm_narenas < 2) skip();
    /* X: 300 idle pages, 600 live ones (so X's own purge leaves its idle
     * pages alone for a small growth), and 124 fresh pages at the end */
    char *idle = big(X, PG(300));
    void *live = big(X, PG(600));
    memset(idle, 1, PG(300));
    memset(live, 1, PG(600));
    big_free(idle);
    sleep_ms(100);
    int kept = 0;
    for (int attempt = 0; attempt < 5 && !kept; attempt++) {
        big(X, PG(20)); /* X faults in fresh pages ... */
        big(Y, BLK);    /* ... and so does Y, right after */
        kept = resident(idle, PG(300)) == 300;
    }
    assert_true(kept);
    /* X quiet for a while: its 300 idle pages, fewer than its live ones,
     * are a working arena's holes, which Y's growth leaves alone (until
     * 2026-12-06 it took them, and a thread that reused them faulted
     * them in again) */
    sleep_ms(100);
    big(Y, BLK);
    assert_int_equal(resident(idle, PG(300)), 300);
    /* its live pages freed too, and free for a while: Y's growth takes
     * idle pages of X's (the end of the run they make together) */
    big_free(live);
    sleep_ms(100);
    big(Y, BLK);
    assert_true(resident(idle, PG(900)) <= 900 - 64);
}

/* Arena a: 512 idle pages (written, then freed), one live page after
 * them (the teardown frees it), and 511 fresh ones; returns the idle ones. */
static char *idle_in(tm_arena_t *a) {
    char *idle = big(a, PG(512));
    (void)big(a, PG(1));
    memset(idle, 1, PG(512));
    big_free(idle);
    return idle;
}

static char *idle_before_live(void) { return idle_in(X); }

static void test_own_idle_pages_go_back(void **state) {
    (void)state;
    if (tm_narenas < 2) skip();
    char *idle = idle_before_live();
    /* a block that lands on 400 fresh pages: X gives its idle pages back
     * first, all of them, whatever their age */
    void *p = big(X, PG(400));
    assert_true((char *)p > idle + PG(512)); /* the best fit: the fresh run */
    assert_int_equal(resident(idle, PG(512)), 0);
}

/* The runs a purge holds while it madvises are free pages on their way
 * back, not blocks: until 2026-12-06 `allocated` counted them (an outside
 * tester saw it up to 200 MB high while the background thread's decay
 * ran, in a program that held 6 KB); and `dirty` and `resident` count only
 * their pages that may be resident, not those of the fresh run the
 * allocation holds meanwhile (an outside reviewer: `resident` read as
 * `mapped`). */
static void test_held_runs_are_not_allocated(void **state) {
    (void)state;
    if (tm_narenas < 2) skip();
    char *idle = idle_before_live();
    trimalloc_arena_stats_t st;
    assert_int_equal(TM_API(trimalloc_stats_arena)(X->index, &st), 0);
    size_t before = st.allocated, dirty_before = st.dirty, resident_before = st.resident;
    assert_true(before >= PG(1) && before < PG(512));
    assert_true(dirty_before >= PG(512));
    probe_allocated = probe_dirty = probe_resident = 0;
    probe_calls = 0;
    probe_arena = X;
    os_purge_probe = probe;
    big(X, PG(400)); /* fresh pages: X's 512 idle ones go back first */
    os_purge_probe = NULL;
    probe_arena = NULL;
    assert_true(probe_calls > 0);
    assert_int_equal(probe_allocated, before);
    assert_true(probe_dirty <= dirty_before);
    assert_true(probe_resident <= resident_before);
    assert_int_equal(resident(idle, PG(512)), 0);
    assert_int_equal(TM_API(trimalloc_stats_arena)(X->index, &st), 0);
    assert_int_equal(st.allocated, before + PG(400));
}

/* One budget for the process: what X's growth purge spends, Y's has no
 * more (until 2026-12-06 each arena had its own, and 64 arenas purged 64
 * times as much: an outside tester's churn with narenas:256 took 388 000
 * page faults against 66 000 with 4 arenas). The budget earns 256 pages a
 * second, so a slow run may see a little come back in between. */
static void test_one_budget_for_all_arenas(void **state) {
    (void)state;
    if (tm_narenas < 2) skip();
    char *x = idle_in(X);
    size_t c0 = chunk_purge_credit();
    assert_true(c0 >= 1024 + 64); /* enough for both purges */
    big(X, PG(400)); /* fresh pages: X's 512 idle ones go back first */
    assert_int_equal(resident(x, PG(512)), 0);
    size_t c1 = chunk_purge_credit();
    assert_true(c1 + 512 <= c0 + 64);
    /* Y's idle pages only now (freed just now, no other arena's growth
     * takes them: they have not stayed free through an epoch) */
    char *y = idle_in(Y);
    c1 = chunk_purge_credit();
    big(Y, PG(400)); /* the same in Y, from the same budget */
    assert_int_equal(resident(y, PG(512)), 0);
    size_t c2 = chunk_purge_credit();
    assert_true(c2 + 512 <= c1 + 64);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_idle_pages_of_another_arena_go_back, teardown),
        cmocka_unit_test_teardown(test_pages_freed_just_now_stay, teardown),
        cmocka_unit_test_teardown(test_growing_arena_is_not_purged, teardown),
        cmocka_unit_test_teardown(test_own_idle_pages_go_back, teardown),
        cmocka_unit_test_teardown(test_held_runs_are_not_allocated, teardown),
        cmocka_unit_test_teardown(test_one_budget_for_all_arenas, teardown),
    };
    return cmocka_run_group_tests_name("unit_growth_purge", tests, setup, NULL);
}
