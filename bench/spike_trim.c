/*
 * spike_trim.c -- a server-like allocation spike, then each allocator's own
 * best "give memory back" call, with RSS recorded over time.
 *
 *   spike_trim [--threads N] [--mib M] [--keep PCT] [--size-kib K]
 *              [--settle-ms MS] [--after-ms MS] [--window-ms MS]
 *              [--sample-us US] [--rss-csv FILE] [--no-trim]
 *
 * The story, with its phase marks (milliseconds since start, in the output):
 *   start  N worker threads, an RSS sampler and a stall prober are running.
 *   spike  the workers allocate about M MiB together (mixed sizes, 16 B to
 *          256 KiB, or all of K KiB with --size-kib; every byte written),
 *          then free all but KEEP percent
 *          (default 5): a quarter of the freed blocks are freed by the next
 *          worker, not the one that allocated them.
 *   idle   the workers stay alive, blocked, holding whatever their thread
 *          caches hold; RSS settles for SETTLE ms.
 *   trim   the main thread makes the trim call of whichever allocator is
 *          preloaded, found by dlsym probes:
 *            trimalloc  _heapmin()
 *            jemalloc   mallctl("thread.tcache.flush") + mallctl("arena.4096.purge")
 *                       (4096 = MALLCTL_ARENAS_ALL)
 *            tcmalloc   MallocExtension_ReleaseFreeMemory()
 *            mimalloc   mi_collect(true)
 *            glibc      malloc_trim(0)
 *          and times it. Meanwhile the prober thread does malloc/free in a
 *          loop, timing every call; the longest call it sees in the stall
 *          window -- from the trim call's start until WINDOW ms later, or
 *          until the call returns if it takes longer -- is the "worst
 *          stall". The window has one length for every allocator because
 *          the worst of more calls is larger: a call that returns at once
 *          would otherwise be judged on a few dozen probe calls, and one
 *          that works for 100 ms on a million of them. The worst call made
 *          while the trim call itself ran is reported too (stall_call_*).
 *          The same prober first runs for a while before the trim, and its
 *          longest call there is the noise floor.
 *          "own" stalls leave out calls during which the scheduler preempted
 *          the prober (getrusage RUSAGE_THREAD ru_nivcsw went up): those say
 *          more about a busy machine than about the allocator.
 *   after  RSS is sampled for AFTER ms more; then every byte of every
 *          surviving block is checked, and everything is freed.
 *
 * Output: one line of key=value pairs on stdout (sizes in bytes, times in
 * microseconds unless the key says otherwise); with --rss-csv, the RSS
 * samples as "t_ms,rss_mib". Exit status 3 if a surviving byte changed.
 */
#include "bench_common.h"

#include <malloc.h>
#include <pthread.h>
#include <sys/resource.h>

/* trimalloc's stats struct, for the extra "tm_*" keys when it is the
 * allocator (looked up with dlsym: this program is not linked to it). */
#if __has_include("../include/trimalloc.h")
#include "../include/trimalloc.h"
#define HAVE_TM_STATS 1
#endif
#include <stdatomic.h>
#include <stdbool.h>

/* ---- parameters ---- */
static int nworkers = 2;
static size_t spike_bytes = 256u << 20;
static unsigned keep_pct = 5;
static size_t fixed_size; /* --size-kib: every block this size (0: the mix) */
static long settle_ms = 300, after_ms = 300, window_ms = 100, sample_us = 2000;
static const char *rss_csv;
static bool no_trim;

/* ---- the blocks ---- */
typedef struct block {
    unsigned char *p;
    size_t size;
    uint64_t id;
} block_t;

typedef struct worker {
    pthread_t tid;
    int index;
    block_t *blocks; /* from bench_map */
    size_t nblocks, cap;
    block_t *handoff; /* freed by the next worker */
    size_t nhandoff;
    size_t bytes;
} worker_t;

static worker_t *workers;
static pthread_barrier_t barrier;
static uint64_t t_start;

static inline bool is_survivor(uint64_t id) { return bench_hash(id) % 100 < keep_pct; }
static inline bool is_handoff(uint64_t id) { return (bench_hash(id ^ 0x5bd1e995u) & 3) == 0; }
static inline unsigned char tag_of(uint64_t id) { return (unsigned char)(bench_hash(id * 7 + 1) | 1); }

