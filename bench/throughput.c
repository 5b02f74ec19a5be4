/*
 * throughput.c -- allocation throughput workloads, in the spirit of the
 * classic allocator suites, each run at a chosen thread count.
 *
 *   throughput WORKLOAD [--threads T] [--scale S]
 *
 * WORKLOAD is one of:
 *   larson   server churn (after Larson & Krishnan): each thread owns an array
 *            of 2000 slots of 16-1024 B blocks and replaces a random one per
 *            op; threads end every round and new ones inherit their arrays,
 *            so blocks are freed by a different thread than allocated them.
 *   xmalloc  producer -> consumer (after xmalloc-test): every thread mallocs
 *            16-512 B blocks into a ring that the next thread drains and
 *            frees, so every block is freed by another thread (T >= 2).
 *   scratch  passive false sharing (after Hoard's cache-scratch): the main
 *            thread allocates one 8 B object per thread, each thread frees
 *            it, then mallocs 8 B, writes it 100 times and frees it, again
 *            and again. An allocator that hands a thread the block next to
 *            another thread's block makes them fight over one cache line.
 *   thrash   active false sharing (cache-thrash): the same loop without the
 *            handed-over objects.
 *   sizes    a size sweep: 8 B to 1 MiB (four sizes per doubling), each
 *            allocated in batches, touched on every page, then freed (above
 *            8 KiB, fewer blocks of a size: the same bytes per size).
 *   realloc  128 buffers per thread grown by 1.5x per realloc up to 64 KiB,
 *            then shrunk back to 16-64 B.
 *   tight    a tight malloc+free loop over 8 small sizes (16-512 B).
 *   batch    batches (after sh6bench): each thread allocates 1000 blocks of
 *            1-1000 B, frees every other one from the end, then the rest
 *            from the start, again and again: bursts of a size class bigger
 *            than a thread cache holds, so caches overflow and refill.
 *   huge     big buffers: each thread keeps 8 blocks of 5-25 MiB and
 *            replaces a random one, again and again, writing every page of
 *            the new block (the peers differ most in how often such a
 *            block's pages are given back and faulted in again). Not in
 *            bench/run.sh's default set: one op is a millisecond, not a
 *            nanosecond, and it needs 200-400 MiB per thread.
 * T defaults to the number of online CPUs; S multiplies the work (default 1).
 *
 * Every block carries a tag that is checked before it is freed. Output: one
 * line of key=value pairs: ops, secs, mops (million ops per second), the peak
 * live bytes requested (the sum of per-thread counters sampled every
 * millisecond, or the largest single thread's exact peak if that is higher),
 * peak RSS (VmHWM), cpu_secs (process CPU time over the timed runs, which
 * includes set-up and teardown of threads: useful on a loaded machine, where
 * wall time also counts waiting for a CPU) and verify=ok|FAIL. Exit status 3
 * on a bad tag.
 */
#include "bench_common.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>

#define TAG_MAGIC 0x7a11c0deULL

/* Per-thread state, one cache line each. "live" is bytes this slot has
 * allocated minus bytes it has freed (negative after remote frees); only the
 * owner writes it, the sampler sums all of them. */
typedef struct tstate {
    _Alignas(64) long live;
    long peak; /* highest "live" this slot reached */
    uint64_t ops;
    size_t bad;
    uint64_t rng;
    uint64_t t_begin, t_end; /* this thread's timed span, ns */
    int index;
} tstate_t;

static int nthreads;
static double scale = 1.0;
static tstate_t *ts;
static pthread_barrier_t start_barrier;

/* Wait for the common start, then stamp this thread's start time. Each
 * thread times itself: on 2 cores the main thread may not run again until the
 * workers are done, so its own clock would start late. */
static inline void bench_go(tstate_t *t)
{
    pthread_barrier_wait(&start_barrier);
    t->t_begin = bench_now_ns();
}

static inline void live_add(tstate_t *t, long d)
{
    long v = t->live + d;
    __atomic_store_n(&t->live, v, __ATOMIC_RELAXED);
    if (v > t->peak)
        t->peak = v;
}

