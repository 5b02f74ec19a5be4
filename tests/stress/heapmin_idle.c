/*
 * heapmin_idle.c -- _heapmin() gives back what other threads left behind:
 * threads that are alive but idle (blocked on a condition variable, their
 * thread caches full) and threads that have exited.
 *
 * Each worker keeps a small live set (allocated before the spike, like a
 * service's steady working set), allocates its share of a spike in mixed
 * sizes (small, slab-sized medium, large runs, huge mappings; every page
 * written), frees the spike -- a quarter of it through the next worker, so
 * caches also hold blocks of other threads' arenas -- and then blocks, or
 * exits. The main thread calls _heapmin() and checks:
 *   - trimalloc_stats_get(): tcache_bytes == 0 (every cache drained, the
 *     blocked ones included), heapmin_calls counted;
 *   - RSS (/proc/self/statm): it fell by at least 70% of its growth, and
 *     ended at most a margin above baseline + live bytes (see below);
 *   - every byte of every live block, from the main thread while the
 *     workers are blocked, and again from the workers once they wake;
 *   - _heapchk() == _HEAPOK after each step.
 * RSS bounds are not checked under sanitizers (their shadow memory follows
 * the application's and is not given back by madvise); everything else is,
 * on a smaller spike.
 *
 * RSS margin. What may legitimately stay resident after the trim, for the
 * 256 MiB spike of 8 workers and their 4 MiB live set (measured on a
 * 2-CPU machine: overhead 4.3..5.0 MiB with 1, 4 or 32 arenas):
 *   - metadata of the chunks still in use (a chunk descriptor is ~124 KiB
 *     per 4 MiB chunk, slab descriptors included) and of the caches:
 *     about 1 MiB;
 *   - size-class rounding of the live blocks (counted as requested):
 *     about 0.3 MiB;
 *   - the slack of partly used slabs: a worker's few live blocks of a
 *     class share slabs (up to 16 pages for 1..32 KiB classes) whose other
 *     blocks went to the spike: about 3 MiB;
 *   - the main thread's and the test harness's own allocations.
 * 8 MiB leaves 3 MiB to spare. What it must catch is far larger: one
 * undrained cache holds 1-2 MiB, all of them ~20 MiB; unpurged free runs
 * are most of the spike; the metadata kept for the spike's chunks before
 * 4009741 was 6 MiB (with the slack, 10 MiB: caught).
 *
 * The drop: at least 70% of what RSS grew by since the baseline (the
 * spike, or less when one worker reused what another had freed), gone.
 */
#include <stdatomic.h>
#include <sys/mman.h>

#include "test_cmocka.h"

#define NWORKERS 8
#define RSS_MARGIN (8 * TU_MIB)
#define CHECK_RSS (!TU_ASAN && !TU_TSAN)

/* The whole heap is consistent: _heapchk() (heap_crt.c) walks every arena.
 * _HEAPEMPTY (nothing allocated yet, as in the CRT) is as good as _HEAPOK. */
static void heapmin_ok(void)
{
    tu_heapmin_ok();
    tu_heap_ok();
}

static trimalloc_stats_t stats(void)
{
    trimalloc_stats_t st;
    assert_int_equal(TM_API(trimalloc_stats_get)(&st), 0);
    return st;
}

static double mib(size_t b)
{
    return (double)b / (double)TU_MIB;
}

/* ---- sizes ---------------------------------------------------------------------- */

static size_t spike_total(void)
{
    return TU_TSAN ? 32 * TU_MIB : TU_ASAN ? 64 * TU_MIB : 256 * TU_MIB;
}

/* Live set: 4 MiB in all, blocks of 16 B..1 KiB, one in eight 1..16 KiB. */
static size_t live_total(void)
{
    return TU_TSAN ? TU_MIB : 4 * TU_MIB;
}

/* A spike size of category cat, log-uniform within it: 0 small 16 B..1 KiB,
 * 1 medium 1..32 KiB (slabs), 2 large 32 KiB..2 MiB (runs), 3 huge
 * 2..6 MiB (own mappings). */
static size_t cat_size(tu_rng_t *r, int cat)
{
    static const unsigned lo_shift[4] = {4, 10, 15, 21}, span[4] = {6, 5, 6, 1};
    unsigned sh = lo_shift[cat] + (unsigned)(tu_rand(r) % span[cat]);
    size_t base = (size_t)1 << sh;
    size_t s = base + (size_t)(tu_rand(r) % base);
    return cat == 3 && s > 6 * TU_MIB ? 6 * TU_MIB : s;
}

