/*
 * bench_common.h -- helpers shared by the trimalloc benchmark programs.
 *
 * Every benchmark is allocator-agnostic: it calls plain malloc/free and is
 * run under LD_PRELOAD=<lib> (glibc = no preload). These helpers find out at
 * run time which allocator actually answered, by dlsym() probes for each
 * allocator's own entry points, so a script can check that the preload took
 * effect (it also does under valgrind, which keeps LD_PRELOAD).
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* The allocators we know how to talk to. */
enum bench_alloc { BA_GLIBC, BA_TRIMALLOC, BA_JEMALLOC, BA_TCMALLOC, BA_MIMALLOC };

static inline const char *bench_alloc_name(enum bench_alloc a)
{
    switch (a) {
    case BA_TRIMALLOC: return "trimalloc";
    case BA_JEMALLOC: return "jemalloc";
    case BA_TCMALLOC: return "tcmalloc";
    case BA_MIMALLOC: return "mimalloc";
    default: return "glibc";
    }
}

/* Which allocator serves malloc in this process: probe each one's own API.
 * Order matters only if two were preloaded at once (then the first wins). */
static inline enum bench_alloc bench_alloc_detect(void)
{
    if (dlsym(RTLD_DEFAULT, "_heapmin") && dlsym(RTLD_DEFAULT, "trimalloc_stats_get"))
        return BA_TRIMALLOC;
    if (dlsym(RTLD_DEFAULT, "mallctl"))
        return BA_JEMALLOC;
    if (dlsym(RTLD_DEFAULT, "MallocExtension_ReleaseFreeMemory"))
        return BA_TCMALLOC;
    if (dlsym(RTLD_DEFAULT, "mi_collect"))
        return BA_MIMALLOC;
    return BA_GLIBC;
}

/* The file that defines the malloc this process calls (dladdr on the symbol
 * the dynamic linker resolves first), e.g. ".../libjemalloc.so.2". */
static inline const char *bench_malloc_origin(void)
{
    Dl_info info;
    void *sym = dlsym(RTLD_DEFAULT, "malloc");
    if (sym && dladdr(sym, &info) && info.dli_fname)
        return info.dli_fname;
    return "?";
}

static inline uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Parse an unsigned decimal at *p, advancing *p. */
static inline unsigned long long bench_parse_u(const char **p)
{
    unsigned long long v = 0;
    while (**p == ' ' || **p == '\t')
        (*p)++;
    while (**p >= '0' && **p <= '9')
        v = v * 10 + (unsigned long long)(*(*p)++ - '0');
    return v;
}

/* Read a small /proc file into buf with raw syscalls: no stdio, so reading it
 * never calls malloc and never perturbs the heap being measured. */
static inline ssize_t bench_read_proc(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = 0;
    return n;
}

/* Resident set size in bytes, from /proc/self/statm (second field). */
static inline size_t bench_rss_bytes(void)
{
    char buf[256];
    if (bench_read_proc("/proc/self/statm", buf, sizeof buf) <= 0)
        return 0;
    const char *p = buf;
    (void)bench_parse_u(&p); /* size */
    unsigned long long rss = bench_parse_u(&p);
    return (size_t)rss * (size_t)sysconf(_SC_PAGESIZE);
}

/* A "VmXXX:   1234 kB" field of /proc/self/status, in bytes (0 if absent). */
static inline size_t bench_status_field(const char *field)
{
    char buf[4096];
    if (bench_read_proc("/proc/self/status", buf, sizeof buf) <= 0)
        return 0;
    size_t fl = strlen(field);
    for (const char *p = buf; *p; ) {
        if (strncmp(p, field, fl) == 0 && p[fl] == ':') {
            const char *q = p + fl + 1;
            return (size_t)bench_parse_u(&q) * 1024u;
        }
        const char *nl = strchr(p, '\n');
        if (!nl)
            break;
        p = nl + 1;
    }
    return 0;
}

/* Peak RSS of the process so far (VmHWM). */
static inline size_t bench_peak_rss(void) { return bench_status_field("VmHWM"); }


/* ---- Small shared tools ------------------------------------------------ */

/* xorshift64*: a fast per-thread random stream (never 0 state). */
static inline uint64_t bench_rand(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static inline uint64_t bench_hash(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* Harness memory (index arrays, rings, sample buffers) comes from mmap, not
 * malloc, so the harness never mixes its own blocks into the heap measured. */
#include <sys/mman.h>
static inline void *bench_map(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("bench: mmap");
        exit(1);
    }
    return p;
}
static inline void bench_unmap(void *p, size_t bytes) { munmap(p, bytes); }

/* Involuntary context switches of the calling thread so far: a gap in a
 * timing loop during which this moved was the scheduler's, not ours. */
static inline long bench_thread_nivcsw(void)
{
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    return ru.ru_nivcsw;
}

static inline void bench_sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static inline void bench_die(const char *msg)
{
    fprintf(stderr, "bench: %s\n", msg);
    exit(1);
}

#endif /* BENCH_COMMON_H */