static inline uint64_t tag_for(const void *p, size_t size)
{
    return ((uint64_t)size << 32 | TAG_MAGIC) ^ ((uintptr_t)p >> 4);
}
static inline void tag_set(void *p, size_t size)
{
    uint64_t t = tag_for(p, size);
    memcpy(p, &t, sizeof t);
}
static inline bool tag_ok(const void *p, size_t size)
{
    uint64_t t;
    memcpy(&t, p, sizeof t);
    return t == tag_for(p, size);
}

static inline void *xmalloc(size_t size)
{
    void *p = malloc(size);
    if (!p)
        bench_die("throughput: malloc failed");
    return p;
}

static uint64_t scaled(double n)
{
    double v = n * scale;
    return v < 1 ? 1 : (uint64_t)v;
}

/* ---- peak live bytes sampler ---- */
static atomic_bool sampler_stop;
static long peak_live;

static long live_sum(void)
{
    long sum = 0;
    for (int i = 0; i < nthreads; i++)
        sum += __atomic_load_n(&ts[i].live, __ATOMIC_RELAXED);
    return sum;
}

static void *sampler_main(void *arg)
{
    (void)arg;
    while (!atomic_load_explicit(&sampler_stop, memory_order_relaxed)) {
        long s = live_sum();
        if (s > peak_live)
            peak_live = s;
        bench_sleep_us(1000);
    }
    return NULL;
}

/* ---- larson ---- */
#define LARSON_SLOTS 2000
#define LARSON_ROUNDS 5
static void ***larson_arrays;
static size_t **larson_sizes;
static int larson_round;

static size_t larson_size(uint64_t *rng) { return 16 + bench_rand(rng) % 1009; }

static void *larson_thread(void *arg)
{
    tstate_t *t = arg;
    int a = (t->index + larson_round) % nthreads; /* inherit another thread's array */
    void **slots = larson_arrays[a];
    size_t *sizes = larson_sizes[a];
    uint64_t n = scaled(2000000);
    bench_go(t);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t r = bench_rand(&t->rng);
        size_t k = r % LARSON_SLOTS;
        if (!tag_ok(slots[k], sizes[k]))
            t->bad++;
        free(slots[k]);
        live_add(t, -(long)sizes[k]);
        size_t sz = larson_size(&t->rng);
        void *p = xmalloc(sz);
        tag_set(p, sz);
        live_add(t, (long)sz);
        slots[k] = p;
        sizes[k] = sz;
    }
    t->ops += n;
    t->t_end = bench_now_ns();
    return NULL;
}

/* ---- xmalloc: producer -> consumer rings ---- */
#define RING_CAP 8192
typedef struct ring {
    _Alignas(64) atomic_size_t head; /* written by the producer */
    _Alignas(64) atomic_size_t tail; /* written by the consumer */
    _Alignas(64) void **buf;
} ring_t;
static ring_t *rings;

static void *xmalloc_thread(void *arg)
{
    tstate_t *t = arg;
    ring_t *out = &rings[t->index];
    ring_t *in = &rings[(t->index + nthreads - 1) % nthreads];
    uint64_t n = scaled(4000000);
    uint64_t produced = 0, consumed = 0;
    bench_go(t);
    while (produced < n || consumed < n) {
        bool progress = false;
        if (produced < n) {
            size_t head = atomic_load_explicit(&out->head, memory_order_relaxed);
            size_t tail = atomic_load_explicit(&out->tail, memory_order_acquire);
            size_t room = RING_CAP - (head - tail);
            size_t k = room < 64 ? room : 64;
            if (k > n - produced)
                k = (size_t)(n - produced);
            for (size_t j = 0; j < k; j++) {
                size_t sz = 16 + bench_rand(&t->rng) % 497;
                void *p = xmalloc(sz);
                tag_set(p, sz);
                memcpy((char *)p + 8, &sz, sizeof sz);
                live_add(t, (long)sz);
                out->buf[(head + j) % RING_CAP] = p;
            }
            if (k) {
                atomic_store_explicit(&out->head, head + k, memory_order_release);
                produced += k;
                progress = true;
            }
        }
        size_t tail = atomic_load_explicit(&in->tail, memory_order_relaxed);
        size_t head = atomic_load_explicit(&in->head, memory_order_acquire);
        size_t k = head - tail < 256 ? head - tail : 256;
        for (size_t j = 0; j < k; j++) {
            void *p = in->buf[(tail + j) % RING_CAP];
            size_t sz;
            memcpy(&sz, (char *)p + 8, sizeof sz);
            if (!tag_ok(p, sz))
                t->bad++;
            free(p);
            live_add(t, -(long)sz);
        }
        if (k) {
            atomic_store_explicit(&in->tail, tail + k, memory_order_release);
            consumed += k;
            progress = true;
        }
        if (!progress)
            sched_yield();
    }
    t->ops += n;
    t->t_end = bench_now_ns();
    return NULL;
}

