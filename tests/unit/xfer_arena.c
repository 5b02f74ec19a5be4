/*
 * xfer_arena.c (unit) -- transfer caches belong to arenas (tcache.c): a
 * thread cache that overflows parks the blocks with the arena that owns
 * them, and a thread that runs dry takes a batch from its own arena's
 * transfer cache, not from a cache other threads are cycling. Only a
 * neighbour's that is at least a quarter full is shared.
 *
 * Two threads, each bound to its own arena: A allocates and frees a burst
 * of 64-byte blocks and stays alive; then B allocates blocks of the same
 * class. With one transfer cache per class for the whole process (before
 * 2026-12-04), B's first refills took A's parked blocks.
 */
#include "test_cmocka.h"
#include "internal.h"

#include <pthread.h>
#include <semaphore.h>

enum { SIZE = 64, B_BLOCKS = 200, MAX_BLOCKS = 4000 };

typedef struct scenario {
    unsigned a_blocks;          /* A's burst */
    sem_t parked, done;
    unsigned arena_a, arena_b;
    unsigned b_from_a;          /* B's blocks owned by A's arena */
    uint32_t a_parked, a_parked_after; /* in A's transfer cache after A's frees, B's mallocs */
    const char *why;
} scenario_t;

static unsigned owner(const void *p) {
    tm_chunk_t *c = chunk_of_entry(pagemap_lookup((uintptr_t)p));
    return c ? c->arena->index : ~0u;
}

static void *thread_a(void *arg) {
    scenario_t *s = arg;
    static void *p[MAX_BLOCKS];
    for (unsigned i = 0; i < s->a_blocks; i++)
        if (!(p[i] = TM_API(malloc)(SIZE))) s->why = "A: malloc failed";
    s->arena_a = tm_tls.arena;
    for (unsigned i = 0; i < s->a_blocks; i++) TM_API(free)(p[i]);
    void *one;
    s->a_parked = xfer_parked(s->arena_a, size_class_of(SIZE), &one, 1);
    sem_post(&s->parked);
    while (sem_wait(&s->done) != 0) {
    } /* alive, holding its cache, until B is done */
    return NULL;
}

static void *thread_b(void *arg) {
    scenario_t *s = arg;
    void *p[B_BLOCKS];
    for (unsigned i = 0; i < B_BLOCKS; i++)
        if (!(p[i] = TM_API(malloc)(SIZE))) s->why = "B: malloc failed";
    s->arena_b = tm_tls.arena;
    void *one;
    s->a_parked_after = xfer_parked(s->arena_a, size_class_of(SIZE), &one, 1);
    for (unsigned i = 0; i < B_BLOCKS; i++)
        if (p[i] && owner(p[i]) == s->arena_a) s->b_from_a++;
    for (unsigned i = 0; i < B_BLOCKS; i++) TM_API(free)(p[i]);
    return NULL;
}

static void run(scenario_t *s) {
    sem_init(&s->parked, 0, 0);
    sem_init(&s->done, 0, 0);
    pthread_t a, b;
    assert_int_equal(pthread_create(&a, NULL, thread_a, s), 0);
    while (sem_wait(&s->parked) != 0) {
    }
    assert_int_equal(pthread_create(&b, NULL, thread_b, s), 0);
    assert_int_equal(pthread_join(b, NULL), 0);
    sem_post(&s->done);
    assert_int_equal(pthread_join(a, NULL), 0);
    sem_destroy(&s->parked);
    sem_destroy(&s->done);
    if (s->why) fail_msg("%s", s->why);
    /* each thread is bound to the arena with the fewest threads: with A
     * alive, B gets another one whenever there are two */
    if (tm_narenas < 2) skip();
    if (s->arena_a == s->arena_b) fail_msg("A and B share arena %u", s->arena_a);
}

/* A burst that parks a few hundred blocks: B's arena has none parked, and
 * A's transfer cache is below a quarter full, so B takes none of them;
 * B frees no other thread's blocks, so it borrows none of A's slabs
 * either (tests/unit/borrow.c). */
static void test_small_burst_stays_with_its_arena(void **state) {
    (void)state;
    scenario_t s = {.a_blocks = 300};
    run(&s);
    if (!s.a_parked) fail_msg("A's burst parked nothing in its arena %u", s.arena_a);
    if (s.a_parked_after != s.a_parked)
        fail_msg("B (arena %u) took %d of the %u blocks parked in A's arena %u", s.arena_b,
                 (int)s.a_parked - (int)s.a_parked_after, s.a_parked, s.arena_a);
    if (s.b_from_a)
        fail_msg("%u of B's %d blocks came from A's arena %u (B is in arena %u)", s.b_from_a,
                 B_BLOCKS, s.arena_a, s.arena_b);
}