/* Mixed sizes: 60% 16-128 B, 25% 128 B-1 KiB, 12% 1-16 KiB, 3% 16-256 KiB. */
static size_t spike_size(uint64_t *rng)
{
    if (fixed_size)
        return fixed_size;
    uint64_t r = bench_rand(rng);
    unsigned pick = (unsigned)(r % 100);
    r >>= 8;
    if (pick < 60)
        return 16 + r % 113;
    if (pick < 85)
        return 128 + r % 897;
    if (pick < 97)
        return 1024 + r % (15 * 1024 + 1);
    return 16384 + r % (240 * 1024 + 1);
}

static void fill_block(block_t *b)
{
    memset(b->p, tag_of(b->id), b->size);
    memcpy(b->p, &b->id, sizeof b->id);
}

static size_t check_block(const block_t *b)
{
    uint64_t id;
    size_t bad = 0;
    unsigned char t = tag_of(b->id);
    memcpy(&id, b->p, sizeof id);
    if (id != b->id)
        bad++;
    for (size_t i = sizeof id; i < b->size; i++)
        bad += b->p[i] != t;
    return bad;
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    uint64_t rng = 0x9E3779B97F4A7C15ULL * (uint64_t)(w->index + 1);
    size_t target = spike_bytes / (size_t)nworkers;

    pthread_barrier_wait(&barrier); /* B1: spike starts */
    while (w->bytes < target) {
        if (w->nblocks == w->cap)
            bench_die("spike_trim: block array full");
        block_t *b = &w->blocks[w->nblocks];
        b->size = spike_size(&rng);
        b->id = ((uint64_t)w->index << 40) | w->nblocks;
        b->p = malloc(b->size);
        if (!b->p)
            bench_die("spike_trim: malloc failed during the spike");
        fill_block(b);
        w->bytes += b->size;
        w->nblocks++;
    }
    pthread_barrier_wait(&barrier); /* B2: spike at its peak */

    /* Free most of it: own blocks now, handed-off blocks by the neighbour. */
    size_t kept = 0;
    for (size_t i = 0; i < w->nblocks; i++) {
        block_t *b = &w->blocks[i];
        if (is_survivor(b->id))
            w->blocks[kept++] = *b;
        else if (is_handoff(b->id))
            w->handoff[w->nhandoff++] = *b;
        else
            free(b->p);
    }
    w->nblocks = kept;
    pthread_barrier_wait(&barrier); /* B3: handoff lists complete */
    worker_t *from = &workers[(w->index + 1) % nworkers];
    for (size_t i = 0; i < from->nhandoff; i++)
        free(from->handoff[i].p);
    pthread_barrier_wait(&barrier); /* B4: frees done */

    pthread_barrier_wait(&barrier); /* B5: idle until the main thread is done */
    return NULL;
}

/* ---- RSS sampler ---- */
#define MAX_SAMPLES 200000
static uint32_t *sample_rss_kib;
static uint64_t *sample_t; /* ns since start */
static atomic_size_t nsamples;
static atomic_bool sampler_stop;

static void *sampler_main(void *arg)
{
    (void)arg;
    while (!atomic_load_explicit(&sampler_stop, memory_order_relaxed)) {
        size_t n = atomic_load_explicit(&nsamples, memory_order_relaxed);
        if (n < MAX_SAMPLES) {
            sample_t[n] = bench_now_ns() - t_start;
            sample_rss_kib[n] = (uint32_t)(bench_rss_bytes() >> 10);
            atomic_store_explicit(&nsamples, n + 1, memory_order_release);
        }
        bench_sleep_us(sample_us);
    }
    return NULL;
}

/* ---- stall prober ---- */
/* PROBE_TRIM while the trim call runs, PROBE_POST for the rest of the
 * stall window after it returned */
enum { PROBE_IDLE, PROBE_BASE, PROBE_TRIM, PROBE_POST, PROBE_EXIT, PROBE_MODES };
static atomic_int probe_mode;
static uint64_t probe_max_ns[PROBE_MODES], probe_max_own_ns[PROBE_MODES], probe_ops[PROBE_MODES],
    probe_preempted[PROBE_MODES];

static uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }

