/*
 * tcache_slots.c (unit) -- where a thread cache keeps its bins (tcache.c):
 * a bin starts in its start slots, TC_START_SLOTS blocks packed with every
 * other class's in the first 2 KiB, so a thread that holds a few blocks of
 * each class touches one page of its cache's slots; it moves to the slots
 * for its full capacity as soon as the thread takes more (a second refill
 * with no free in between, or an overflow after a refill); a live thread
 * keeps those slots' pages through a _heapmin (its next move would fault),
 * and so do the caches of the first TC_RECYCLED_WARM threads to exit,
 * for the threads that take them next; the others give them back.
 *
 * Each scenario runs on a fresh thread: it starts with an empty cache.
 */
#include "test_cmocka.h"
#include "internal.h"

#include <pthread.h>
#include <sys/mman.h>

static const size_t sizes[] = {16, 48, 64, 100, 200, 300, 500, 700, 1000,
                               1500, 2500, 3500, 5000, 7000, 8192};

static unsigned cls_of(size_t size) { return size_class_of(size); }

static bool page_resident(const void *p) {
    unsigned char v = 0;
    uintptr_t pg = (uintptr_t)p & ~(uintptr_t)TM_PAGE_MASK;
    assert_int_equal(mincore((void *)pg, TM_PAGE, &v), 0);
    return v & 1;
}

/* ---- a few blocks of each class: the start slots only ------------------------ */

static void *few_blocks(void *arg) {
    const char **why = arg;
    void *p[TU_ARRAY_LEN(sizes)][3];
    for (size_t k = 0; k < TU_ARRAY_LEN(sizes); k++)
        for (int i = 0; i < 3; i++) {
            p[k][i] = TM_API(malloc)(sizes[k]);
            if (!p[k][i]) *why = "malloc failed";
        }
    for (size_t k = 0; k < TU_ARRAY_LEN(sizes); k++)
        for (int i = 0; i < 3; i++) TM_API(free)(p[k][i]);
    tm_tcache_t *tc = tm_tls.own;
    char *lo = tc->slots_mem, *hi = lo + TM_NCLASSES * TC_START_SLOTS * sizeof(void *);
    for (size_t k = 0; k < TU_ARRAY_LEN(sizes); k++) {
        tm_tc_bin_t *b = &tc->bins[cls_of(sizes[k])];
        if (tc_bin_cap(b) > TC_START_SLOTS) { static char m[96]; snprintf(m, sizeof m, "the %zu-byte bin, holding 3 blocks, is at %u blocks", sizes[k], tc_bin_cap(b)); *why = m; }
        else if ((char *)b->base < lo || (char *)b->limit > hi) *why = "a bin is outside the start slots";
    }
    return NULL;
}

static void test_few_blocks_stay_in_the_start_slots(void **state) {
    (void)state;
    const char *why = NULL;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, few_blocks, &why), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    if (why) fail_msg("%s", why);
}

/* ---- a burst: the bin moves to its capacity ---------------------------------- */

enum { BURST = 100 };

typedef struct {
    size_t size;
    uint32_t cap_after_mallocs, cap_after_frees;
    const char *why;
} burst_t;

static void *burst(void *arg) {
    burst_t *r = arg;
    void *p[BURST];
    for (int i = 0; i < BURST; i++)
        if (!(p[i] = TM_API(malloc)(r->size))) r->why = "malloc failed";
    tm_tcache_t *tc = tm_tls.own;
    tm_tc_bin_t *b = &tc->bins[cls_of(r->size)];
    r->cap_after_mallocs = tc_bin_cap(b);
    for (int i = 0; i < BURST; i++) TM_API(free)(p[i]);
    r->cap_after_frees = tc_bin_cap(b);
    return NULL;
}

static void test_a_burst_moves_the_bin_to_its_capacity(void **state) {
    (void)state;
    const size_t test_sizes[] = {64, 1000, 3500};
    for (size_t k = 0; k < TU_ARRAY_LEN(test_sizes); k++) {
        burst_t r = {.size = test_sizes[k]};
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, burst, &r), 0);
        assert_int_equal(pthread_join(t, NULL), 0);
        if (r.why) fail_msg("%s", r.why);
        uint32_t cap = tm_classes[cls_of(r.size)].tc_cap; /* tcache_scale 100 */
        if (r.cap_after_mallocs < cap)
            fail_msg("%zu-byte bin at %u blocks after %d mallocs (its capacity: %u): it "
                     "stayed small, every few mallocs a refill",
                     r.size, r.cap_after_mallocs, BURST, cap);
        if (r.cap_after_frees < cap)
            fail_msg("%zu-byte bin shrank to %u after the frees", r.size, r.cap_after_frees);
    }
}