/* A burst that fills A's transfer cache past a quarter: a refill that finds
 * its own empty takes a batch from it. */
static void test_full_neighbour_is_shared(void **state) {
    (void)state;
    scenario_t s = {.a_blocks = MAX_BLOCKS};
    run(&s);
    if (!s.b_from_a)
        fail_msg("none of B's %d blocks came from A's arena %u, whose transfer cache "
                 "should hold thousands",
                 B_BLOCKS, s.arena_a);
}

/* ---- a consumer's burst goes home through the transfer cache ----
 * P allocates a burst of 512-byte blocks and stays alive; C, bound to
 * another arena, frees them all. The blocks C's cache cannot keep are
 * parked with P's arena, and P's next burst takes them back from there:
 * C's frees send none to P's slabs (the arena's nfree of the class stays
 * put), and P's burst takes from the slabs no more than C's cache kept
 * (plus the rest of the one refill that finds the transfer cache empty:
 * a refill asks for at most half a bin). Two threads that share one CPU pass bursts this big
 * (a time slice of a producer/consumer pair); until 2026-12-05 a class
 * above 256 B parked at most 128 KiB and the rest went through the slabs
 * both ways (bench/throughput xmalloc, 2 threads on one CPU: 20% of the
 * frees). */
enum { BURST_SIZE = 512, BURST = 440 };

typedef struct burst {
    void *p[BURST];
    sem_t handed, freed, again, done;
    unsigned arena_p, arena_c;
    uint32_t c_kept;            /* blocks C's bin holds after its frees */
    uint64_t nmalloc_before, nfree_before, nmalloc_after, nfree_after;
    const char *why;
} burst_t;

static tm_arena_bin_t *burst_bin(unsigned ai) {
    return &tm_arenas[ai]->bins[size_class_of(BURST_SIZE)];
}

static void wait_sem(sem_t *s) {
    while (sem_wait(s) != 0) {
    }
}

static void *producer(void *arg) {
    burst_t *s = arg;
    for (unsigned i = 0; i < BURST; i++)
        if (!(s->p[i] = TM_API(malloc)(BURST_SIZE))) s->why = "P: malloc failed";
    s->arena_p = tm_tls.arena;
    sem_post(&s->handed);
    wait_sem(&s->freed);
    tm_arena_bin_t *b = burst_bin(s->arena_p);
    s->nfree_after = __atomic_load_n(&b->nfree, __ATOMIC_RELAXED);
    for (unsigned i = 0; i < BURST; i++)
        if (!(s->p[i] = TM_API(malloc)(BURST_SIZE))) s->why = "P: second malloc failed";
    s->nmalloc_after = __atomic_load_n(&b->nmalloc, __ATOMIC_RELAXED);
    for (unsigned i = 0; i < BURST; i++) TM_API(free)(s->p[i]);
    sem_post(&s->again);
    wait_sem(&s->done); /* alive until C has gone */
    return NULL;
}

static void *consumer(void *arg) {
    burst_t *s = arg;
    wait_sem(&s->handed);
    TM_API(free)(TM_API(malloc)(16)); /* C's cache exists before its first free */
    s->arena_c = tm_tls.arena;
    tm_arena_bin_t *b = burst_bin(s->arena_p);
    s->nmalloc_before = __atomic_load_n(&b->nmalloc, __ATOMIC_RELAXED);
    s->nfree_before = __atomic_load_n(&b->nfree, __ATOMIC_RELAXED);
    for (unsigned i = 0; i < BURST; i++) TM_API(free)(s->p[i]);
    s->c_kept = tc_bin_count(&tm_tls.tc->bins[size_class_of(BURST_SIZE)]);
    sem_post(&s->freed);
    wait_sem(&s->again);
    return NULL;
}

