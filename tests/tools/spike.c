/*
 * spike.c -- the _heapmin issue's scenario as a measuring program (not a
 * test: it asserts nothing but the contents of the live blocks).
 *
 *   T worker threads each allocate LIVE/T bytes they keep, then SPIKE/T bytes
 *   in mixed sizes (every page written), then free the spike (a share of it
 *   by the next worker: remote frees) and block on a condition variable --
 *   alive, idle, their thread caches full. The main thread then calls
 *   _heapmin() once and reports:
 *     baseline  RSS before the live set and the spike (threads already up)
 *     peak      RSS with the spike allocated
 *     before    RSS after the spike was freed, before the trim
 *     after     RSS after the trim
 *     live      bytes the workers still hold (requested sizes)
 *     overhead  after - baseline - live (the first cycle's baseline)
 *     trim_us   how long the _heapmin() call took
 *     stall_us  the longest single malloc or free that a separate prober
 *               thread saw while the call ran ("own": leaving out calls
 *               during which the prober was preempted), and the longest it
 *               saw in the same time just before the call (the noise floor)
 *   Then every byte of the live set is verified (exit status 3 if one
 *   changed), the live set is freed, and the cycle repeats (-r).
 *
 * Build and run (drop-in library, or any other allocator by LD_PRELOAD; the
 * trim call is found with dlsym: _heapmin, else glibc's malloc_trim(0)):
 *   cc -O2 -pthread -Iinclude -Itests/common tests/tools/spike.c -o build/spike
 *   LD_PRELOAD=build/libtrimalloc.so build/spike -t 8 -s 1024 -l 19
 *
 * Options:
 *   -t N    worker threads (8)
 *   -s MIB  spike size, all workers together (1024)
 *   -l MIB  live bytes kept, all workers together (19)
 *   -r N    repetitions of the whole cycle (3)
 *   -x PCT  share of spike blocks freed by the next worker (25)
 *   -m before|mixed
 *           before: the live set is allocated before the spike (a service's
 *           steady working set; default); mixed: live blocks are allocated
 *           at random among the spike blocks, so they pin partly used slabs
 *           and pages (the worst case for any allocator)
 *   -H      no huge blocks in the spike (only sizes <= 2 MiB)
 *   -p N    prober threads (1)
 *   -q      one key=value line per repetition only
 *
 * Memory for the program's own bookkeeping comes from mmap and is written
 * before the baseline is taken, so RSS differences are the allocator's.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "test_util.h"

/* ---- parameters ---------------------------------------------------------- */
static int nworkers = 8, nprobers = 1, reps = 3, quiet;
static size_t spike_bytes = (size_t)1024 << 20, live_bytes = (size_t)19 << 20;
static unsigned cross_pct = 25;
static bool live_mixed, no_huge;

/* ---- helpers --------------------------------------------------------------- */
static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *msg)
{
    fprintf(stderr, "spike: %s\n", msg);
    exit(2);
}

/* Bookkeeping memory: mmap'd and written now, so it is in the baseline. */
static void *book_alloc(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("mmap for bookkeeping failed");
    memset(p, 0, bytes);
    return p;
}

static long thread_nivcsw(void)
{
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    return ru.ru_nivcsw;
}

static double mib(double bytes) { return bytes / (1024.0 * 1024.0); }

/* ---- the trim call, whichever allocator is loaded ------------------------- */
static int (*fn_heapmin)(void);
static int (*fn_malloc_trim)(size_t);
static int (*fn_stats_get)(trimalloc_stats_t *);
static const char *trim_name = "none";

static void find_trim(void)
{
#ifdef TRIMALLOC_PREFIX
    fn_heapmin = TM_API(_heapmin);
    fn_stats_get = TM_API(trimalloc_stats_get);
    trim_name = "tm__heapmin";
    return;
#endif
    fn_heapmin = (int (*)(void))dlsym(RTLD_DEFAULT, "_heapmin");
    fn_malloc_trim = (int (*)(size_t))dlsym(RTLD_DEFAULT, "malloc_trim");
    fn_stats_get = (int (*)(trimalloc_stats_t *))dlsym(RTLD_DEFAULT, "trimalloc_stats_get");
    trim_name = fn_heapmin ? "_heapmin" : fn_malloc_trim ? "malloc_trim" : "none";
}