static void *prober_main(void *arg)
{
    (void)arg;
    enum { RING = 64 };
    void *ring[RING] = {0};
    unsigned i = 0;
    /* Warm up: this thread's cache and state exist before any timing. */
    for (int k = 0; k < 20000; k++, i++) {
        free(ring[i % RING]);
        ring[i % RING] = malloc(16u << (i % 10));
    }
    long nivcsw = bench_thread_nivcsw();
    for (;;) {
        int mode = atomic_load_explicit(&probe_mode, memory_order_acquire);
        if (mode == PROBE_EXIT)
            break;
        if (mode == PROBE_IDLE) {
            bench_sleep_us(500);
            nivcsw = bench_thread_nivcsw();
            continue;
        }
        /* Sizes 16 B .. 8 KiB and a ring of 64 live blocks: most calls hit
         * the thread cache, some go to shared structures. */
        size_t sz = 16u << (i % 10);
        uint64_t t0 = bench_now_ns();
        free(ring[i % RING]);
        uint64_t t1 = bench_now_ns();
        void *p = malloc(sz);
        uint64_t t2 = bench_now_ns();
        if (!p)
            bench_die("spike_trim: prober malloc failed");
        ((volatile char *)p)[0] = 1;
        ring[i % RING] = p;
        i++;
        uint64_t d = t1 - t0 > t2 - t1 ? t1 - t0 : t2 - t1;
        if (d > probe_max_ns[mode])
            probe_max_ns[mode] = d;
        probe_ops[mode] += 2;
        /* A slow call is "own" unless the scheduler preempted this thread
         * meanwhile (an involuntary switch; waiting on a lock or being held
         * by a signal is voluntary or none, and counts as own). On a busy
         * 2-core machine preemption alone makes multi-ms outliers. */
        if (d <= 20000) {
            if (d > probe_max_own_ns[mode])
                probe_max_own_ns[mode] = d;
        } else {
            long now = bench_thread_nivcsw();
            if (now != nivcsw)
                probe_preempted[mode]++;
            else if (d > probe_max_own_ns[mode])
                probe_max_own_ns[mode] = d;
            nivcsw = now;
        }
    }
    for (unsigned k = 0; k < RING; k++)
        free(ring[k]);
    return NULL;
}

/* ---- the trim call of each allocator ---- */
static const char *trim_call_name = "?";
static int do_trim(enum bench_alloc a)
{
    switch (a) {
    case BA_TRIMALLOC: {
        int (*heapmin)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "_heapmin");
        trim_call_name = "_heapmin()";
        return heapmin();
    }
    case BA_JEMALLOC: {
        int (*mallctl)(const char *, void *, size_t *, void *, size_t) =
            (int (*)(const char *, void *, size_t *, void *, size_t))dlsym(RTLD_DEFAULT, "mallctl");
        trim_call_name = "mallctl(thread.tcache.flush)+mallctl(arena.4096.purge)";
        int r1 = mallctl("thread.tcache.flush", NULL, NULL, NULL, 0);
        int r2 = mallctl("arena.4096.purge", NULL, NULL, NULL, 0);
        return r1 ? r1 : r2;
    }
    case BA_TCMALLOC: {
        void (*rel)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "MallocExtension_ReleaseFreeMemory");
        trim_call_name = "MallocExtension_ReleaseFreeMemory()";
        rel();
        return 0;
    }
    case BA_MIMALLOC: {
        void (*collect)(bool) = (void (*)(bool))dlsym(RTLD_DEFAULT, "mi_collect");
        trim_call_name = "mi_collect(true)";
        collect(true);
        return 0;
    }
    default:
        trim_call_name = "malloc_trim(0)";
        malloc_trim(0);
        return 0;
    }
}