static void test_a_consumer_burst_goes_home_through_the_transfer_cache(void **state) {
    (void)state;
    static burst_t s;
    sem_init(&s.handed, 0, 0);
    sem_init(&s.freed, 0, 0);
    sem_init(&s.again, 0, 0);
    sem_init(&s.done, 0, 0);
    pthread_t p, c;
    assert_int_equal(pthread_create(&p, NULL, producer, &s), 0);
    assert_int_equal(pthread_create(&c, NULL, consumer, &s), 0);
    assert_int_equal(pthread_join(c, NULL), 0);
    sem_post(&s.done);
    assert_int_equal(pthread_join(p, NULL), 0);
    if (s.why) fail_msg("%s", s.why);
    if (tm_narenas < 2) skip();
    if (s.arena_p == s.arena_c) fail_msg("P and C share arena %u", s.arena_p);
    if (s.nfree_after != s.nfree_before)
        fail_msg("C's frees of P's %d blocks of %d B sent %llu to the slabs of P's arena %u",
                 BURST, BURST_SIZE, (unsigned long long)(s.nfree_after - s.nfree_before),
                 s.arena_p);
    uint32_t refill = tm_classes[size_class_of(BURST_SIZE)].tc_cap / 2;
    if (s.nmalloc_after - s.nmalloc_before > s.c_kept + refill)
        fail_msg("P's second burst took %llu blocks from its arena's slabs, more than the "
                 "%u C's cache kept and one refill of %u: the rest were not in P's transfer "
                 "cache",
                 (unsigned long long)(s.nmalloc_after - s.nmalloc_before), s.c_kept, refill);
}

/* ---- blocks of an arena without a thread go to its slabs ----
 * P allocates a burst of 512-byte blocks and exits; its arena, shared with
 * no other thread, has no refill to take parked blocks back. The main
 * thread frees them: what its cache does not keep goes to the slabs of
 * P's arena, none to its transfer cache, where they would pin their slabs
 * until _heapmin (an outside tester's pool: a thread that freed the 65 536
 * blocks of 8 exited threads kept 16.3 MiB parked there). */
static void *exiting_producer(void *arg) {
    burst_t *s = arg;
    for (unsigned i = 0; i < BURST; i++)
        if (!(s->p[i] = TM_API(malloc)(BURST_SIZE))) s->why = "P: malloc failed";
    s->arena_p = tm_tls.arena;
    return NULL;
}

/* H: a thread with a cache that stays alive meanwhile, so that P (the
 * thread after it) is not the one that shares the main thread's arena */
static void *holder(void *arg) {
    burst_t *s = arg;
    TM_API(free)(TM_API(malloc)(16));
    sem_post(&s->handed);
    wait_sem(&s->done);
    return NULL;
}

static void test_an_arena_without_threads_parks_nothing(void **state) {
    (void)state;
    static burst_t s;
    pthread_t h, p;
    sem_init(&s.handed, 0, 0);
    sem_init(&s.done, 0, 0);
    TM_API(free)(TM_API(malloc)(BURST_SIZE)); /* this thread's cache and bin exist */
    assert_int_equal(pthread_create(&h, NULL, holder, &s), 0);
    wait_sem(&s.handed);
    assert_int_equal(pthread_create(&p, NULL, exiting_producer, &s), 0);
    assert_int_equal(pthread_join(p, NULL), 0);
    sem_post(&s.done);
    assert_int_equal(pthread_join(h, NULL), 0);
    if (s.why) fail_msg("%s", s.why);
    if (tm_narenas < 3) skip();
    tm_arena_t *a = tm_arenas[s.arena_p];
    if (s.arena_p == tm_tls.arena || __atomic_load_n(&a->nthreads, __ATOMIC_RELAXED))
        fail_msg("P's arena %u has threads after P exited", s.arena_p);
    /* P's refills may have taken batches parked with other arenas (a
     * neighbour's quarter-full transfer cache): those go home as usual */
    uint32_t own = 0;
    for (unsigned i = 0; i < BURST; i++) own += owner(s.p[i]) == s.arena_p;
    tm_arena_bin_t *b = burst_bin(s.arena_p);
    uint64_t nfree_before = __atomic_load_n(&b->nfree, __ATOMIC_RELAXED);
    for (unsigned i = 0; i < BURST; i++) TM_API(free)(s.p[i]);
    uint64_t to_slabs = __atomic_load_n(&b->nfree, __ATOMIC_RELAXED) - nfree_before;
    tm_tc_bin_t *mine = &tm_tls.tc->bins[size_class_of(BURST_SIZE)];
    uint32_t kept = 0; /* P's blocks this thread's bin holds (it refills its own too) */
    for (void **q = mine->base; q < mine->top; q++) kept += owner(*q) == s.arena_p;
    if (!own) fail_msg("none of P's %d blocks is its arena's", BURST);
    if (to_slabs + kept != own)
        fail_msg("of P's %u blocks of its arena %u, which has no thread now, this thread's "
                 "cache kept %u and %llu went to the slabs: the rest were parked",
                 own, s.arena_p, kept, (unsigned long long)to_slabs);
    sem_destroy(&s.handed);
    sem_destroy(&s.done);
}