/* Bookkeeping comes from mmap, written at once, so it is part of the RSS
 * baseline and never part of the allocator's figures. */
static void *book_alloc(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TU_CHECK(p != MAP_FAILED, "mmap %zu", bytes);
    memset(p, 0, bytes);
    return p;
}

/* ---- workers ----------------------------------------------------------------------- */

typedef struct worker {
    int id;
    pthread_t thread;
    int exit_after_spike;  /* exit instead of parking */
    tu_block_t *live;      /* kept across the trim */
    size_t nlive, live_cap, live_bytes;
    tu_block_t *spike;
    size_t nspike, spike_cap;
    void **inbox;          /* spike blocks the previous worker gives us to free */
    size_t ninbox, inbox_cap;
} worker_t;

static worker_t *workers;
static int nworkers;
static pthread_barrier_t handoff; /* all inboxes are full before anyone frees */

static pthread_mutex_t park_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t park_cond = PTHREAD_COND_INITIALIZER;
static int parked, wake_gen;

static void park(int *seen_gen)
{
    tu_lock(&park_lock);
    parked++;
    pthread_cond_broadcast(&park_cond);
    while (wake_gen == *seen_gen)
        pthread_cond_wait(&park_cond, &park_lock);
    *seen_gen = wake_gen;
    tu_unlock(&park_lock);
}

static void wait_parked(int n)
{
    tu_lock(&park_lock);
    while (parked < n)
        pthread_cond_wait(&park_cond, &park_lock);
    tu_unlock(&park_lock);
}

static void wake_all(void)
{
    tu_lock(&park_lock);
    parked = 0;
    wake_gen++;
    pthread_cond_broadcast(&park_cond);
    tu_unlock(&park_lock);
}

static void worker_live(worker_t *w, tu_rng_t *r)
{
    size_t left = live_total() / (size_t)nworkers;
    while (left) {
        size_t s = cat_size(r, tu_rand(r) % 8 == 0 ? 1 : 0);
        if (s > 16 * TU_KIB)
            s = 16 * TU_KIB;
        if (s > left)
            s = left < 16 ? 16 : left;
        left -= s < left ? s : left;
        TU_CHECK(w->nlive < w->live_cap, "live bookkeeping full");
        w->live[w->nlive] = tu_block_new(s, (uint64_t)w->id, w->nlive);
        w->live_bytes += s;
        w->nlive++;
    }
}

/* Byte shares: 45% small, 25% medium, 20% large, 10% huge. */
static void worker_spike(worker_t *w, tu_rng_t *r)
{
    size_t share = spike_total() / (size_t)nworkers;
    size_t budget[4] = {share * 45 / 100, share * 25 / 100, share * 20 / 100, share / 10};
    for (;;) {
        int cats[4], nc = 0;
        for (int c = 0; c < 4; c++)
            if (budget[c])
                cats[nc++] = c;
        if (!nc)
            break;
        int c = cats[tu_rand(r) % (uint64_t)nc];
        size_t s = cat_size(r, c);
        if (s > budget[c])
            s = budget[c] < 16 ? 16 : budget[c];
        budget[c] -= s < budget[c] ? s : budget[c];
        unsigned char *p = TM_API(malloc)(s);
        TU_CHECK(p != NULL, "malloc(%zu)", s);
        for (size_t o = 0; o < s; o += 4096)
            p[o] = (unsigned char)(o >> 12);
        p[s - 1] = 0x5a;
        TU_CHECK(w->nspike < w->spike_cap, "spike bookkeeping full");
        w->spike[w->nspike].p = p;
        w->spike[w->nspike].size = s;
        w->nspike++;
    }
}

static void worker_free_spike(worker_t *w, tu_rng_t *r)
{
    worker_t *next = &workers[(w->id + 1) % nworkers];
    for (size_t i = 0; i < w->nspike; i++) {
        if (nworkers > 1 && tu_rand(r) % 4 == 0) {
            TU_CHECK(next->ninbox < next->inbox_cap, "inbox full");
            next->inbox[next->ninbox++] = w->spike[i].p; /* only we write it */
        } else {
            TM_API(free)(w->spike[i].p);
        }
    }
    w->nspike = 0;
    pthread_barrier_wait(&handoff);
    for (size_t i = 0; i < w->ninbox; i++)
        TM_API(free)(w->inbox[i]);
    w->ninbox = 0;
}