static int do_trim(void)
{
    if (fn_heapmin)
        return fn_heapmin();
    if (fn_malloc_trim)
        return fn_malloc_trim(0);
    return 0;
}

/* ---- workers -------------------------------------------------------------- */
typedef struct blk {
    unsigned char *p;
    size_t size;
    uint64_t seed; /* live blocks: pattern seed */
} blk_t;

typedef struct worker {
    int id;
    pthread_t thread;
    blk_t *spike;        /* this worker's spike blocks */
    size_t nspike, spike_cap;
    blk_t *live;
    size_t nlive, live_cap;
    size_t live_req, live_usable;
    /* blocks the previous worker hands us to free (cross-thread frees) */
    blk_t *inbox;
    size_t ninbox, inbox_cap;
} worker_t;

static worker_t *workers;

/* Phases, driven by the main thread; workers wait on phase_cond. */
enum { PH_IDLE, PH_LIVE, PH_SPIKE, PH_FREE, PH_CHECK, PH_EXIT };
static pthread_mutex_t phase_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t phase_cond = PTHREAD_COND_INITIALIZER;
static int phase = PH_IDLE, phase_gen;
static int done_count;
static atomic_int verify_failed;

static void phase_done(void)
{
    pthread_mutex_lock(&phase_lock);
    done_count++;
    pthread_cond_broadcast(&phase_cond);
    pthread_mutex_unlock(&phase_lock);
}

/* Main: start phase p and wait until every worker reported it done. */
static void run_phase(int p)
{
    pthread_mutex_lock(&phase_lock);
    phase = p;
    phase_gen++;
    done_count = 0;
    pthread_cond_broadcast(&phase_cond);
    while (done_count < nworkers)
        pthread_cond_wait(&phase_cond, &phase_lock);
    pthread_mutex_unlock(&phase_lock);
}

/* A spike size of category cat: 0 small 16 B..1 KiB, 1 medium 1..32 KiB,
 * 2 large 32 KiB..2 MiB, 3 huge 2..8 MiB; log-uniform within each. */
static size_t cat_size(tu_rng_t *r, int cat)
{
    static const unsigned lo_shift[4] = {4, 10, 15, 21}, span[4] = {6, 5, 6, 2};
    unsigned sh = lo_shift[cat] + (unsigned)(tu_rand(r) % span[cat]);
    size_t base = (size_t)1 << sh;
    return base + (size_t)(tu_rand(r) % base);
}

static void push(blk_t **arr, size_t *n, size_t cap, blk_t b)
{
    if (*n >= cap)
        die("bookkeeping array too small");
    (*arr)[(*n)++] = b;
}

static blk_t live_new(worker_t *w, size_t size, uint64_t seq)
{
    blk_t b;
    b.p = TM_API(malloc)(size);
    if (!b.p)
        die("malloc failed (live)");
    b.size = size;
    b.seed = tu_pattern_seed(b.p, (uint64_t)w->id, seq);
    tu_fill(b.p, size, b.seed);
    w->live_req += size;
    w->live_usable += TM_API(malloc_usable_size)(b.p);
    return b;
}

/* Allocate this worker's spike; in mixed mode, live blocks among it. Byte
 * shares: 45% small, 25% medium, 20% large, 10% huge (0 with -H, given to
 * large instead). */