static size_t rss_now(void) { return bench_rss_bytes(); }
static double ms_since_start(void) { return (double)(bench_now_ns() - t_start) / 1e6; }

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [--threads N] [--mib M] [--keep PCT] [--size-kib K] [--settle-ms MS]\n"
            "          [--after-ms MS] [--window-ms MS] [--sample-us US] [--rss-csv FILE]\n"
            "          [--no-trim]\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    nworkers = ncpu > 0 ? (int)ncpu : 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--no-trim")) {
            no_trim = true;
            continue;
        }
        if (!v)
            usage(argv[0]);
        if (!strcmp(a, "--threads"))
            nworkers = atoi(v);
        else if (!strcmp(a, "--mib"))
            spike_bytes = (size_t)atol(v) << 20;
        else if (!strcmp(a, "--keep"))
            keep_pct = (unsigned)atoi(v);
        else if (!strcmp(a, "--size-kib"))
            fixed_size = (size_t)atol(v) << 10;
        else if (!strcmp(a, "--settle-ms"))
            settle_ms = atol(v);
        else if (!strcmp(a, "--after-ms"))
            after_ms = atol(v);
        else if (!strcmp(a, "--window-ms"))
            window_ms = atol(v);
        else if (!strcmp(a, "--sample-us"))
            sample_us = atol(v);
        else if (!strcmp(a, "--rss-csv"))
            rss_csv = v;
        else
            usage(argv[0]);
        i++;
    }
    if (nworkers < 1 || nworkers > 1024 || spike_bytes == 0 || keep_pct > 100 || sample_us < 100)
        usage(argv[0]);

    enum bench_alloc alloc = bench_alloc_detect();
    t_start = bench_now_ns();
    size_t rss_start = rss_now();

    sample_rss_kib = bench_map(MAX_SAMPLES * sizeof *sample_rss_kib);
    sample_t = bench_map(MAX_SAMPLES * sizeof *sample_t);
    workers = bench_map((size_t)nworkers * sizeof *workers);
    size_t cap = spike_bytes / (size_t)nworkers / 16 + 1024; /* smallest size is 16 */
    for (int i = 0; i < nworkers; i++) {
        workers[i].index = i;
        workers[i].cap = cap;
        workers[i].blocks = bench_map(cap * sizeof(block_t));
        workers[i].handoff = bench_map(cap * sizeof(block_t));
    }

    pthread_t sampler, prober;
    pthread_barrier_init(&barrier, NULL, (unsigned)nworkers + 1);
    if (pthread_create(&sampler, NULL, sampler_main, NULL) ||
        pthread_create(&prober, NULL, prober_main, NULL))
        bench_die("spike_trim: pthread_create failed");
    for (int i = 0; i < nworkers; i++)
        if (pthread_create(&workers[i].tid, NULL, worker_main, &workers[i]))
            bench_die("spike_trim: pthread_create failed");
    bench_sleep_us(20000); /* a little flat line before the spike */

    double m_spike = ms_since_start();
    pthread_barrier_wait(&barrier); /* B1 */
    pthread_barrier_wait(&barrier); /* B2: peak */
    double m_peak = ms_since_start();
    size_t rss_peak = rss_now();
    size_t spike_total = 0;
    for (int i = 0; i < nworkers; i++)
        spike_total += workers[i].bytes;
    pthread_barrier_wait(&barrier); /* B3 */
    pthread_barrier_wait(&barrier); /* B4: frees done, workers idle */
    double m_freed = ms_since_start();
    size_t live_after = 0, nsurv = 0;
    for (int i = 0; i < nworkers; i++)
        for (size_t k = 0; k < workers[i].nblocks; k++) {
            live_after += workers[i].blocks[k].size;
            nsurv++;
        }

    /* Idle: let RSS settle, then measure the prober's noise floor over a
     * window as long as the stall window. */
    bench_sleep_us((settle_ms > window_ms ? settle_ms - window_ms : 0) * 1000);
    atomic_store_explicit(&probe_mode, PROBE_BASE, memory_order_release);
    bench_sleep_us(window_ms * 1000);
    size_t rss_before = rss_now();

    /* The trim, with the prober timing every call it makes meanwhile. */
    atomic_store_explicit(&probe_mode, PROBE_TRIM, memory_order_release);
    bench_sleep_us(1000); /* the prober is in its loop when the trim starts */
    double m_trim = ms_since_start();
    uint64_t t0 = bench_now_ns();
    int trim_rc = no_trim ? 0 : do_trim(alloc);
    uint64_t t1 = bench_now_ns();
    if (no_trim)
        trim_call_name = "none";
    /* The rest of the stall window (at least 1 ms, so the prober is seen
     * to run again after the call). */
    atomic_store_explicit(&probe_mode, PROBE_POST, memory_order_release);
    uint64_t window_end = t0 + (uint64_t)window_ms * 1000000u, now = bench_now_ns();
    bench_sleep_us(window_end > now + 1000000u ? (long)((window_end - now) / 1000u) : 1000);
    atomic_store_explicit(&probe_mode, PROBE_IDLE, memory_order_release);
    double m_trimmed = ms_since_start();
    size_t rss_trim = rss_now();
    bench_sleep_us(after_ms * 1000);
    size_t rss_after = rss_now();
    double m_end = ms_since_start();

