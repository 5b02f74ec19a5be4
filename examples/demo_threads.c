/*
 * demo_threads.c -- a short multi-threaded demo of trimalloc's _heapmin().
 *
 * NTHREADS threads each allocate a burst of blocks of mixed sizes and fill
 * them. Then every thread frees half of its own blocks and half of its
 * neighbour's (cross-thread frees), keeping 1 block in 32 alive, and blocks.
 * While they are blocked the main thread reads the RSS, calls _heapmin() and
 * reads it again; then the threads re-check their surviving blocks, free them
 * and exit. Every block's contents are verified before it is freed.
 *
 * _heapmin is looked up with dlsym(RTLD_DEFAULT, ...), so the same binary runs
 * with the system malloc too (it prints "not available" there):
 *
 *     cc -O2 -pthread demo_threads.c -o demo_threads -ldl
 *     ./demo_threads                                   # system malloc
 *     LD_PRELOAD=build/libtrimalloc.so ./demo_threads  # trimalloc
 *
 * Usage: demo_threads [threads [blocks-per-thread]]   (default 8 16000)
 * Exit status: 0 if all data checked out (and _heapmin, where present,
 * returned 0), 1 otherwise.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 256
#define KEEP_EVERY 32 /* 1 block in KEEP_EVERY survives _heapmin */

static int nthreads = 8;
static int nblocks = 16000;
static unsigned char **blocks; /* [thread * nblocks + k] */
static uint32_t *sizes;
static pthread_barrier_t burst_done, frees_done, heapmin_done;
static long bad_blocks;
static pthread_mutex_t bad_lock = PTHREAD_MUTEX_INITIALIZER;

static unsigned char pattern(int t, int k)
{
    return (unsigned char)(t * 131 + k * 7 + 1);
}

/* Mixed sizes: mostly small, some medium, a few large (xorshift, per thread). */
static uint32_t pick_size(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    uint32_t r = (uint32_t)(*s % 1000), x = (uint32_t)(*s >> 32);
    if (r < 750)
        return 16 + x % 241; /* 16 B .. 256 B */
    if (r < 970)
        return 257 + x % 1792; /* .. 2 KiB */
    if (r < 998)
        return 2049 + x % 30720; /* .. 32 KiB */
    return 32769 + x % (480 * 1024); /* .. 512 KiB */
}

static int check_block(int t, int k)
{
    const unsigned char *p = blocks[(size_t)t * nblocks + k];
    unsigned char want = pattern(t, k);
    for (uint32_t i = 0; i < sizes[(size_t)t * nblocks + k]; i++)
        if (p[i] != want)
            return 0;
    return 1;
}

static void check_and_free(int t, int k, long *bad)
{
    size_t i = (size_t)t * nblocks + k;
    if (!check_block(t, k))
        (*bad)++;
    free(blocks[i]);
    blocks[i] = NULL;
}

static void *worker(void *arg)
{
    int me = (int)(intptr_t)arg, next = (me + 1) % nthreads;
    uint64_t seed = 0x9E3779B97F4A7C15ULL * (uint64_t)(me + 1);
    long bad = 0;

    /* 1. The burst: allocate and fill. */
    for (int k = 0; k < nblocks; k++) {
        size_t i = (size_t)me * nblocks + k;
        sizes[i] = pick_size(&seed);
        blocks[i] = malloc(sizes[i]);
        if (!blocks[i]) {
            fprintf(stderr, "thread %d: malloc(%u) failed\n", me, sizes[i]);
            exit(1);
        }
        memset(blocks[i], pattern(me, k), sizes[i]);
    }
    pthread_barrier_wait(&burst_done);

    /* 2. Free: our even blocks, the neighbour's odd ones (a cross-thread
     * free when there is more than one thread); keep 1 in KEEP_EVERY. */
    for (int k = 0; k < nblocks; k++) {
        if (k % KEEP_EVERY == 0)
            continue;
        if (k % 2 == 0)
            check_and_free(me, k, &bad);
        else
            check_and_free(next, k, &bad);
    }
    pthread_barrier_wait(&frees_done);
    /* ... the main thread calls _heapmin() while we wait here ... */
    pthread_barrier_wait(&heapmin_done);

    /* 3. The survivors must have come through _heapmin intact. */
    for (int k = 0; k < nblocks; k += KEEP_EVERY)
        check_and_free(me, k, &bad);

    pthread_mutex_lock(&bad_lock);
    bad_blocks += bad;
    pthread_mutex_unlock(&bad_lock);
    return NULL;
}