static void worker_spike(worker_t *w, tu_rng_t *r)
{
    size_t share = spike_bytes / (size_t)nworkers;
    size_t budget[4] = {share * 45 / 100, share * 25 / 100, share * 20 / 100, share / 10};
    if (no_huge) {
        budget[2] += budget[3];
        budget[3] = 0;
    }
    size_t live_share = live_bytes / (size_t)nworkers, live_left = live_mixed ? live_share : 0;
    uint64_t seq = 0;
    double due = 0;
    for (;;) {
        int cats[4], nc = 0;
        for (int c = 0; c < 4; c++)
            if (budget[c])
                cats[nc++] = c;
        if (!nc)
            break;
        int c = cats[tu_rand(r) % (uint64_t)nc];
        size_t sz = cat_size(r, c);
        if (sz > budget[c])
            sz = budget[c] < 16 ? 16 : budget[c];
        budget[c] -= sz < budget[c] ? sz : budget[c];
        blk_t b = {TM_API(malloc)(sz), sz, 0};
        if (!b.p)
            die("malloc failed (spike)");
        /* write every page */
        for (size_t o = 0; o < sz; o += 4096)
            b.p[o] = (unsigned char)o;
        b.p[sz - 1] = 1;
        push(&w->spike, &w->nspike, w->spike_cap, b);
        /* mixed: live blocks are due in proportion to the spike bytes so
         * far, so they land among the spike blocks all along */
        if (live_left) {
            due += (double)sz * (double)live_share / (double)share;
            while (live_left && due >= 1.0) {
                size_t ls = cat_size(r, tu_rand(r) % 8 == 0 ? 1 : 0);
                if (ls > live_left)
                    ls = live_left < 16 ? 16 : live_left;
                live_left -= ls < live_left ? ls : live_left;
                due -= (double)ls;
                push(&w->live, &w->nlive, w->live_cap, live_new(w, ls, ++seq));
            }
        }
    }
    while (live_left) { /* what the random placement left over */
        size_t ls = live_left < 4096 ? live_left : 4096;
        live_left -= ls;
        push(&w->live, &w->nlive, w->live_cap, live_new(w, ls < 16 ? 16 : ls, ++seq));
    }
}

static void worker_live_before(worker_t *w, tu_rng_t *r)
{
    size_t left = live_bytes / (size_t)nworkers;
    uint64_t seq = 1000000;
    while (left) {
        size_t ls = cat_size(r, tu_rand(r) % 8 == 0 ? 1 : 0);
        if (ls > left)
            ls = left < 16 ? 16 : left;
        left -= ls < left ? ls : left;
        push(&w->live, &w->nlive, w->live_cap, live_new(w, ls, ++seq));
    }
}

/* Free the spike: cross_pct% of blocks go to the next worker's inbox and
 * are freed by it; the rest, and our own inbox, are freed here. Two
 * sub-steps so that every inbox is complete before anyone frees from it. */
static pthread_barrier_t free_barrier;

static void worker_free(worker_t *w, tu_rng_t *r)
{
    worker_t *next = &workers[(w->id + 1) % nworkers];
    for (size_t i = 0; i < w->nspike; i++) {
        blk_t b = w->spike[i];
        if (nworkers > 1 && tu_rand(r) % 100 < cross_pct) {
            /* next->inbox is written only by us (its previous worker) */
            push(&next->inbox, &next->ninbox, next->inbox_cap, b);
        } else {
            TM_API(free)(b.p);
        }
    }
    w->nspike = 0;
    pthread_barrier_wait(&free_barrier);
    for (size_t i = 0; i < w->ninbox; i++)
        TM_API(free)(w->inbox[i].p);
    w->ninbox = 0;
}

static void worker_check(worker_t *w)
{
    for (size_t i = 0; i < w->nlive; i++) {
        blk_t *b = &w->live[i];
        if (tu_find_bad(b->p, b->size, b->seed) != (size_t)-1) {
            fprintf(stderr, "spike: worker %d live block %p (%zu bytes) corrupted\n", w->id,
                    (void *)b->p, b->size);
            atomic_store(&verify_failed, 1);
        }
        TM_API(free)(b->p);
    }
    w->nlive = 0;
    w->live_req = w->live_usable = 0;
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    tu_rng_t r;
    tu_rng_seed(&r, 1234 + (uint64_t)w->id);
    TM_API(free)(TM_API(malloc)(64)); /* make the thread's cache now, before the baseline */
    int seen = 0;
    for (;;) {
        pthread_mutex_lock(&phase_lock);
        while (phase_gen == seen)
            pthread_cond_wait(&phase_cond, &phase_lock); /* idle, alive, blocked */
        seen = phase_gen;
        int p = phase;
        pthread_mutex_unlock(&phase_lock);
        switch (p) {
        case PH_LIVE:
            if (!live_mixed)
                worker_live_before(w, &r);
            break;
        case PH_SPIKE: worker_spike(w, &r); break;
        case PH_FREE: worker_free(w, &r); break;
        case PH_CHECK: worker_check(w); break;
        case PH_EXIT: phase_done(); return NULL;
        }
        phase_done();
    }
}

