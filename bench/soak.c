/*
 * soak.c -- a long mixed workload that verifies every byte it holds, while
 * another thread calls _heapmin() every ~100 ms. Not a test of the default
 * run: bench/soak.sh [minutes] builds and runs it (docs/reliability.md has
 * the figures of a 10-minute run).
 *
 *   soak [-s SECONDS] [-t THREADS] [-i HEAPMIN_MS] [-l LIVE_MIB_PER_THREAD]
 *        (defaults: 60 s, 4 threads, 100 ms, 16 MiB)
 *
 * Workers: each owns a table of blocks and loops on random operations:
 * malloc/calloc/aligned_alloc of a random size (1 B .. 4 MiB, mostly
 * small: 80% <= 1 KiB, 15% <= 32 KiB, 4% <= 1 MiB, 1% <= 4 MiB), realloc
 * to a new random size, free, and hand-over: the block goes to another
 * worker's mailbox, and that worker verifies it and frees or keeps it
 * (cross-thread frees). Every block is filled with a byte of its own over
 * its whole size; every byte is checked before it is freed or reallocated
 * (realloc: the kept prefix), and every worker sweeps all its blocks about
 * once a second. Workers live 5..20 s and are replaced (thread exit drains
 * their caches); a retiring worker hands half its blocks to the others.
 *
 * The trimmer thread calls _heapmin() every HEAPMIN_MS (must return 0) and
 * _heapchk() every 5 s (must return _HEAPOK), and reads the peak RSS.
 *
 * At the end everything is freed, _heapmin() called once more, and a
 * summary printed: operations, blocks checked, bytes verified, _heapmin and
 * _heapchk calls, RSS at start/end (from /proc/self/statm) and its peak
 * (VmHWM, from /proc/self/status), errors.
 * Exit status 1 on any error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "trimalloc.h"

#define MAX_THREADS 64
#define SLOTS 8192
#define MAILBOX 1024

typedef struct blk {
    unsigned char *p;
    size_t size;
    unsigned char fill;
} blk_t;

typedef struct mailbox {
    pthread_mutex_t mu;
    blk_t q[MAILBOX];
    unsigned n;
} mailbox_t;

static int nthreads = 4;
static double seconds = 60;
static unsigned heapmin_ms = 100;
static size_t live_cap = (size_t)16 << 20;

static mailbox_t mbox[MAX_THREADS];
static volatile int stop_all;
static uint64_t t_ops, t_checked_blocks, t_checked_bytes, t_xfer, t_threads_started;
static uint64_t n_errors, n_heapmin, n_heapchk;
static int64_t blocks_live; /* allocated - freed, by the program's count */
static size_t rss_start, rss_peak;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static size_t rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, res = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &res) != 2) res = 0;
        fclose(f);
    }
    return (size_t)res * (size_t)sysconf(_SC_PAGESIZE);
}

/* The kernel's high-water mark of the RSS (VmHWM): the true peak, where
 * samples taken after each _heapmin() would miss what built up between. */
static size_t rss_hwm_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0;
    if (f) {
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "VmHWM: %zu kB", &kb) == 1) break;
        fclose(f);
    }
    return kb << 10;
}

static void error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#include <stdarg.h>
static void error(const char *fmt, ...) {
    uint64_t n = __atomic_add_fetch(&n_errors, 1, __ATOMIC_RELAXED);
    if (n > 20) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "soak: ERROR: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static uint64_t rnd(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static size_t random_size(uint64_t *s) {
    unsigned r = (unsigned)(rnd(s) % 100);
    if (r < 80) return 1 + rnd(s) % 1024;
    if (r < 95) return 1025 + rnd(s) % (32768 - 1024);
    if (r < 99) return 32769 + rnd(s) % ((1 << 20) - 32768);
    return ((size_t)1 << 20) + rnd(s) % ((size_t)3 << 20);
}

/* Index of the first byte of p[0..n) that is not c, or n. */
static size_t first_diff(const unsigned char *p, size_t n, unsigned char c) {
    size_t i = 0;
    while (i < n && ((uintptr_t)(p + i) & 7)) {
        if (p[i] != c) return i;
        i++;
    }
    uint64_t pat = 0x0101010101010101ull * c;
    for (; i + 8 <= n; i += 8)
        if (*(const uint64_t *)(p + i) != pat) break;
    for (; i < n; i++)
        if (p[i] != c) return i;
    return n;
}

typedef struct worker {
    int id;
    uint64_t rng;
    blk_t b[SLOTS];
    unsigned n;
    size_t live;
    uint64_t ops, checked_blocks, checked_bytes, xfer;
} worker_t;