/* ---- scratch / thrash: false sharing ---- */
#define FS_WRITES 100
static void **scratch_objs;
static bool scratch_mode;

static void *false_sharing_thread(void *arg)
{
    tstate_t *t = arg;
    uint64_t n = scaled(3000000);
    bench_go(t);
    if (scratch_mode) {
        if (!tag_ok(scratch_objs[t->index], 8))
            t->bad++;
        free(scratch_objs[t->index]);
        live_add(t, -8);
    }
    for (uint64_t i = 0; i < n; i++) {
        volatile unsigned char *p = xmalloc(8);
        live_add(t, 8);
        for (int w = 0; w < FS_WRITES; w++)
            p[w & 7]++;
        free((void *)p);
        live_add(t, -8);
    }
    t->ops += n;
    t->t_end = bench_now_ns();
    return NULL;
}

/* ---- sizes: 8 B .. 1 MiB ---- */
#define SWEEP_MAX 80
static size_t sweep_sizes[SWEEP_MAX];
static int nsweep;

static void sweep_init(void)
{
    for (size_t base = 8; base <= (1u << 20) && nsweep < SWEEP_MAX; base *= 2)
        for (int q = 0; q < 4 && nsweep < SWEEP_MAX; q++) {
            size_t s = base + base * (size_t)q / 4;
            if (s > (1u << 20))
                break;
            sweep_sizes[nsweep++] = s;
        }
}

static void *sizes_thread(void *arg)
{
    tstate_t *t = arg;
    void *batch[64];
    uint64_t per_size = scaled(150000);          /* blocks of each size up to 8 KiB */
    uint64_t big_bytes = scaled(15000.0 * 8192); /* bytes of each larger size */
    bench_go(t);
    for (int k = 0; k < nsweep; k++) {
        /* threads start at different points of the sweep */
        size_t s = sweep_sizes[(k + t->index * 7) % nsweep];
        size_t b = s <= 4096 ? 64 : s <= 65536 ? 16 : 4;
        /* above 8 KiB, the same bytes per size rather than the same count:
         * each block's pages are all touched */
        uint64_t count = s <= 8192 ? per_size : big_bytes / s;
        if (count < 64)
            count = 64;
        for (uint64_t done = 0; done < count; done += b) {
            for (size_t j = 0; j < b; j++) {
                unsigned char *p = xmalloc(s);
                /* touch every page, as a program using the block would, so
                 * RSS reflects the bytes handed out */
                for (size_t off = 4096; off < s; off += 4096)
                    p[off] = 1;
                tag_set(p, s);
                if (s > 8)
                    p[s - 1] = (unsigned char)j;
                batch[j] = p;
            }
            live_add(t, (long)(s * b));
            for (size_t j = 0; j < b; j++) {
                unsigned char *p = batch[j];
                if (!tag_ok(p, s) || (s > 8 && p[s - 1] != (unsigned char)j))
                    t->bad++;
                free(p);
            }
            live_add(t, -(long)(s * b));
            t->ops += b;
        }
    }
    t->t_end = bench_now_ns();
    return NULL;
}