/* ---- probers ----------------------------------------------------------------- */
static atomic_int probe_stop;
/* 0: warming; 1: measuring the noise floor; 2: measuring during the trim */
static atomic_int probe_window;

typedef struct prober {
    pthread_t thread;
    uint64_t max_ns[3], max_own_ns[3];
    uint64_t ops[3];
} prober_t;

static prober_t *probers;

static void *prober_main(void *arg)
{
    prober_t *pr = arg;
    enum { RING = 256 };
    void *ring[RING] = {0};
    unsigned head = 0;
    tu_rng_t r;
    tu_rng_seed(&r, 99 + (uint64_t)(pr - probers));
    long nivcsw = thread_nivcsw();
    int last_w = 0;
    while (!atomic_load_explicit(&probe_stop, memory_order_relaxed)) {
        int win = atomic_load_explicit(&probe_window, memory_order_relaxed);
        if (win != last_w) {
            nivcsw = thread_nivcsw();
            last_w = win;
        }
        /* mostly small blocks of many classes; now and then a large run */
        size_t sz = tu_rand(&r) % 64 == 0 ? 48 * 1024 : 16 + (size_t)(tu_rand(&r) % 4080);
        uint64_t t0 = now_ns();
        void *old = ring[head];
        if (old)
            TM_API(free)(old);
        uint64_t t1 = now_ns();
        void *p = TM_API(malloc)(sz);
        uint64_t t2 = now_ns();
        if (!p)
            die("prober malloc failed");
        *(volatile char *)p = 1;
        ring[head] = p;
        head = (head + 1) % RING;
        uint64_t d = (t1 - t0) > (t2 - t1) ? (t1 - t0) : (t2 - t1);
        pr->ops[win]++;
        if (d > pr->max_ns[win])
            pr->max_ns[win] = d;
        if (win && d > pr->max_own_ns[win]) {
            /* preempted during the call? then it says more about the
             * machine than about the allocator */
            long now = thread_nivcsw();
            if (now == nivcsw)
                pr->max_own_ns[win] = d;
            nivcsw = now;
        }
    }
    for (unsigned i = 0; i < RING; i++)
        TM_API(free)(ring[i]);
    return NULL;
}

/* ---- breakdown (diagnostic build only) ---------------------------------------
 * Built with -DSPIKE_BREAKDOWN against the prefixed static library and src/,
 * it walks the arenas after each trim and says where the resident bytes
 * are:
 *   cc -O2 -pthread -DSPIKE_BREAKDOWN -DTRIMALLOC_PREFIX -Iinclude -Isrc \
 *      -Itests/common tests/tools/spike.c build/libtrimalloc_prefixed.a -o build/spike_bd
 */
#ifdef SPIKE_BREAKDOWN
#include "internal.h"

typedef struct breakdown {
    size_t chunks, chunk_res;          /* chunks and their resident bytes */
    size_t slab_live_res, slab_empty_res, large_res, free_res, other_res;
    size_t nslabs, nslabs_empty, slab_live_bytes, empty_slab_bytes;
    size_t huge_res, huge_map;
    size_t rss, meta_mapped;
    /* per class: slabs with live blocks, their resident bytes, block bytes */
    size_t cls_slabs[TM_NCLASSES + 1], cls_res[TM_NCLASSES + 1], cls_live[TM_NCLASSES + 1];
} breakdown_t;

static size_t resident_in(uintptr_t base, size_t len, unsigned char *vec)
{
    if (mincore((void *)base, len, vec) != 0)
        return 0;
    size_t n = 0;
    for (size_t i = 0; i < len / 4096; i++)
        n += vec[i] & 1;
    return n * 4096;
}

static void huge_visit(tm_huge_t *h, void *arg)
{
    breakdown_t *b = arg;
    static unsigned char hv[(64u << 20) / 4096];
    size_t len = h->mapped < sizeof hv * 4096 ? h->mapped : sizeof hv * 4096;
    b->huge_res += resident_in(h->base, len, hv);
    b->huge_map += h->mapped;
}