/* Resident set size in bytes, from /proc/self/statm (no allocation). */
static double rss_mib(void)
{
    char buf[128];
    long pages_total = 0, pages_rss = 0;
    int fd = open("/proc/self/statm", O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    if (sscanf(buf, "%ld %ld", &pages_total, &pages_rss) != 2)
        return -1;
    return (double)pages_rss * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        nthreads = atoi(argv[1]);
    if (argc > 2)
        nblocks = atoi(argv[2]);
    if (nthreads < 1 || nthreads > MAX_THREADS || nblocks < 1) {
        fprintf(stderr, "usage: %s [threads (1-%d) [blocks-per-thread]]\n", argv[0], MAX_THREADS);
        return 2;
    }

    /* Which malloc is this, and is there a _heapmin? */
    Dl_info info;
    void *malloc_sym = dlsym(RTLD_DEFAULT, "malloc");
    const char *from = malloc_sym && dladdr(malloc_sym, &info) && info.dli_fname
                           ? info.dli_fname : "unknown";
    int (*heapmin)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "_heapmin");
    Dl_info hinfo; /* a _heapmin of an object that does not serve malloc trims nothing */
    if (heapmin && (!malloc_sym || !dladdr((void *)heapmin, &hinfo) ||
                    !dladdr(malloc_sym, &info) || hinfo.dli_fbase != info.dli_fbase))
        heapmin = NULL;

    size_t total = (size_t)nthreads * nblocks;
    blocks = calloc(total, sizeof(*blocks));
    sizes = calloc(total, sizeof(*sizes));
    if (!blocks || !sizes) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    pthread_barrier_init(&burst_done, NULL, (unsigned)nthreads + 1);
    pthread_barrier_init(&frees_done, NULL, (unsigned)nthreads + 1);
    pthread_barrier_init(&heapmin_done, NULL, (unsigned)nthreads + 1);

    double rss_start = rss_mib();
    pthread_t tid[MAX_THREADS];
    double t0 = now_s();
    for (int t = 0; t < nthreads; t++)
        if (pthread_create(&tid[t], NULL, worker, (void *)(intptr_t)t) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
    pthread_barrier_wait(&burst_done);
    double burst_s = now_s() - t0;
    double rss_burst = rss_mib();
    size_t bytes = 0;
    for (size_t i = 0; i < total; i++)
        bytes += sizes[i];

    pthread_barrier_wait(&frees_done);
    double rss_freed = rss_mib();
    int heapmin_rc = 0;
    double heapmin_ms = 0, rss_heapmin = 0;
    if (heapmin) {
        double h0 = now_s();
        heapmin_rc = heapmin();
        heapmin_ms = (now_s() - h0) * 1e3;
        rss_heapmin = rss_mib();
    }
    pthread_barrier_wait(&heapmin_done);
    for (int t = 0; t < nthreads; t++)
        pthread_join(tid[t], NULL);
    double rss_exit = rss_mib();

    printf("demo: %d threads x %d blocks (16 B - 512 KiB, %.1f MiB requested), "
           "half freed cross-thread\n",
           nthreads, nblocks, (double)bytes / (1024.0 * 1024.0));
    printf("malloc from: %s\n", from);
    printf("  %-34s %10s\n", "phase", "RSS (MiB)");
    printf("  %-34s %10.1f\n", "start", rss_start);
    printf("  %-34s %10.1f   (%.3f s, %.2f M allocs/s)\n", "after the burst (all live)",
           rss_burst, burst_s, (double)total / burst_s / 1e6);
    printf("  %-34s %10.1f\n", "after the frees (1/32 live)", rss_freed);
    if (heapmin)
        printf("  %-34s %10.1f   (returned %d in %.2f ms)\n", "after _heapmin(), threads blocked",
               rss_heapmin, heapmin_rc, heapmin_ms);
    else
        printf("  %-34s %10s\n", "after _heapmin(), threads blocked", "not available");
    printf("  %-34s %10.1f\n", "after the threads exit", rss_exit);
    printf("data check: %s (%zu blocks verified, %zu of them again after _heapmin)\n",
           bad_blocks ? "FAILED" : "OK", total,
           (size_t)nthreads * (size_t)((nblocks + KEEP_EVERY - 1) / KEEP_EVERY));
    if (bad_blocks)
        printf("  %ld corrupted blocks\n", bad_blocks);

    free(blocks);
    free(sizes);
    return bad_blocks || heapmin_rc != 0 ? 1 : 0;
}
