/*
 * vg_prog.c -- a workload for memcheck with trimalloc serving every malloc
 * (linked against libtrimalloc.so; tests/valgrind/run.sh runs it under
 * valgrind). Memcheck replaces malloc only in libc (and any soname given
 * with --soname-synonyms=somalloc=...), so here the calls reach trimalloc
 * and memcheck watches trimalloc's own code: its reads and writes of
 * metadata, pagemap, thread caches and blocks, the uninitialised values it
 * might branch on, and the system calls it makes. The program first checks
 * that malloc really is trimalloc's (the statistics move), else it fails.
 *
 * The work: every size class and large/huge sizes, calloc (zero), realloc
 * up and down through small/large/huge, the aligned family, two threads
 * that free each other's blocks, _heapmin with blocks held (contents
 * checked after), _heapchk, a full _heapwalk, malloc_usable_size, _msize.
 * Exits 0 if every check held.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trimalloc.h"

static int failures;
#define CHECK(c, ...)                                                  \
    do {                                                               \
        if (!(c)) {                                                    \
            fprintf(stderr, "FAIL line %d: ", __LINE__);               \
            fprintf(stderr, __VA_ARGS__);                              \
            fputc('\n', stderr);                                       \
            failures++;                                                \
        }                                                              \
    } while (0)

static void fill(void *p, size_t n, unsigned seed) {
    unsigned char *c = p;
    for (size_t i = 0; i < n; i++) c[i] = (unsigned char)(seed + i * 7);
}

static int intact(const void *p, size_t n, unsigned seed) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i] != (unsigned char)(seed + i * 7)) return 0;
    return 1;
}

static const size_t sizes[] = {0,    1,     8,     16,    24,     100,     128,      200,
                               512,  1000,  1024,  1500,  4000,   8192,    20000,    32768,
                               32769, 40000, 65536, 100000, 500000, 2 << 20, 3 << 20, 9 << 20};
#define NSIZES (sizeof sizes / sizeof sizes[0])

/* ---- two threads: each frees what the other made ------------------------------ */
#define XN 200
static void *xblocks[2][XN];
static pthread_barrier_t bar;

static void *cross(void *arg) {
    int me = (int)(intptr_t)arg, other = 1 - me;
    for (int i = 0; i < XN; i++) {
        size_t n = sizes[(i + me) % NSIZES] % 50000 + 1;
        xblocks[me][i] = malloc(n);
        CHECK(xblocks[me][i] != NULL, "malloc(%zu) on thread %d", n, me);
        fill(xblocks[me][i], n, (unsigned)(i + 31 * me));
    }
    pthread_barrier_wait(&bar);
    for (int i = 0; i < XN; i++) {
        size_t n = sizes[(i + other) % NSIZES] % 50000 + 1;
        CHECK(intact(xblocks[other][i], n, (unsigned)(i + 31 * other)),
              "block %d of thread %d damaged", i, other);
        if (i % 3 == 0) {
            void *q = realloc(xblocks[other][i], n * 2);
            CHECK(q && intact(q, n, (unsigned)(i + 31 * other)), "cross-thread realloc");
            free(q);
        } else {
            free_sized(xblocks[other][i], n);
        }
    }
    pthread_barrier_wait(&bar);
    return NULL;
}