static void breakdown_take(breakdown_t *b)
{
    static unsigned char vec[TM_CHUNK_PAGES];
    memset(b, 0, sizeof *b);
    for (unsigned i = 0; i < TM_MAX_ARENAS; i++) {
        tm_arena_t *a = tm_arenas[i];
        if (!a)
            continue;
        pthread_mutex_lock(&a->lock);
        for (tm_chunk_t *c = a->chunks; c; c = c->next) {
            b->chunks++;
            b->chunk_res += resident_in(c->base, TM_CHUNK, vec);
            for (uint32_t p = 0; p < TM_CHUNK_PAGES;) {
                tm_page_t *h = &c->pages[p];
                uint32_t n = h->npages ? h->npages : 1;
                size_t res = 0;
                for (uint32_t k = p; k < p + n && k < TM_CHUNK_PAGES; k++)
                    res += (vec[k] & 1) ? 4096 : 0;
                if (h->kind == PAGE_SLAB) {
                    tm_slab_t *sl = chunk_slab(c, p);
                    b->nslabs++;
                    if (sl->nfree == sl->nblocks) {
                        b->nslabs_empty++;
                        b->slab_empty_res += res;
                        b->empty_slab_bytes += (size_t)n * 4096;
                    } else {
                        size_t lb = (size_t)(sl->nblocks - sl->nfree) * tm_classes[sl->cls].size;
                        b->slab_live_res += res;
                        b->slab_live_bytes += lb;
                        b->cls_slabs[sl->cls]++;
                        b->cls_res[sl->cls] += res;
                        b->cls_live[sl->cls] += lb;
                    }
                } else if (h->kind == PAGE_LARGE) {
                    b->large_res += res;
                } else if (h->kind == PAGE_FREE) {
                    b->free_res += res;
                } else {
                    b->other_res += res;
                }
                p += n;
            }
        }
        pthread_mutex_unlock(&a->lock);
    }
    huge_lock();
    huge_foreach_locked(huge_visit, b);
    huge_unlock();
    b->rss = tu_rss_bytes();
    b->meta_mapped = meta_mapped();
}

static breakdown_t bd_base;

static void breakdown_print(const char *when, const breakdown_t *b)
{
    printf("  breakdown %s: RSS %.2f MiB = chunks %.2f (in %zu chunks) + huge %.2f + rest %.2f\n"
           "    chunk pages: slabs with live blocks %.2f MiB (%zu slabs, %.2f MiB of blocks out),\n"
           "                 empty slabs kept %.2f MiB (%zu of %zu slabs, %.2f MiB of pages),\n"
           "                 large %.2f, free runs %.2f, other %.2f\n"
           "    metadata mapped %.2f MiB; rest grew %.2f MiB since the baseline\n",
           when, mib((double)b->rss), mib((double)b->chunk_res), b->chunks,
           mib((double)b->huge_res), mib((double)(b->rss - b->chunk_res - b->huge_res)),
           mib((double)b->slab_live_res), b->nslabs - b->nslabs_empty,
           mib((double)b->slab_live_bytes), mib((double)b->slab_empty_res), b->nslabs_empty,
           b->nslabs, mib((double)b->empty_slab_bytes), mib((double)b->large_res),
           mib((double)b->free_res), mib((double)b->other_res), mib((double)b->meta_mapped),
           mib((double)(b->rss - b->chunk_res - b->huge_res) -
               (double)(bd_base.rss - bd_base.chunk_res - bd_base.huge_res)));
    /* where the slack of partly used slabs is: the classes with the most */
    printf("    slab slack (resident - blocks out) by class, largest first:");
    bool used[TM_NCLASSES + 1] = {0};
    for (int k = 0; k < 9; k++) {
        unsigned best = 0;
        double best_slack = 0;
        for (unsigned c = 1; c <= TM_NCLASSES; c++) {
            double sl = (double)b->cls_res[c] - (double)b->cls_live[c];
            if (!used[c] && sl > best_slack) {
                best = c;
                best_slack = sl;
            }
        }
        if (!best)
            break;
        used[best] = true;
        printf("%s %u B x%u pages: %zu slabs %.0f KiB", k % 3 ? "," : "\n     ",
               tm_classes[best].size, tm_classes[best].slab_pages, b->cls_slabs[best],
               best_slack / 1024);
    }
    printf("\n");
}
#endif