/* ---- realloc ---- */
#define RE_BUFS 128
#define RE_MAX (64 * 1024)
static void *realloc_thread(void *arg)
{
    tstate_t *t = arg;
    void *bufs[RE_BUFS];
    size_t sizes[RE_BUFS];
    uint64_t n = scaled(400000);
    for (int i = 0; i < RE_BUFS; i++) {
        sizes[i] = 16 + bench_rand(&t->rng) % 49;
        bufs[i] = xmalloc(sizes[i]);
        memset(bufs[i], 0x5a, sizes[i]);
        memcpy(bufs[i], &sizes[i], sizeof sizes[i]); /* first 8 bytes: original tag */
        live_add(t, (long)sizes[i]);
    }
    uint64_t tags[RE_BUFS];
    for (int i = 0; i < RE_BUFS; i++)
        memcpy(&tags[i], bufs[i], sizeof tags[i]);
    bench_go(t);
    for (uint64_t i = 0; i < n; i++) {
        size_t k = bench_rand(&t->rng) % RE_BUFS;
        size_t cur = sizes[k];
        size_t nsz = cur >= RE_MAX ? 16 + bench_rand(&t->rng) % 49 : cur + cur / 2 + 16;
        unsigned char *p = realloc(bufs[k], nsz);
        if (!p)
            bench_die("throughput: realloc failed");
        uint64_t tag;
        memcpy(&tag, p, sizeof tag);
        if (tag != tags[k] || p[(nsz < cur ? nsz : cur) - 1] != 0x5a)
            t->bad++;
        if (nsz > cur)
            memset(p + cur, 0x5a, nsz - cur);
        live_add(t, (long)nsz - (long)cur);
        bufs[k] = p;
        sizes[k] = nsz;
    }
    t->ops += n;
    t->t_end = bench_now_ns();
    for (int i = 0; i < RE_BUFS; i++) {
        free(bufs[i]);
        live_add(t, -(long)sizes[i]);
    }
    return NULL;
}

/* ---- tight ---- */
static void *tight_thread(void *arg)
{
    static const size_t sz[8] = {16, 32, 48, 64, 96, 128, 256, 512};
    tstate_t *t = arg;
    uint64_t n = scaled(40000000);
    bench_go(t);
    for (uint64_t i = 0; i < n; i++) {
        unsigned char *p = xmalloc(sz[i & 7]);
        p[0] = (unsigned char)i;
        __asm__ volatile("" : : "r"(p) : "memory");
        free(p);
    }
    t->ops += n;
    t->t_end = bench_now_ns();
    return NULL;
}

/* ---- batch ---- */
#define BATCH_N 1000
static inline void batch_free(tstate_t *t, void *p, size_t size)
{
    if (!tag_ok(p, size))
        t->bad++;
    free(p);
    live_add(t, -(long)size);
}

/* ---- huge ---- */
#define HUGE_SLOTS 8
static inline void huge_touch(void *p, size_t size)
{
    for (size_t off = 4096; off < size; off += 4096)
        ((volatile char *)p)[off] = (char)off;
}

static void *huge_thread(void *arg)
{
    tstate_t *t = arg;
    void *v[HUGE_SLOTS] = {0};
    size_t sz[HUGE_SLOTS] = {0};
    uint64_t n = scaled(200);
    bench_go(t);
    for (uint64_t i = 0; i < n; i++) {
        int k = (int)(bench_rand(&t->rng) % HUGE_SLOTS);
        if (v[k]) {
            batch_free(t, v[k], sz[k]);
        }
        sz[k] = ((size_t)5 << 20) + bench_rand(&t->rng) % ((size_t)20 << 20);
        v[k] = xmalloc(sz[k]);
        tag_set(v[k], sz[k]);
        huge_touch(v[k], sz[k]);
        live_add(t, (long)sz[k]);
    }
    t->ops += n;
    t->t_end = bench_now_ns();
    for (int k = 0; k < HUGE_SLOTS; k++)
        if (v[k])
            batch_free(t, v[k], sz[k]);
    return NULL;
}