static void verify(worker_t *w, const blk_t *b, size_t n, const char *when) {
    size_t i = first_diff(b->p, n, b->fill);
    w->checked_blocks++;
    w->checked_bytes += n;
    if (i != n)
        error("%s: block %p (%zu bytes): byte %zu is 0x%02x, expected 0x%02x", when,
              (void *)b->p, b->size, i, b->p[i], b->fill);
}

static unsigned char new_fill(worker_t *w) { return (unsigned char)(1 + rnd(&w->rng) % 255); }

static void keep(worker_t *w, blk_t b) {
    w->b[w->n++] = b;
    w->live += b.size;
}

static blk_t take(worker_t *w, unsigned i) {
    blk_t b = w->b[i];
    w->b[i] = w->b[--w->n];
    w->live -= b.size;
    return b;
}

static void release(worker_t *w, blk_t b) {
    verify(w, &b, b.size, "before free");
    __atomic_sub_fetch(&blocks_live, 1, __ATOMIC_RELAXED);
    if (rnd(&w->rng) & 1) free_sized(b.p, b.size);
    else free(b.p);
}

static void do_alloc(worker_t *w) {
    size_t size = random_size(&w->rng);
    while (w->n && (w->n == SLOTS || w->live + size > live_cap))
        release(w, take(w, (unsigned)(rnd(&w->rng) % w->n)));
    unsigned kind = (unsigned)(rnd(&w->rng) % 10);
    unsigned char *p;
    if (kind < 7) {
        p = malloc(size);
    } else if (kind < 9) {
        p = calloc(1, size);
        if (p && first_diff(p, size, 0) != size) error("calloc(%zu) = %p is not zeroed", size, (void *)p);
    } else {
        size_t align = (size_t)1 << (4 + rnd(&w->rng) % 9); /* 16 .. 4096 */
        p = aligned_alloc(align, size);
        if (p && ((uintptr_t)p & (align - 1))) error("aligned_alloc(%zu) = %p misaligned", align, (void *)p);
    }
    if (!p) {
        error("allocation of %zu bytes failed (errno %d)", size, errno);
        return;
    }
    blk_t b = {p, size, new_fill(w)};
    memset(p, b.fill, size);
    __atomic_add_fetch(&blocks_live, 1, __ATOMIC_RELAXED);
    keep(w, b);
}

static void do_realloc(worker_t *w) {
    if (!w->n) return;
    unsigned i = (unsigned)(rnd(&w->rng) % w->n);
    size_t size = random_size(&w->rng);
    if (w->live - w->b[i].size + size > live_cap) return;
    blk_t b = take(w, i);
    verify(w, &b, b.size, "before realloc");
    unsigned char *p = realloc(b.p, size);
    if (!p) {
        error("realloc(%zu -> %zu) failed (errno %d)", b.size, size, errno);
        keep(w, b);
        return;
    }
    blk_t nb = {p, size, b.fill};
    verify(w, &nb, b.size < size ? b.size : size, "after realloc (kept prefix)");
    nb.fill = new_fill(w);
    memset(p, nb.fill, size);
    keep(w, nb);
}

static void do_handover(worker_t *w) {
    if (!w->n || nthreads < 2) return;
    int to = (int)(rnd(&w->rng) % (unsigned)(nthreads - 1));
    if (to >= w->id) to++;
    mailbox_t *m = &mbox[to];
    pthread_mutex_lock(&m->mu);
    if (m->n < MAILBOX) {
        m->q[m->n++] = take(w, (unsigned)(rnd(&w->rng) % w->n));
        w->xfer++;
    }
    pthread_mutex_unlock(&m->mu);
}

/* Blocks other workers handed over: verify, then free or keep. */
static void drain_mailbox(worker_t *w) {
    blk_t got[MAILBOX];
    mailbox_t *m = &mbox[w->id];
    pthread_mutex_lock(&m->mu);
    unsigned n = m->n;
    memcpy(got, m->q, n * sizeof got[0]);
    m->n = 0;
    pthread_mutex_unlock(&m->mu);
    for (unsigned i = 0; i < n; i++) {
        if (rnd(&w->rng) % 4 == 0 && w->n < SLOTS && w->live + got[i].size <= live_cap) {
            verify(w, &got[i], got[i].size, "handed over");
            keep(w, got[i]);
        } else {
            release(w, got[i]);
        }
    }
}

static void sweep(worker_t *w) {
    for (unsigned i = 0; i < w->n; i++) verify(w, &w->b[i], w->b[i].size, "sweep");
}