/* ---- main ---------------------------------------------------------------------- */
static void usage(void)
{
    fprintf(stderr, "usage: spike [-t threads] [-s spike_mib] [-l live_mib] [-r reps] "
                    "[-x cross_pct] [-m before|mixed] [-H] [-p probers] [-q]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "t:s:l:r:x:m:Hp:q")) != -1) {
        switch (opt) {
        case 't': nworkers = atoi(optarg); break;
        case 's': spike_bytes = (size_t)strtoull(optarg, NULL, 10) << 20; break;
        case 'l': live_bytes = (size_t)(strtod(optarg, NULL) * 1048576.0); break;
        case 'r': reps = atoi(optarg); break;
        case 'x': cross_pct = (unsigned)atoi(optarg); break;
        case 'm':
            if (!strcmp(optarg, "mixed")) live_mixed = true;
            else if (strcmp(optarg, "before")) usage();
            break;
        case 'H': no_huge = true; break;
        case 'p': nprobers = atoi(optarg); break;
        case 'q': quiet = 1; break;
        default: usage();
        }
    }
    if (nworkers < 1 || nprobers < 0 || reps < 1)
        usage();
    find_trim();

    /* Bookkeeping: the spike's blocks average about 540 bytes (45% of the
     * bytes in small blocks averaging 250 B), so share/400 entries leave a
     * third to spare; push() stops the program if they ever run out. */
    size_t share = spike_bytes / (size_t)nworkers;
    size_t spike_cap = share / 400 + 4096, live_cap = live_bytes / (size_t)nworkers / 16 + 1024;
    workers = book_alloc(sizeof(worker_t) * (size_t)nworkers);
    probers = book_alloc(sizeof(prober_t) * (size_t)(nprobers ? nprobers : 1));
    for (int i = 0; i < nworkers; i++) {
        worker_t *w = &workers[i];
        w->id = i;
        w->spike_cap = spike_cap;
        w->spike = book_alloc(spike_cap * sizeof(blk_t));
        w->inbox_cap = spike_cap;
        w->inbox = book_alloc(spike_cap * sizeof(blk_t));
        w->live_cap = live_cap;
        w->live = book_alloc(live_cap * sizeof(blk_t));
    }
    pthread_barrier_init(&free_barrier, NULL, (unsigned)nworkers);
    for (int i = 0; i < nworkers; i++)
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]))
            die("pthread_create");
    for (int i = 0; i < nprobers; i++)
        if (pthread_create(&probers[i].thread, NULL, prober_main, &probers[i]))
            die("pthread_create");
    usleep(50000); /* threads up, caches made, probers in their loop */
    do_trim();

    if (!quiet)
        printf("spike: trim=%s threads=%d spike=%zu MiB live=%.1f MiB mode=%s cross=%u%% "
               "huge=%s probers=%d\n",
               trim_name, nworkers, spike_bytes >> 20, mib((double)live_bytes),
               live_mixed ? "mixed" : "before", cross_pct, no_huge ? "no" : "yes", nprobers);
    int rc = 0;
    size_t baseline0 = 0;
#ifdef SPIKE_BREAKDOWN
    breakdown_take(&bd_base);
    breakdown_print("at the baseline", &bd_base);