static void *batch_thread(void *arg)
{
    tstate_t *t = arg;
    void **v = xmalloc(BATCH_N * sizeof *v);
    size_t *sz = xmalloc(BATCH_N * sizeof *sz);
    uint64_t rounds = scaled(4000);
    bench_go(t);
    for (uint64_t r = 0; r < rounds; r++) {
        for (int i = 0; i < BATCH_N; i++) {
            sz[i] = 8 + bench_rand(&t->rng) % 993; /* tags need 8 bytes */
            v[i] = xmalloc(sz[i]);
            tag_set(v[i], sz[i]);
            live_add(t, (long)sz[i]);
        }
        /* every other block from the end, then the rest from the start */
        for (int i = BATCH_N - 1; i >= 0; i -= 2)
            batch_free(t, v[i], sz[i]);
        for (int i = 0; i < BATCH_N; i += 2)
            batch_free(t, v[i], sz[i]);
    }
    t->ops += rounds * BATCH_N;
    t->t_end = bench_now_ns();
    free(v);
    free(sz);
    return NULL;
}

/* Start T threads on fn, release them together, wait for all: seconds from
 * the first thread's start to the last thread's end. */
static double cpu_secs_total; /* process CPU time spent inside run_threads */

static double process_cpu_secs(void)
{
    struct timespec ts_;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts_);
    return (double)ts_.tv_sec + (double)ts_.tv_nsec / 1e9;
}

static double run_threads(void *(*fn)(void *))
{
    double c0 = process_cpu_secs();
    pthread_t *tid = bench_map((size_t)nthreads * sizeof *tid);
    pthread_barrier_init(&start_barrier, NULL, (unsigned)nthreads + 1);
    for (int i = 0; i < nthreads; i++)
        if (pthread_create(&tid[i], NULL, fn, &ts[i]))
            bench_die("throughput: pthread_create failed");
    pthread_barrier_wait(&start_barrier);
    for (int i = 0; i < nthreads; i++)
        pthread_join(tid[i], NULL);
    uint64_t t0 = UINT64_MAX, t1 = 0;
    for (int i = 0; i < nthreads; i++) {
        if (ts[i].t_begin < t0)
            t0 = ts[i].t_begin;
        if (ts[i].t_end > t1)
            t1 = ts[i].t_end;
    }
    cpu_secs_total += process_cpu_secs() - c0;
    pthread_barrier_destroy(&start_barrier);
    bench_unmap(tid, (size_t)nthreads * sizeof *tid);
    return (double)(t1 - t0) / 1e9;
}