/* ---- a batch of mixed owners parks each block with its own arena ----
 * Two producers, each bound to an arena of its own (a holder thread,
 * started first, shares this thread's), hand this thread a burst each and
 * stay alive; this thread frees the two bursts mixed in runs of one to
 * four blocks (its bin also holds blocks of its own arena,
 * from the refill that a foreign block meeting an empty bin makes). Every
 * overflow splits the batch by owner (tcache.c, bin_flush), so every block
 * parked in an arena's transfer cache is that arena's, and each producer
 * has some parked. */
typedef struct mixed {
    void *p[2][BURST];
    unsigned arena[2];
    sem_t handed, done;
    const char *why;
} mixed_t;

static mixed_t mix;

static void *mix_producer(void *arg) {
    unsigned i = (unsigned)(uintptr_t)arg;
    if (i == 2) { /* the holder: shares this thread's arena (the first thread started does) */
        TM_API(free)(TM_API(malloc)(16));
        sem_post(&mix.handed);
        wait_sem(&mix.done);
        return NULL;
    }
    for (unsigned j = 0; j < BURST; j++)
        if (!(mix.p[i][j] = TM_API(malloc)(BURST_SIZE))) mix.why = "producer: malloc failed";
    mix.arena[i] = tm_tls.arena;
    sem_post(&mix.handed);
    wait_sem(&mix.done); /* alive, so its arena takes parked batches */
    return NULL;
}

static void test_a_mixed_batch_parks_each_block_with_its_owner(void **state) {
    (void)state;
    const unsigned cls = size_class_of(BURST_SIZE);
    if (!tm_opt.tcache_scale_pct) skip(); /* no caches, nothing parked */
    TM_API(free)(TM_API(malloc)(BURST_SIZE)); /* this thread's cache and bin exist */
    sem_init(&mix.handed, 0, 0);
    sem_init(&mix.done, 0, 0);
    pthread_t t[3];
    for (unsigned i = 3; i-- > 0;) { /* the holder first */
        assert_int_equal(pthread_create(&t[i], NULL, mix_producer, (void *)(uintptr_t)i), 0);
        wait_sem(&mix.handed); /* one after the other: each takes the emptiest arena */
    }
    if (mix.why) fail_msg("%s", mix.why);
    unsigned next[2] = {0, 0};
    uint32_t x = 12345;
    while (next[0] < BURST || next[1] < BURST) {
        x = x * 1103515245u + 12345u;
        unsigned i = (x >> 16) & 1, run = 1 + (x >> 8) % 4;
        while (run-- && next[i] < BURST) TM_API(free)(mix.p[i][next[i]++]);
    }
    static void *parked[4096];
    uint32_t with[2] = {0, 0};
    void *stray = NULL; /* a block parked with an arena that does not own it */
    unsigned stray_in = 0;
    for (unsigned ai = 0; ai < tm_narenas; ai++) {
        uint32_t n = xfer_parked(ai, cls, parked, 4096);
        assert_true(n <= 4096);
        for (uint32_t j = 0; j < n; j++) {
            if (owner(parked[j]) != ai && !stray) {
                stray = parked[j];
                stray_in = ai;
            }
            for (unsigned i = 0; i < 2; i++) with[i] += ai == mix.arena[i];
        }
    }
    for (unsigned i = 0; i < 3; i++) sem_post(&mix.done);
    for (unsigned i = 0; i < 3; i++) assert_int_equal(pthread_join(t[i], NULL), 0);
    sem_destroy(&mix.handed);
    sem_destroy(&mix.done);
    if (stray)
        fail_msg("%p, a block of arena %u, is parked with arena %u (producers in %u and %u, this "
                 "thread in %u)",
                 stray, owner(stray), stray_in, mix.arena[0], mix.arena[1], tm_tls.arena);
    if (tm_narenas < 3) skip();
    if (mix.arena[0] == mix.arena[1] || mix.arena[0] == tm_tls.arena ||
        mix.arena[1] == tm_tls.arena)
        fail_msg("the producers (arenas %u, %u) and this thread (%u) do not have an arena each",
                 mix.arena[0], mix.arena[1], tm_tls.arena);
    for (unsigned i = 0; i < 2; i++)
        if (!with[i])
            fail_msg("none of producer %u's %d blocks was parked with its arena %u", i, BURST,
                     mix.arena[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_burst_stays_with_its_arena),
        cmocka_unit_test(test_full_neighbour_is_shared),
        cmocka_unit_test(test_a_consumer_burst_goes_home_through_the_transfer_cache),
        cmocka_unit_test(test_an_arena_without_threads_parks_nothing),
        cmocka_unit_test(test_a_mixed_batch_parks_each_block_with_its_owner),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