/* ---- a consumer: it frees blocks another thread allocated ----------------- */

typedef struct {
    void **blocks;
    size_t size;
    uint32_t cap_after_frees;
} consumer_t;

static void *consume(void *arg) {
    consumer_t *r = arg;
    for (int i = 0; i < BURST; i++) TM_API(free)(r->blocks[i]);
    r->cap_after_frees = tc_bin_cap(&tm_tls.own->bins[cls_of(r->size)]);
    return NULL;
}

/* A thread that only frees never runs a bin dry, so the malloc side's rule
 * never moves its bin; left in its start slots it would hand every few
 * blocks back to the transfer cache or the arena under a lock (mimalloc-
 * bench's xmalloc-test, 2 producers and 2 consumers of 64 B blocks, ran
 * 2.3x slower than before the start slots). */
static void test_a_consumer_moves_the_bin_to_its_capacity(void **state) {
    (void)state;
    const size_t test_sizes[] = {64, 1000, 3500};
    for (size_t k = 0; k < TU_ARRAY_LEN(test_sizes); k++) {
        void *blocks[BURST];
        for (int i = 0; i < BURST; i++) assert_non_null(blocks[i] = TM_API(malloc)(test_sizes[k]));
        consumer_t r = {.blocks = blocks, .size = test_sizes[k]};
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, consume, &r), 0);
        assert_int_equal(pthread_join(t, NULL), 0);
        uint32_t cap = tm_classes[cls_of(r.size)].tc_cap; /* tcache_scale 100 */
        if (r.cap_after_frees < cap)
            fail_msg("%zu-byte bin of a thread that freed %d blocks is at %u (its capacity: %u): "
                     "every few frees a flush",
                     r.size, BURST, r.cap_after_frees, cap);
    }
}

/* ---- the capacity slots' pages: kept through a trim, and by a few exited caches - */

typedef struct {
    tm_tcache_t *tc;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int phase; /* 1: the worker has made its bursts; 2: it may exit; 3: bursts again */
} worker_t;