static void *worker_main(void *arg) {
    worker_t *w = arg;
    uint64_t start = now_ns(), last_sweep = start;
    uint64_t life = (5 + rnd(&w->rng) % 16) * 1000000000ull;
    while (!stop_all && now_ns() - start < life) {
        for (int k = 0; k < 256; k++) {
            unsigned r = (unsigned)(rnd(&w->rng) % 100);
            if (r < 45) do_alloc(w);
            else if (r < 80) { if (w->n) release(w, take(w, (unsigned)(rnd(&w->rng) % w->n))); }
            else if (r < 90) do_realloc(w);
            else do_handover(w);
            w->ops++;
        }
        drain_mailbox(w);
        uint64_t t = now_ns();
        if (t - last_sweep > 1000000000ull) {
            sweep(w);
            last_sweep = t;
        }
    }
    /* Retire: half the blocks go to the others, the rest are freed here. */
    while (w->n) {
        if (!stop_all && (rnd(&w->rng) & 1)) do_handover(w);
        if (w->n) release(w, take(w, w->n - 1));
    }
    drain_mailbox(w); /* may keep some: free those too */
    while (w->n) release(w, take(w, w->n - 1));
    __atomic_add_fetch(&t_ops, w->ops, __ATOMIC_RELAXED);
    __atomic_add_fetch(&t_checked_blocks, w->checked_blocks, __ATOMIC_RELAXED);
    __atomic_add_fetch(&t_checked_bytes, w->checked_bytes, __ATOMIC_RELAXED);
    __atomic_add_fetch(&t_xfer, w->xfer, __ATOMIC_RELAXED);
    return NULL;
}