static void check_live(worker_t *w)
{
    for (size_t i = 0; i < w->nlive; i++)
        tu_block_check(&w->live[i]);
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    tu_rng_t r;
    tu_rng_seed(&r, 0x1d1e + (uint64_t)w->id);
    int seen = 0;
    worker_live(w, &r);
    worker_spike(w, &r);
    worker_free_spike(w, &r);
    if (w->exit_after_spike)
        return NULL; /* its live blocks are the main thread's now */
    park(&seen); /* idle, alive, cache full */
    check_live(w);
    /* second round: more churn, then park again for a second trim */
    worker_spike(w, &r);
    worker_free_spike(w, &r);
    park(&seen);
    check_live(w);
    for (size_t i = 0; i < w->nlive; i++)
        tu_block_free(&w->live[i]);
    w->nlive = 0;
    return NULL;
}

static void workers_setup(int n, int exit_after_spike)
{
    nworkers = n;
    size_t share = spike_total() / (size_t)n;
    /* spike blocks average ~540 B (45% of the bytes in small blocks of
     * ~250 B); share/300 entries leave ample room */
    size_t spike_cap = share / 300 + 4096;
    workers = book_alloc(sizeof(worker_t) * (size_t)n);
    for (int i = 0; i < n; i++) {
        worker_t *w = &workers[i];
        w->id = i;
        w->exit_after_spike = exit_after_spike;
        w->live_cap = live_total() / (size_t)n / 16 + 64;
        w->live = book_alloc(w->live_cap * sizeof(tu_block_t));
        w->spike_cap = spike_cap;
        w->spike = book_alloc(spike_cap * sizeof(tu_block_t));
        w->inbox_cap = spike_cap;
        w->inbox = book_alloc(spike_cap * sizeof(void *));
    }
    int rc = pthread_barrier_init(&handoff, NULL, (unsigned)n);
    TU_CHECK(rc == 0, "pthread_barrier_init");
    parked = 0;
}

static void workers_teardown(void)
{
    pthread_barrier_destroy(&handoff);
    for (int i = 0; i < nworkers; i++) {
        worker_t *w = &workers[i];
        munmap(w->live, w->live_cap * sizeof(tu_block_t));
        munmap(w->spike, w->spike_cap * sizeof(tu_block_t));
        munmap(w->inbox, w->inbox_cap * sizeof(void *));
    }
    munmap(workers, sizeof(worker_t) * (size_t)nworkers);
    workers = NULL;
}

static size_t live_bytes_all(void)
{
    size_t n = 0;
    for (int i = 0; i < nworkers; i++)
        n += workers[i].live_bytes;
    return n;
}

static void check_live_all(void)
{
    for (int i = 0; i < nworkers; i++)
        check_live(&workers[i]);
}