int main(void) {
    /* Is it trimalloc that serves malloc? */
    Dl_info info;
    void *m = dlsym(RTLD_DEFAULT, "malloc");
    CHECK(m && dladdr(m, &info) && info.dli_fname && strstr(info.dli_fname, "libtrimalloc"),
          "malloc is not trimalloc's (found in %s)", m && info.dli_fname ? info.dli_fname : "?");
    trimalloc_stats_t s0, s1;
    trimalloc_stats_get(&s0);
    void *probe = malloc(1 << 20);
    trimalloc_stats_get(&s1);
    CHECK(s1.allocated >= s0.allocated + (1 << 20),
          "trimalloc's statistics did not see malloc(1 MiB): valgrind replaced malloc");
    free(probe);
    printf("malloc from %s; trimalloc statistics follow it\n", info.dli_fname);

    /* Every size: malloc, fill, check, usable size. */
    void *held[NSIZES];
    for (size_t i = 0; i < NSIZES; i++) {
        held[i] = malloc(sizes[i]);
        CHECK(held[i] != NULL, "malloc(%zu)", sizes[i]);
        CHECK(malloc_usable_size(held[i]) >= sizes[i], "usable size of %zu", sizes[i]);
        CHECK(_msize(held[i]) == malloc_usable_size(held[i]), "_msize of %zu", sizes[i]);
        fill(held[i], sizes[i], (unsigned)i);
    }
    /* calloc: zero, also on reused memory */
    for (int round = 0; round < 2; round++)
        for (size_t i = 0; i < NSIZES; i++) {
            unsigned char *p = calloc(1, sizes[i]);
            CHECK(p != NULL, "calloc(%zu)", sizes[i]);
            for (size_t k = 0; k < sizes[i]; k++)
                if (p[k]) { CHECK(0, "calloc(%zu) byte %zu is %d", sizes[i], k, p[k]); break; }
            memset(p, 0xee, sizes[i]);
            free(p);
        }
    /* realloc up and down through the ranges */
    {
        size_t n = 10;
        char *p = malloc(n);
        fill(p, n, 99);
        static const size_t steps[] = {100, 5000, 40000, 300000, 3 << 20, 10 << 20, 2 << 20,
                                       50000, 1000, 16};
        for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
            size_t keep = n < steps[i] ? n : steps[i];
            p = realloc(p, steps[i]);
            CHECK(p && intact(p, keep, 99), "realloc to %zu lost data", steps[i]);
            fill(p, steps[i], 99);
            n = steps[i];
        }
        free(p);
    }
    /* the aligned family */
    for (size_t al = 16; al <= (8 << 20); al <<= 3) {
        void *a = aligned_alloc(al, 3000), *b = NULL, *c = memalign(al, 70000);
        int rc = posix_memalign(&b, al, 100);
        CHECK(a && !((uintptr_t)a % al), "aligned_alloc(%zu)", al);
        CHECK(rc == 0 && b && !((uintptr_t)b % al), "posix_memalign(%zu)", al);
        CHECK(c && !((uintptr_t)c % al), "memalign(%zu)", al);
        fill(a, 3000, 1), fill(b, 100, 2), fill(c, 70000, 3);
        free_aligned_sized(a, al, 3000);
        free(b);
        free(c);
    }
    /* two threads */
    pthread_barrier_init(&bar, NULL, 2);
    pthread_t t;
    pthread_create(&t, NULL, cross, (void *)(intptr_t)1);
    cross((void *)(intptr_t)0);
    pthread_join(t, NULL);

    /* _heapmin with blocks held; then everything is still there */
    for (size_t i = 0; i < NSIZES; i += 2) free(held[i]);
    CHECK(_heapmin() == 0, "_heapmin");
    for (size_t i = 1; i < NSIZES; i += 2)
        CHECK(intact(held[i], sizes[i], (unsigned)i), "block of %zu damaged by _heapmin", sizes[i]);
    CHECK(_heapchk() == _HEAPOK, "_heapchk");
    _HEAPINFO e = {0};
    int rc, n = 0, used = 0;
    while ((rc = _heapwalk(&e)) == _HEAPOK) {
        n++;
        used += e._useflag == _USEDENTRY;
    }
    CHECK(rc == _HEAPEND, "_heapwalk ended with %d", rc);
    CHECK(used >= (int)(NSIZES / 2), "_heapwalk found %d used blocks", used);
    printf("_heapwalk: %d entries, %d used\n", n, used);
    for (size_t i = 1; i < NSIZES; i += 2) free(held[i]);
    CHECK(_heapmin() == 0, "_heapmin at the end");
    printf("%s\n", failures ? "vg_prog: FAIL" : "vg_prog: all checks passed");
    return failures != 0;
}
