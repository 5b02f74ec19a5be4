/*
 * many_threads.c -- memory with many busy threads: what thread caches cost.
 *
 *   many_threads [--threads N] [--seconds S]
 *
 * Each of N threads (default 128) holds 3 blocks of each of 48 sizes from
 * 16 B to 8 KiB and, every 10 ms for S seconds (default 3), allocates and
 * frees a burst of 8-63 blocks of each size: the pattern of a server's
 * worker threads that each pass through every size class. A sampler reads
 * VmRSS every 5 ms. Every block a thread holds is filled and checked. Not
 * linked to any allocator: run it under LD_PRELOAD (bench/many_threads.sh
 * runs every allocator found). One line of key=value pairs:
 *   threads, seconds, peak_rss_mib (sampled, and VmHWM if higher),
 *   peak_live_mib (bytes the threads held at once, at most), verify=ok|BAD
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { NSIZES = 48, HELD = 3, BURST_MAX = 63 };

static size_t sizes[NSIZES];
static double seconds = 3;
static atomic_long live, live_peak, bad;
static atomic_int stop;

static long rss_kib(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = 0;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n)) v = atol(line + n);
    if (f) fclose(f);
    return v;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void live_add(long d) {
    long v = atomic_fetch_add(&live, d) + d, p = atomic_load(&live_peak);
    while (v > p && !atomic_compare_exchange_weak(&live_peak, &p, v)) {
    }
}

/* A block's first and last bytes carry its size and a tag. */
static void *get(size_t size, unsigned char tag) {
    unsigned char *p = malloc(size);
    if (!p) {
        fprintf(stderr, "many_threads: malloc(%zu) failed\n", size);
        exit(1);
    }
    memcpy(p, &size, sizeof size);
    p[size - 1] = tag;
    live_add((long)size);
    return p;
}

static void put(void *q, size_t size, unsigned char tag) {
    unsigned char *p = q;
    size_t s;
    memcpy(&s, p, sizeof s);
    if (s != size || p[size - 1] != tag) atomic_fetch_add(&bad, 1);
    live_add(-(long)size);
    free(p);
}

static void *worker(void *arg) {
    uint64_t rng = 0x9e3779b97f4a7c15ull * ((uintptr_t)arg + 1);
    void *held[NSIZES][HELD], *burst[BURST_MAX];
    for (int c = 0; c < NSIZES; c++)
        for (int j = 0; j < HELD; j++) held[c][j] = get(sizes[c], (unsigned char)(c + j));
    double end = now_s() + seconds;
    while (now_s() < end) {
        for (int c = 0; c < NSIZES; c++) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            int m = 8 + (int)(rng % (BURST_MAX - 7));
            for (int j = 0; j < m; j++) burst[j] = get(sizes[c], (unsigned char)j);
            for (int j = 0; j < m; j++) put(burst[j], sizes[c], (unsigned char)j);
        }
        usleep(10000);
    }
    for (int c = 0; c < NSIZES; c++)
        for (int j = 0; j < HELD; j++) put(held[c][j], sizes[c], (unsigned char)(c + j));
    return NULL;
}

static long rss_peak_kib;

static void *sampler(void *arg) {
    (void)arg;
    while (!atomic_load(&stop)) {
        long r = rss_kib("VmRSS:");
        if (r > rss_peak_kib) rss_peak_kib = r;
        usleep(5000);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int nthreads = 128;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) nthreads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--threads N] [--seconds S]\n", argv[0]);
            return 2;
        }
    }
    if (nthreads < 1 || nthreads > 4096 || seconds <= 0) {
        fprintf(stderr, "many_threads: bad --threads or --seconds\n");
        return 2;
    }
    for (int c = 0; c < NSIZES; c++) /* denser at the small end */
        sizes[c] = 16 + (size_t)((8192 - 16) * (double)c * c / ((NSIZES - 1) * (NSIZES - 1)));
    pthread_t s, *t = calloc((size_t)nthreads, sizeof *t);
    if (!t || pthread_create(&s, NULL, sampler, NULL)) return 1;
    for (long i = 0; i < nthreads; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)i)) {
            fprintf(stderr, "many_threads: pthread_create failed at %ld threads\n", i);
            return 1;
        }
    for (int i = 0; i < nthreads; i++) pthread_join(t[i], NULL);
    atomic_store(&stop, 1);
    pthread_join(s, NULL);
    long hwm = rss_kib("VmHWM:");
    if (hwm > rss_peak_kib) rss_peak_kib = hwm;
    printf("threads=%d seconds=%g peak_rss_mib=%.1f peak_live_mib=%.1f verify=%s\n", nthreads,
           seconds, rss_peak_kib / 1024.0, atomic_load(&live_peak) / 1048576.0,
           atomic_load(&bad) ? "BAD" : "ok");
    free(t);
    return atomic_load(&bad) ? 1 : 0;
}