#ifdef HAVE_TM_STATS
    trimalloc_stats_t tm_st;
    int tm_have = 0;
    if (alloc == BA_TRIMALLOC) {
        int (*get)(trimalloc_stats_t *) =
            (int (*)(trimalloc_stats_t *))dlsym(RTLD_DEFAULT, "trimalloc_stats_get");
        tm_have = get && get(&tm_st) == 0;
    }
#endif

    /* Every surviving byte must be intact. */
    size_t bad = 0;
    for (int i = 0; i < nworkers; i++)
        for (size_t k = 0; k < workers[i].nblocks; k++)
            bad += check_block(&workers[i].blocks[k]);

    atomic_store_explicit(&probe_mode, PROBE_EXIT, memory_order_release);
    atomic_store(&sampler_stop, true);
    pthread_join(prober, NULL);
    pthread_join(sampler, NULL);
    for (int i = 0; i < nworkers; i++)
        for (size_t k = 0; k < workers[i].nblocks; k++)
            free(workers[i].blocks[k].p);
    pthread_barrier_wait(&barrier); /* B5: workers exit */
    for (int i = 0; i < nworkers; i++)
        pthread_join(workers[i].tid, NULL);

    size_t n = atomic_load(&nsamples);
    if (rss_csv) {
        FILE *f = fopen(rss_csv, "w");
        if (!f) {
            perror(rss_csv);
            return 1;
        }
        fprintf(f, "t_ms,rss_mib\n");
        for (size_t k = 0; k < n; k++)
            fprintf(f, "%.2f,%.2f\n", (double)sample_t[k] / 1e6, sample_rss_kib[k] / 1024.0);
        fclose(f);
    }

    printf("spike_trim alloc=%s threads=%d spike_bytes=%zu survivors=%zu survivor_bytes=%zu "
           "rss_start=%zu rss_peak=%zu rss_before_trim=%zu rss_after_trim=%zu rss_end=%zu "
           "trim_us=%.1f trim_rc=%d stall_max_us=%.1f stall_own_us=%.1f stall_preempted=%llu "
           "stall_call_us=%.1f stall_call_own_us=%.1f stall_window_ms=%ld "
           "stall_base_us=%.1f stall_base_own_us=%.1f probe_ops=%llu "
           "ms_spike=%.1f ms_peak=%.1f ms_freed=%.1f ms_trim=%.1f ms_trimmed=%.1f ms_end=%.1f "
           "samples=%zu verify=%s trim_call=%s\n",
           bench_alloc_name(alloc), nworkers, spike_total, nsurv, live_after, rss_start, rss_peak,
           rss_before, rss_trim, rss_after, (double)(t1 - t0) / 1e3, trim_rc,
           (double)max_u64(probe_max_ns[PROBE_TRIM], probe_max_ns[PROBE_POST]) / 1e3,
           (double)max_u64(probe_max_own_ns[PROBE_TRIM], probe_max_own_ns[PROBE_POST]) / 1e3,
           (unsigned long long)(probe_preempted[PROBE_TRIM] + probe_preempted[PROBE_POST]),
           (double)probe_max_ns[PROBE_TRIM] / 1e3, (double)probe_max_own_ns[PROBE_TRIM] / 1e3,
           window_ms, (double)probe_max_ns[PROBE_BASE] / 1e3,
           (double)probe_max_own_ns[PROBE_BASE] / 1e3,
           (unsigned long long)(probe_ops[PROBE_TRIM] + probe_ops[PROBE_POST]), m_spike, m_peak, m_freed, m_trim, m_trimmed,
           m_end, n, bad ? "FAIL" : "ok", trim_call_name);
#ifdef HAVE_TM_STATS
    if (tm_have) /* after the trim and the pause, before the survivors are freed */
        fprintf(stderr,
                "spike_trim: trimalloc stats: allocated=%zu active=%zu resident=%zu mapped=%zu "
                "metadata=%zu tcache_bytes=%zu huge_allocated=%zu released=%zu narenas=%u "
                "nthreads=%u heapmin_max_pause_ns=%llu\n",
                tm_st.allocated, tm_st.active, tm_st.resident, tm_st.mapped, tm_st.metadata,
                tm_st.tcache_bytes, tm_st.huge_allocated, tm_st.released, tm_st.narenas,
                tm_st.nthreads, (unsigned long long)tm_st.heapmin_max_pause_ns);
#endif
    if (bad) {
        fprintf(stderr, "spike_trim: %zu surviving bytes changed (allocator %s)\n", bad,
                bench_alloc_name(alloc));
        return 3;
    }
    return 0;
}
