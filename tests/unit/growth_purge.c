/*
 * growth_purge.c (unit) -- the growth purge (chunk.c): an arena about to
 * fault in fresh pages gives back idle resident free pages, its own and
 * those that have stayed idle in other arenas -- but not pages another
 * arena freed just now, nor those of an arena that is itself growing.
 *
 * Two arenas, X (holds the idle pages) and Y (grows), driven directly
 * through arena_alloc_large; mincore() says which of X's pages are still
 * resident. "Idle" is measured in epochs of a coarse clock of 4 to 17 ms,
 * so the tests sleep 100 ms where pages must have stayed idle; where they
 * must not have, a preempted test could see an epoch pass, so those try up
 * to 5 times and need one success (without the rule, none succeeds).
 */
#include "test_cmocka.h"
#include "internal.h"

#include <sys/mman.h>
#include <time.h>

#define BLK ((size_t)256 * 1024) /* 64 pages: a large block */
#define PG(n) ((size_t)(n) << TM_PAGE_SHIFT)

static tm_arena_t *X, *Y;

static int setup(void **state) {
    (void)state;
    tm_init();
    if (tm_narenas < 2) return 0;
    X = arena_get(tm_narenas - 1);
    Y = arena_get(tm_narenas - 2);
    return X && Y ? 0 : -1;
}

/* Every block a test holds, so that the teardown can free them after a
 * failure and the next test starts from arenas with no chunk. */
static void *held[64];

static void *big(tm_arena_t *a, size_t size) {
    void *p = arena_alloc_large(a, size, 0, false);
    assert_non_null(p);
    for (unsigned i = 0; i < TU_ARRAY_LEN(held); i++)
        if (!held[i]) {
            held[i] = p;
            return p;
        }
    fail_msg("more blocks than held[] has room for");
    return NULL;
}

static void big_free(void *p) {
    for (unsigned i = 0; i < TU_ARRAY_LEN(held); i++)
        if (held[i] == p) held[i] = NULL;
    tm_chunk_t *c = chunk_of_entry(pagemap_lookup((uintptr_t)p));
    assert_non_null(c);
    arena_free_large(c, (uint32_t)(((uintptr_t)p - c->base) >> TM_PAGE_SHIFT), p);
}

/* Free what the test holds; empty chunks are unmapped. */
static int teardown(void **state) {
    (void)state;
    for (unsigned i = 0; i < TU_ARRAY_LEN(held); i++)
        if (held[i]) big_free(held[i]);
    if (tm_narenas < 2) return 0;
    arena_purge(X, true, NULL);
    arena_purge(Y, true, NULL);
    return X->nchunks == 0 && Y->nchunks == 0 ? 0 : -1;
}

/* Pages of [p, p + len) the kernel holds. */
static size_t resident(void *p, size_t len) {
    unsigned char vec[1024];
    size_t n = len >> TM_PAGE_SHIFT, r = 0;
    assert_true(n <= sizeof vec);
    assert_int_equal(mincore(p, len, vec), 0);
    for (size_t i = 0; i < n; i++) r += vec[i] & 1;
    return r;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static size_t released(void) {
    return __atomic_load_n(&tm_gstats.released_bytes, __ATOMIC_RELAXED);
}

/* X: 8 blocks from its chunk's first page, written, then freed: one free
 * run of the whole chunk whose first 512 pages are resident. */
static char *x_idle_region(void) {
    void *p[8];
    for (int i = 0; i < 8; i++) {
        p[i] = big(X, BLK);
        assert_ptr_equal(p[i], (char *)p[0] + i * BLK); /* carved in order */
        memset(p[i], 0x5a, BLK);
    }
    for (int i = 0; i < 8; i++) big_free(p[i]);
    assert_int_equal(resident(p[0], 8 * BLK), 512);
    return p[0];
}

static void test_idle_pages_of_another_arena_go_back(void **state) {
    (void)state;
    if (tm_narenas < 2) skip();
    char *x = x_idle_region();
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
        x_idle_region();
        sleep_ms(100); /* X has faulted in no fresh page for a while ... */
        char *x = x_idle_region(); /* ... and uses and frees its pages again */
        big(Y, BLK);               /* fresh pages, right after */
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
    /* once X has been quiet for a while, Y's growth takes its idle pages */
    sleep_ms(100);
    big(Y, BLK);
    assert_true(resident(idle, PG(300)) <= 300 - 64);
}

static void test_own_idle_pages_go_back(void **state) {
    (void)state;
    if (tm_narenas < 2) skip();
    /* X: 512 idle pages, one live page, 511 fresh ones */
    char *idle = big(X, PG(512));
    void *live = big(X, PG(1));
    memset(idle, 1, PG(512));
    big_free(idle);
    /* a block that lands on 400 fresh pages: X gives its idle pages back
     * first, all of them, whatever their age */
    void *p = big(X, PG(400));
    assert_true((char *)p > idle + PG(512)); /* the best fit: the fresh run */
    assert_int_equal(resident(idle, PG(512)), 0);
    (void)live;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_idle_pages_of_another_arena_go_back, teardown),
        cmocka_unit_test_teardown(test_pages_freed_just_now_stay, teardown),
        cmocka_unit_test_teardown(test_growing_arena_is_not_purged, teardown),
        cmocka_unit_test_teardown(test_own_idle_pages_go_back, teardown),
    };
    return cmocka_run_group_tests_name("unit_growth_purge", tests, setup, NULL);
}