/* After the trim: the drop and the end point. */
static void check_rss(const char *what, size_t base, size_t peak, size_t after, size_t live)
{
    size_t spike = spike_total();
    print_message("%s: RSS baseline %.1f MiB, before _heapmin %.1f, after %.1f; live %.1f MiB; "
                  "overhead %.1f MiB\n",
                  what, mib(base), mib(peak), mib(after), mib(live),
                  (double)after / (double)TU_MIB - mib(base) - mib(live));
    if (!CHECK_RSS || !base)
        return;
    size_t grown = peak > base ? peak - base : 0;
    if (grown > spike)
        grown = spike;
    if (grown < spike / 4)
        fail_msg("%s: RSS grew by only %.1f MiB for a %.1f MiB spike", what, mib(grown),
                 mib(spike));
    if (peak < after || peak - after < grown / 10 * 7)
        fail_msg("%s: RSS fell by %.1f MiB, less than 70%% of the %.1f MiB it grew by", what,
                 peak > after ? mib(peak - after) : 0.0, mib(grown));
    if (after > base + live + RSS_MARGIN)
        fail_msg("%s: RSS after _heapmin %.1f MiB > baseline %.1f + live %.1f + margin %.1f MiB",
                 what, mib(after), mib(base), mib(live), mib(RSS_MARGIN));
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_idle_threads_full_caches(void **state)
{
    (void)state;
    heapmin_ok();
    workers_setup(NWORKERS, 0);
    size_t base = tu_rss_bytes();
    for (int i = 0; i < nworkers; i++)
        tu_thread_create(&workers[i].thread, worker_main, &workers[i]);

    for (int round = 0; round < 2; round++) {
        wait_parked(nworkers);
        trimalloc_stats_t s0 = stats();
        size_t peak = tu_rss_bytes();
        /* the workers' caches are full of spike blocks */
        if (s0.tcache_bytes < (size_t)nworkers * 64 * TU_KIB)
            fail_msg("only %zu bytes in thread caches before the trim", s0.tcache_bytes);
        assert_true(s0.nthreads >= (unsigned)nworkers);

        heapmin_ok();
        trimalloc_stats_t s1 = stats();
        size_t after = tu_rss_bytes();
        assert_int_equal(s1.heapmin_calls, s0.heapmin_calls + 1);
        if (s1.tcache_bytes != 0)
            fail_msg("round %d: %zu bytes still in thread caches after _heapmin", round,
                     s1.tcache_bytes);
        assert_true(s1.allocated <= s0.allocated); /* drained blocks were never counted */
        check_live_all(); /* from here, while the workers are blocked */
        check_rss(round ? "idle threads, 2nd spike" : "idle threads", base, peak, after,
                  live_bytes_all());
        wake_all();
    }
    for (int i = 0; i < nworkers; i++)
        tu_thread_join(workers[i].thread);
    heapmin_ok();
    assert_int_equal(stats().tcache_bytes, 0);
    workers_teardown();
}

/* Threads that allocated, freed and exited: the blocks their caches held
 * went back to the arenas at exit; _heapmin returns the pages. Their live
 * blocks outlive them and stay intact. */
/* Exited threads. An arena whose last thread exits gives back its free
 * pages at once (chunk.c, arena_release_orphaned), which would leave little
 * for _heapmin here; dirty_decay_ms:-1 turns that off, so the spike is
 * still resident when _heapmin runs, as it is in an arena that other
 * threads still use. */
static void test_exited_threads(void **state)
{
    (void)state;
    heapmin_ok();
    long decay = 0;
    assert_int_equal(TM_API(trimalloc_option_get)("dirty_decay_ms", &decay), 0);
    assert_int_equal(TM_API(trimalloc_option_set)("dirty_decay_ms", -1), 0);
    unsigned threads0 = stats().nthreads;
    workers_setup(NWORKERS, 1);
    size_t base = tu_rss_bytes();
    for (int i = 0; i < nworkers; i++)
        tu_thread_create(&workers[i].thread, worker_main, &workers[i]);
    for (int i = 0; i < nworkers; i++)
        tu_thread_join(workers[i].thread);
    size_t peak = tu_rss_bytes(); /* freed, not yet given back */
    trimalloc_stats_t s0 = stats();
    assert_int_equal(s0.nthreads, threads0); /* their caches are gone */

    heapmin_ok();
    trimalloc_stats_t s1 = stats();
    size_t after = tu_rss_bytes();
    assert_int_equal(s1.tcache_bytes, 0);
    assert_true(s1.heapmin_bytes_released - s0.heapmin_bytes_released >= spike_total() / 2);
    check_live_all();
    check_rss("exited threads", base, peak, after, live_bytes_all());

    /* the main thread frees what the dead threads left it */
    for (int i = 0; i < nworkers; i++)
        for (size_t k = 0; k < workers[i].nlive; k++)
            tu_block_free(&workers[i].live[k]);
    heapmin_ok();
    workers_teardown();
    assert_int_equal(TM_API(trimalloc_option_set)("dirty_decay_ms", decay), 0);
}

/* Several generations of threads, each exiting with its cache full, with
 * no trim in between: nothing accumulates -- one _heapmin at the end gets
 * back to where we started. */
static void test_generations_of_exited_threads(void **state)
{
    (void)state;
    heapmin_ok();
    size_t base = 0;
    size_t peak = 0;
    int gens = (int)tu_scaled(4, 2);
    for (int g = 0; g < gens; g++) {
        workers_setup(4, 1);
        if (g == 0)
            base = tu_rss_bytes();
        for (int i = 0; i < nworkers; i++)
            tu_thread_create(&workers[i].thread, worker_main, &workers[i]);
        for (int i = 0; i < nworkers; i++)
            tu_thread_join(workers[i].thread);
        size_t rss = tu_rss_bytes();
        if (rss > peak)
            peak = rss;
        for (int i = 0; i < nworkers; i++)
            for (size_t k = 0; k < workers[i].nlive; k++)
                tu_block_free(&workers[i].live[k]);
        workers_teardown();
    }
    heapmin_ok();
    size_t after = tu_rss_bytes();
    assert_int_equal(stats().tcache_bytes, 0);
    check_rss("generations of exited threads", base, peak, after, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idle_threads_full_caches),
        cmocka_unit_test(test_exited_threads),
        cmocka_unit_test(test_generations_of_exited_threads),
    };
    return cmocka_run_group_tests_name("stress_heapmin_idle (" TU_FLAVOUR ")", tests, NULL, NULL);
}