int main(int argc, char **argv)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    nthreads = ncpu > 0 ? (int)ncpu : 2;
    if (argc < 2) {
    usage:
        fprintf(stderr, "usage: %s larson|xmalloc|scratch|thrash|sizes|realloc|tight|batch|huge "
                        "[--threads T] [--scale S]\n", argv[0]);
        return 2;
    }
    const char *wl = argv[1];
    for (int i = 2; i < argc; i += 2) { /* --flag value pairs */
        if (i + 1 >= argc)
            goto usage;
        if (!strcmp(argv[i], "--threads"))
            nthreads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--scale"))
            scale = atof(argv[i + 1]);
        else
            goto usage;
    }
    if (nthreads < 1 || nthreads > 1024 || !(scale > 0))
        goto usage;

    size_t rss_start = bench_rss_bytes();
    ts = bench_map((size_t)nthreads * sizeof *ts);
    for (int i = 0; i < nthreads; i++) {
        ts[i].index = i;
        ts[i].rng = 0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1) + 12345;
    }
    pthread_t sampler;
    if (pthread_create(&sampler, NULL, sampler_main, NULL))
        bench_die("throughput: pthread_create failed");

    double secs = 0;
    if (!strcmp(wl, "larson")) {
        larson_arrays = bench_map((size_t)nthreads * sizeof *larson_arrays);
        larson_sizes = bench_map((size_t)nthreads * sizeof *larson_sizes);
        uint64_t rng = 42;
        for (int a = 0; a < nthreads; a++) {
            larson_arrays[a] = bench_map(LARSON_SLOTS * sizeof(void *));
            larson_sizes[a] = bench_map(LARSON_SLOTS * sizeof(size_t));
            for (int k = 0; k < LARSON_SLOTS; k++) {
                size_t sz = larson_size(&rng);
                larson_arrays[a][k] = xmalloc(sz);
                larson_sizes[a][k] = sz;
                tag_set(larson_arrays[a][k], sz);
                live_add(&ts[a], (long)sz);
            }
        }
        for (larson_round = 0; larson_round < LARSON_ROUNDS; larson_round++)
            secs += run_threads(larson_thread);
        for (int a = 0; a < nthreads; a++)
            for (int k = 0; k < LARSON_SLOTS; k++) {
                if (!tag_ok(larson_arrays[a][k], larson_sizes[a][k]))
                    ts[0].bad++;
                free(larson_arrays[a][k]);
            }
    } else if (!strcmp(wl, "xmalloc")) {
        rings = bench_map((size_t)nthreads * sizeof *rings);
        for (int i = 0; i < nthreads; i++)
            rings[i].buf = bench_map(RING_CAP * sizeof(void *));
        secs = run_threads(xmalloc_thread);
    } else if (!strcmp(wl, "scratch") || !strcmp(wl, "thrash")) {
        scratch_mode = !strcmp(wl, "scratch");
        if (scratch_mode) {
            scratch_objs = bench_map((size_t)nthreads * sizeof *scratch_objs);
            for (int i = 0; i < nthreads; i++) {
                scratch_objs[i] = xmalloc(8);
                tag_set(scratch_objs[i], 8);
                live_add(&ts[i], 8);
            }
        }
        secs = run_threads(false_sharing_thread);
    } else if (!strcmp(wl, "sizes")) {
        sweep_init();
        secs = run_threads(sizes_thread);
    } else if (!strcmp(wl, "realloc")) {
        secs = run_threads(realloc_thread);
    } else if (!strcmp(wl, "tight")) {
        secs = run_threads(tight_thread);
    } else if (!strcmp(wl, "batch")) {
        secs = run_threads(batch_thread);
    } else if (!strcmp(wl, "huge")) {
        secs = run_threads(huge_thread);
    } else {
        goto usage;
    }

    atomic_store(&sampler_stop, true);
    pthread_join(sampler, NULL);
    uint64_t ops = 0;
    size_t bad = 0;
    for (int i = 0; i < nthreads; i++) {
        ops += ts[i].ops;
        bad += ts[i].bad;
    }
    /* Where every thread frees only its own blocks, a thread's own peak is
     * exact, and the sampler may have missed a short peak: take the larger.
     * (With remote frees a thread's own count only grows, so not there.) */
    bool local = !strcmp(wl, "sizes") || !strcmp(wl, "realloc") || !strcmp(wl, "tight") ||
                 !strcmp(wl, "thrash") || !strcmp(wl, "batch") || !strcmp(wl, "huge");
    for (int i = 0; local && i < nthreads; i++)
        if (ts[i].peak > peak_live)
            peak_live = ts[i].peak;
    size_t peak_rss = bench_peak_rss();
    printf("throughput workload=%s threads=%d alloc=%s ops=%llu secs=%.4f mops=%.6f "
           "cpu_secs=%.4f peak_live=%ld peak_rss=%zu rss_start=%zu verify=%s\n",
           wl, nthreads, bench_alloc_name(bench_alloc_detect()), (unsigned long long)ops, secs,
           (double)ops / secs / 1e6, cpu_secs_total, peak_live, peak_rss, rss_start,
           bad ? "FAIL" : "ok");
    if (bad) {
        fprintf(stderr, "throughput: %zu bad tags in %s (allocator %s)\n", bad, wl,
                bench_alloc_name(bench_alloc_detect()));
        return 3;
    }
    return 0;
}