static void *bursts_then_wait(void *arg) {
    worker_t *w = arg;
    void *p[BURST];
    for (size_t k = 0; k < TU_ARRAY_LEN(sizes); k++) {
        for (int i = 0; i < BURST; i++) p[i] = TM_API(malloc)(sizes[k]);
        for (int i = 0; i < BURST; i++) TM_API(free)(p[i]);
    }
    /* bursts bigger than the 1000 B bin's capacity (64): it swings from
     * empty to full and grows into its grown slots */
    static _Thread_local void *big[200];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 200; i++) big[i] = TM_API(malloc)(1000);
        for (int i = 0; i < 200; i++) TM_API(free)(big[i]);
    }
    pthread_mutex_lock(&w->mu);
    w->tc = tm_tls.own;
    w->phase = 1;
    pthread_cond_broadcast(&w->cv);
    for (;;) {
        while (w->phase == 1) pthread_cond_wait(&w->cv, &w->mu);
        if (w->phase == 2) break;
        /* 3: the 1000 B bursts again, then back to 1 */
        pthread_mutex_unlock(&w->mu);
        for (int round = 0; round < 3; round++) {
            for (int i = 0; i < 200; i++) big[i] = TM_API(malloc)(1000);
            for (int i = 0; i < 200; i++) TM_API(free)(big[i]);
        }
        pthread_mutex_lock(&w->mu);
        w->phase = 1;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Resident pages of tc's slots at the bins' capacities (whole pages of
 * them only: the start slots and the grown slots share a page with them). */
static unsigned capacity_pages_resident(const tm_tcache_t *tc) {
    size_t first, grown;
    tcache_slot_regions(&first, &grown);
    uintptr_t lo = ((uintptr_t)tc->slots_mem + first * sizeof(void *) + TM_PAGE_MASK) & ~(uintptr_t)TM_PAGE_MASK;
    uintptr_t hi = ((uintptr_t)tc->slots_mem + grown * sizeof(void *)) & ~(uintptr_t)TM_PAGE_MASK;
    assert_true(hi > lo); /* at the default scale they span pages */
    unsigned n = 0;
    for (uintptr_t pg = lo; pg < hi; pg += TM_PAGE) n += page_resident((void *)pg);
    return n;
}

/* Resident pages of tc's grown-bin slots (whole pages of them only). */
static unsigned grown_pages_resident(const tm_tcache_t *tc) {
    size_t first, grown;
    tcache_slot_regions(&first, &grown);
    uintptr_t lo = ((uintptr_t)tc->slots_mem + grown * sizeof(void *) + TM_PAGE_MASK) & ~(uintptr_t)TM_PAGE_MASK;
    uintptr_t hi = ((uintptr_t)tc->slots_mem + tcache_slots_max() * sizeof(void *)) & ~(uintptr_t)TM_PAGE_MASK;
    unsigned n = 0;
    for (uintptr_t pg = lo; pg < hi; pg += TM_PAGE) n += page_resident((void *)pg);
    return n;
}

static void test_a_few_exited_caches_keep_their_capacity_slots(void **state) {
    (void)state;
    enum { N = TC_RECYCLED_WARM + 3 };
    static worker_t w[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        w[i] = (worker_t){.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
        assert_int_equal(pthread_create(&t[i], NULL, bursts_then_wait, &w[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_mutex_lock(&w[i].mu);
        while (w[i].phase != 1) pthread_cond_wait(&w[i].cv, &w[i].mu);
        pthread_mutex_unlock(&w[i].mu);
    }
    /* all alive at once: N caches, which took whatever earlier tests' exited
     * threads left for reuse */
    unsigned live = capacity_pages_resident(w[0].tc);
    if (live == 0) fail_msg("the bursts touched no page of the capacity slots: test is void");
    /* A _heapmin drains a live worker's cache but keeps those pages. */
    assert_int_equal(TM_API(_heapmin)(), 0);
    unsigned after_trim = capacity_pages_resident(w[0].tc);
    if (after_trim < live)
        fail_msg("_heapmin gave back %u of the %u capacity-slot pages of a live thread: its "
                 "next bin to grow faults a page in inside malloc", live - after_trim, live);
    /* the bursts grew a bin: its grown slots' pages are in memory (a
     * _heapmin gives those back, so the workers' 1000 B bursts again) */
    for (int i = 0; i < N; i++) {
        pthread_mutex_lock(&w[i].mu);
        w[i].phase = 3;
        pthread_cond_broadcast(&w[i].cv);
        while (w[i].phase != 1) pthread_cond_wait(&w[i].cv, &w[i].mu);
        pthread_mutex_unlock(&w[i].mu);
        if (grown_pages_resident(w[i].tc) == 0)
            fail_msg("worker %d's bursts touched no page of its grown slots: test is void", i + 1);
    }
    /* one exit at a time: the first TC_RECYCLED_WARM keep their capacity
     * and grown slots' pages (until 2026-12-07 the grown ones went back at
     * every exit, and a program that runs short threads one after another
     * faulted them in at each thread) */
    unsigned kept[N], kept_grown[N];
    for (int i = 0; i < N; i++) {
        pthread_mutex_lock(&w[i].mu);
        w[i].phase = 2;
        pthread_cond_broadcast(&w[i].cv);
        pthread_mutex_unlock(&w[i].mu);
        assert_int_equal(pthread_join(t[i], NULL), 0);
        kept[i] = capacity_pages_resident(w[i].tc);
        kept_grown[i] = grown_pages_resident(w[i].tc);
    }
    for (int i = 0; i < N; i++) {
        if (i < (int)TC_RECYCLED_WARM && kept[i] == 0)
            fail_msg("exited thread %d of %d gave back its capacity slots: the next thread "
                     "faults them in again", i + 1, N);
        if (i < (int)TC_RECYCLED_WARM && kept_grown[i] == 0)
            fail_msg("exited thread %d of %d gave back its grown slots: the next thread "
                     "faults them in again", i + 1, N);
        if (i >= (int)TC_RECYCLED_WARM && (kept[i] != 0 || kept_grown[i] != 0))
            fail_msg("exited thread %d of %d kept %u capacity-slot and %u grown-slot pages (at "
                     "most %u caches keep theirs)", i + 1, N, kept[i], kept_grown[i], TC_RECYCLED_WARM);
    }
    /* the next thread takes a warm cache, not the cold one that exited
     * last (a reviewer found the warm ones buried under cold ones: every
     * later short thread then faulted its slots in and gave them back),
     * and keeps its slots at its exit */
    worker_t next = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    pthread_t tn;
    assert_int_equal(pthread_create(&tn, NULL, bursts_then_wait, &next), 0);
    pthread_mutex_lock(&next.mu);
    while (next.phase != 1) pthread_cond_wait(&next.cv, &next.mu);
    next.phase = 2;
    pthread_cond_broadcast(&next.cv);
    pthread_mutex_unlock(&next.mu);
    assert_int_equal(pthread_join(tn, NULL), 0);
    bool warm = false;
    for (int i = 0; i < (int)TC_RECYCLED_WARM; i++) warm |= next.tc == w[i].tc;
    if (!warm) fail_msg("the next thread took a cache that had given its slots back");
    if (capacity_pages_resident(next.tc) == 0)
        fail_msg("the next thread's cache gave its capacity slots back at its exit");
}

/* ---- growth scales down with tcache_scale ------------------------------------------
 * A thread that allocates and frees bursts of 64 blocks of 4 KiB grows that
 * bin. At tcache_scale:25 its capacity is 8 blocks, and it may grow to 4
 * times that and to a quarter of the 256 KiB growth bound: 16 blocks. Until
 * 2026-12-05 the bound in bytes did not scale, and the bin reached 32
 * blocks, the default capacity (found by a tester: 1.09 MiB of cache per
 * thread at tcache_scale:25, where a quarter of 2.5 was expected). Runs in
 * a child started with TRIMALLOC_CONF (tcache_scale is start-up only). */
enum { GROW_SIZE = 4096, GROW_BURST = 64, GROW_LIMIT = 16 };

static void *grow_bursts(void *arg) {
    uint32_t *cap = arg;
    void *p[GROW_BURST];
    for (int round = 0; round < 30; round++) {
        for (int i = 0; i < GROW_BURST; i++)
            if (!(p[i] = TM_API(malloc)(GROW_SIZE))) return (void *)1;
        for (int i = 0; i < GROW_BURST; i++) TM_API(free)(p[i]);
    }
    *cap = tc_bin_cap(&tm_tls.own->bins[cls_of(GROW_SIZE)]);
    return NULL;
}

static int child(const char *conf) {
    uint32_t cap = 0;
    pthread_t t;
    void *r = NULL;
    if (pthread_create(&t, NULL, grow_bursts, &cap) || pthread_join(t, &r) || r) return 10;
    if (strcmp(conf, "tcache_scale:25") == 0 && cap > GROW_LIMIT) {
        fprintf(stderr, "the %d-byte bin grew to %u blocks at %s (at most %d)\n", GROW_SIZE, cap,
                conf, GROW_LIMIT);
        return 1;
    }
    if (strcmp(conf, "tcache_scale:100") == 0 && cap <= 32) {
        fprintf(stderr, "the %d-byte bin did not grow past its capacity of 32 at %s (%u)\n",
                GROW_SIZE, conf, cap);
        return 2;
    }
    return 0;
}

static void test_growth_scales_with_tcache_scale(void **state) {
    (void)state;
    static const char *confs[] = {"tcache_scale:25", "tcache_scale:100"};
    for (size_t k = 0; k < TU_ARRAY_LEN(confs); k++) {
        int rc = tu_run_self_child(confs[k]);
        if (rc != 0) fail_msg("TRIMALLOC_CONF=%s: child exit status %d", confs[k], rc);
    }
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "child") == 0) return child(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_few_blocks_stay_in_the_start_slots),
        cmocka_unit_test(test_a_burst_moves_the_bin_to_its_capacity),
        cmocka_unit_test(test_a_consumer_moves_the_bin_to_its_capacity),
        cmocka_unit_test(test_a_few_exited_caches_keep_their_capacity_slots),
        cmocka_unit_test(test_growth_scales_with_tcache_scale),
    };
    return cmocka_run_group_tests_name("unit_tcache_slots (" TU_FLAVOUR ")", tests, NULL, NULL);
}