#endif
    for (int rep = 0; rep < reps; rep++) {
        size_t baseline = tu_rss_bytes();
        if (rep == 0)
            baseline0 = baseline; /* later cycles are measured against the first */
        run_phase(PH_LIVE);
        run_phase(PH_SPIKE);
        size_t peak = tu_rss_bytes();
        run_phase(PH_FREE);
        size_t before = tu_rss_bytes();
        size_t live_req = 0, live_usable = 0;
        for (int i = 0; i < nworkers; i++) {
            live_req += workers[i].live_req;
            live_usable += workers[i].live_usable;
        }
        trimalloc_stats_t st0 = {0}, st1 = {0};
        if (fn_stats_get)
            fn_stats_get(&st0);

        /* noise floor: the probers alone, as long as the trim will take
         * (guessed as 20 ms), then the trim itself */
        for (int i = 0; i < nprobers; i++)
            memset(probers[i].max_ns, 0, sizeof probers[i].max_ns),
                memset(probers[i].max_own_ns, 0, sizeof probers[i].max_own_ns),
                memset(probers[i].ops, 0, sizeof probers[i].ops);
        atomic_store(&probe_window, 1);
        usleep(20000);
        atomic_store(&probe_window, 2);
        int saved = errno = 4242;
        syscall(SYS_getppid); /* marks the call in strace -f output */
        uint64_t t0 = now_ns();
        int trc = do_trim();
        uint64_t t1 = now_ns();
        syscall(SYS_getppid);
        int e = errno;
        atomic_store(&probe_window, 0);
        size_t after = tu_rss_bytes();
        if (fn_stats_get)
            fn_stats_get(&st1);

        uint64_t stall = 0, stall_own = 0, floor_ns = 0, ops = 0;
        for (int i = 0; i < nprobers; i++) {
            prober_t *pr = &probers[i];
            if (pr->max_ns[2] > stall) stall = pr->max_ns[2];
            if (pr->max_own_ns[2] > stall_own) stall_own = pr->max_own_ns[2];
            if (pr->max_own_ns[1] > floor_ns) floor_ns = pr->max_own_ns[1];
            ops += pr->ops[2];
        }
        double overhead = (double)after - (double)baseline0 - (double)live_req;
        if (quiet) {
            printf("rep=%d baseline=%zu peak=%zu before=%zu after=%zu live=%zu live_usable=%zu "
                   "overhead=%.0f trim_us=%.1f stall_us=%.1f stall_own_us=%.1f "
                   "floor_us=%.1f probe_ops=%llu trim_rc=%d errno_kept=%d\n",
                   rep, baseline, peak, before, after, live_req, live_usable, overhead,
                   (double)(t1 - t0) / 1e3, (double)stall / 1e3, (double)stall_own / 1e3,
                   (double)floor_ns / 1e3, (unsigned long long)ops, trc, e == saved);
        } else {
            printf("rep %d:\n"
                   "  RSS baseline   %9.2f MiB\n"
                   "  RSS peak       %9.2f MiB\n"
                   "  RSS before     %9.2f MiB  (spike freed, before the trim)\n"
                   "  RSS after      %9.2f MiB\n"
                   "  live bytes     %9.2f MiB  (usable %.2f MiB)\n"
                   "  overhead       %9.2f MiB  = after - first baseline - live\n"
                   "  trim call      %9.1f us   (returned %d, errno %s)\n"
                   "  worst stall    %9.1f us   (own, not preempted: %.1f us; %llu probe ops "
                   "during the call)\n"
                   "  noise floor    %9.1f us   (longest own op in 20 ms before the call)\n",
                   rep, mib((double)baseline), mib((double)peak), mib((double)before),
                   mib((double)after), mib((double)live_req), mib((double)live_usable),
                   mib(overhead), (double)(t1 - t0) / 1e3, trc,
                   e == saved ? "kept" : "CHANGED", (double)stall / 1e3,
                   (double)stall_own / 1e3, (unsigned long long)ops, (double)floor_ns / 1e3);
            if (fn_stats_get)
                printf("  trimalloc      tcache %.2f -> %.2f MiB, metadata %.2f -> %.2f MiB, "
                       "mapped %.2f -> %.2f MiB,\n"
                       "                 resident(bound) %.2f -> %.2f MiB, allocated %.2f MiB, "
                       "held pause %.1f us, arenas %u\n",
                       mib((double)st0.tcache_bytes), mib((double)st1.tcache_bytes),
                       mib((double)st0.metadata), mib((double)st1.metadata),
                       mib((double)st0.mapped), mib((double)st1.mapped),
                       mib((double)st0.resident), mib((double)st1.resident),
                       mib((double)st1.allocated), (double)st1.heapmin_last_pause_ns / 1e3,
                       st1.narenas);
        }
#ifdef SPIKE_BREAKDOWN
        breakdown_t bd;
        breakdown_take(&bd);
        breakdown_print("after the trim", &bd);
#endif
        fflush(stdout);
        run_phase(PH_CHECK);
        if (atomic_load(&verify_failed))
            rc = 3;
    }
    run_phase(PH_EXIT);
    for (int i = 0; i < nworkers; i++)
        pthread_join(workers[i].thread, NULL);
    atomic_store(&probe_stop, 1);
    for (int i = 0; i < nprobers; i++)
        pthread_join(probers[i].thread, NULL);
    if (rc)
        fprintf(stderr, "spike: live bytes changed\n");
    return rc;
}