static void *trimmer_main(void *arg) {
    (void)arg;
    uint64_t last_chk = now_ns();
    while (!stop_all) {
        usleep(heapmin_ms * 1000);
        int rc = _heapmin();
        __atomic_add_fetch(&n_heapmin, 1, __ATOMIC_RELAXED);
        if (rc != 0) error("_heapmin() returned %d (errno %d)", rc, errno);
        size_t r = rss_hwm_bytes();
        if (r > rss_peak) rss_peak = r;
        if (now_ns() - last_chk > 5000000000ull) {
            rc = _heapchk();
            n_heapchk++;
            if (rc != _HEAPOK) error("_heapchk() returned %d", rc);
            last_chk = now_ns();
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    int opt;
    while ((opt = getopt(argc, argv, "s:t:i:l:")) != -1) {
        switch (opt) {
        case 's': seconds = atof(optarg); break;
        case 't': nthreads = atoi(optarg); break;
        case 'i': heapmin_ms = (unsigned)atoi(optarg); break;
        case 'l': live_cap = (size_t)atol(optarg) << 20; break;
        default:
            fprintf(stderr, "usage: %s [-s seconds] [-t threads] [-i heapmin_ms] [-l live_mib]\n", argv[0]);
            return 2;
        }
    }
    if (nthreads < 1 || nthreads > MAX_THREADS || heapmin_ms < 1) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < MAX_THREADS; i++) pthread_mutex_init(&mbox[i].mu, NULL);
    rss_start = rss_peak = rss_bytes();
    printf("soak: %.0f s, %d worker threads (replaced every 5..20 s), _heapmin every %u ms, "
           "%zu MiB live per thread at most\n", seconds, nthreads, heapmin_ms, live_cap >> 20);

    pthread_t trimmer, th[MAX_THREADS];
    worker_t *ws[MAX_THREADS] = {0};
    pthread_create(&trimmer, NULL, trimmer_main, NULL);
    uint64_t start = now_ns(), end = start + (uint64_t)(seconds * 1e9), last_report = start;
    uint64_t seed = start ^ (uint64_t)getpid() << 32;
    for (int i = 0; i < nthreads; i++) {
        ws[i] = calloc(1, sizeof(worker_t));
        ws[i]->id = i;
        ws[i]->rng = (seed += 0x9e3779b97f4a7c15ull) | 1;
        pthread_create(&th[i], NULL, worker_main, ws[i]);
        t_threads_started++;
    }
    /* Replace workers as they retire, until the time is up. */
    while (now_ns() < end) {
        usleep(50000);
        for (int i = 0; i < nthreads; i++) {
            if (pthread_tryjoin_np(th[i], NULL) != 0) continue;
            uint64_t r = ws[i]->rng;
            free(ws[i]);
            ws[i] = calloc(1, sizeof(worker_t));
            ws[i]->id = i;
            ws[i]->rng = r * 0x2545f4914f6cdd1dull | 1;
            pthread_create(&th[i], NULL, worker_main, ws[i]);
            t_threads_started++;
        }
        if (now_ns() - last_report > 60000000000ull) {
            last_report = now_ns();
            trimalloc_stats_t st;
            trimalloc_stats_get(&st);
            if (rss_hwm_bytes() > rss_peak) rss_peak = rss_hwm_bytes();
            printf("soak: %4.0f s: rss %zu MiB (peak %zu), allocated %zu MiB, mapped %zu MiB, "
                   "_heapmin calls %llu, errors %llu\n", (double)(last_report - start) / 1e9,
                   rss_bytes() >> 20, rss_peak >> 20, st.allocated >> 20, st.mapped >> 20,
                   (unsigned long long)n_heapmin, (unsigned long long)n_errors);
        }
    }
    stop_all = 1;
    for (int i = 0; i < nthreads; i++) pthread_join(th[i], NULL);
    pthread_join(trimmer, NULL);
    /* Mailboxes of workers that retired after the others finished. */
    worker_t *last = calloc(1, sizeof(worker_t));
    last->rng = 1;
    for (int i = 0; i < nthreads; i++) {
        last->id = i;
        drain_mailbox(last);
        while (last->n) release(last, take(last, last->n - 1));
    }
    t_checked_blocks += last->checked_blocks;
    t_checked_bytes += last->checked_bytes;
    free(last);
    for (int i = 0; i < nthreads; i++) free(ws[i]);
    size_t rss_before = rss_bytes();
    int rc = _heapmin();
    n_heapmin++;
    if (rc != 0) error("final _heapmin() returned %d", rc);
    rc = _heapchk();
    n_heapchk++;
    if (rc != _HEAPOK && rc != _HEAPEMPTY) error("final _heapchk() returned %d", rc);
    size_t rss_end = rss_bytes();
    /* What is still in use: the program holds nothing but stdio's buffer
     * and what libc keeps per thread, so this is a leak indicator. */
    _HEAPINFO e = {0};
    size_t used_n = 0, used_bytes = 0, largest = 0;
    void *largest_p = NULL;
    while (_heapwalk(&e) == _HEAPOK)
        if (e._useflag == _USEDENTRY) {
            used_n++;
            used_bytes += e._size;
            if (e._size > largest) largest = e._size, largest_p = e._pentry;
        }
    trimalloc_stats_t st;
    trimalloc_stats_get(&st);
    double el = (double)(now_ns() - start) / 1e9;
    printf("soak: ran %.1f s with %d threads at a time (%llu threads in all)\n", el, nthreads,
           (unsigned long long)t_threads_started);
    printf("soak: operations %llu (%.0f/s), cross-thread hand-overs %llu\n",
           (unsigned long long)t_ops, (double)t_ops / el, (unsigned long long)t_xfer);
    printf("soak: verified %llu blocks, %llu MiB\n", (unsigned long long)t_checked_blocks,
           (unsigned long long)(t_checked_bytes >> 20));
    printf("soak: _heapmin calls %llu, _heapchk calls %llu\n", (unsigned long long)n_heapmin,
           (unsigned long long)n_heapchk);
    if (rss_hwm_bytes() > rss_peak) rss_peak = rss_hwm_bytes();
    printf("soak: RSS start %zu MiB, peak %zu MiB, after freeing everything %zu MiB, after the "
           "last _heapmin %zu MiB (trimalloc: mapped %zu MiB, allocated %zu bytes)\n",
           rss_start >> 20, rss_peak >> 20, rss_before >> 20, rss_end >> 20, st.mapped >> 20,
           st.allocated);
    printf("soak: blocks the program has not freed by its own count: %lld\n", (long long)blocks_live);
    if (blocks_live) error("%lld blocks not freed: the soak program lost track of them", (long long)blocks_live);
    printf("soak: still in use after freeing everything: %zu blocks, %zu bytes (largest %zu at %p)\n",
           used_n, used_bytes, largest, largest_p);
    if (getenv("SOAK_DEBUG")) {
        _HEAPINFO e2 = {0};
        while (_heapwalk(&e2) == _HEAPOK)
            if (e2._useflag == _USEDENTRY) {
                const unsigned char *q = (const unsigned char *)e2._pentry;
                printf("  used %p size %zu first bytes %02x %02x %02x %02x uniform-prefix %zu\n",
                       (void *)q, e2._size, q[0], q[1], q[2], q[3], first_diff(q, e2._size, q[0]));
            }
    }
    printf("soak: errors %llu\n", (unsigned long long)n_errors);
    printf("soak: %s\n", n_errors ? "FAIL" : "PASS");
    return n_errors ? 1 : 0;
}
