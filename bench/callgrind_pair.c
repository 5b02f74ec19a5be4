/*
 * callgrind_pair.c -- N malloc+free pairs in a loop, for counting the
 * instructions one pair costs under valgrind --tool=callgrind.
 *
 *   callgrind_pair VARIANT N [WARMUP]
 *
 * VARIANT is a size in bytes (16, 64, 256, 1024, ...), "mixed" (each pair
 * takes the next size from a fixed cycle of 16 small sizes, 16..2048 B),
 * "batch" (64 blocks of 64 B allocated, then freed in allocation order: the
 * thread cache sees runs of frees instead of one LIFO slot), "burst"
 * (100000 blocks of 16-80 B allocated, then freed in allocation order, as a
 * program builds and drops a tree: far more than a thread cache holds, so
 * this counts the batches to and from the arenas) or "null" (the same loop
 * calling an empty function pair, to size the harness itself).
 *
 * Before anything else the program allocates a few "anchor" blocks of every
 * size it will use and keeps them live to the end, as any real program has
 * other live blocks beside the one it churns. Without them an allocator that
 * releases or retires a page the moment its last block is freed (mimalloc
 * does) would take its slow path on every free of this loop, which says more
 * about the loop than about the allocator.
 *
 * The WARMUP pairs (default 20000) run first, outside the measured function,
 * so caches, size-class tables and thread state are primed. Only
 * cgp_measure() is meant to be counted (--toggle-collect=cgp_measure), and
 * bench/callgrind.sh runs two N and divides the difference by the difference
 * in pairs, so any one-off cost inside the measured call cancels as well.
 *
 * The program prints to stderr which allocator answered and the file malloc
 * came from, so the script can check that LD_PRELOAD took effect.
 */
#include "bench_common.h"

#define BATCH 64
#define BURST 100000 /* callgrind.sh counts 100000 and 200000 pairs: whole bursts */

static const size_t burst_sizes[8] = {16, 24, 32, 40, 48, 56, 64, 80};
static void *burst_blocks[BURST];

static const size_t mixed_sizes[16] = {16, 24, 32, 48, 64, 96, 128, 256,
                                       512, 1024, 2048, 40, 80, 160, 320, 640};

/* Sinks the compiler cannot see through: keep malloc/free pairs from being
 * elided and the null variant from being inlined away. */
void *volatile cgp_sink;
static char null_block[64];

/* GCC may clone a function for a constant argument, renaming it; clang has
 * no such attribute (and does not clone that way). */
#if defined(__clang__)
#define CGP_KEEP __attribute__((noinline))
#else
#define CGP_KEEP __attribute__((noinline, noclone))
#endif

CGP_KEEP void *cgp_null_malloc(size_t size);
CGP_KEEP void cgp_null_free(void *p);
void *cgp_null_malloc(size_t size) { (void)size; __asm__ volatile(""); return null_block; }
void cgp_null_free(void *p) { __asm__ volatile("" : : "r"(p) : "memory"); }

enum variant { V_FIXED, V_MIXED, V_BATCH, V_BURST, V_NULL };

/* One run of n pairs. Not static and not clonable, so callgrind can find it
 * by name. */
CGP_KEEP void cgp_measure(enum variant v, size_t size, long n);
void cgp_measure(enum variant v, size_t size, long n)
{
    void *blocks[BATCH];
    switch (v) {
    case V_FIXED:
        for (long i = 0; i < n; i++) {
            char *p = malloc(size);
            p[0] = (char)i; /* touch it, as a real caller would */
            cgp_sink = p;
            free(p);
        }
        break;
    case V_MIXED:
        for (long i = 0; i < n; i++) {
            char *p = malloc(mixed_sizes[i & 15]);
            p[0] = (char)i;
            cgp_sink = p;
            free(p);
        }
        break;
    case V_BATCH:
        for (long i = 0; i < n; i += BATCH) {
            for (int j = 0; j < BATCH; j++) {
                char *p = malloc(size);
                p[0] = (char)j;
                blocks[j] = p;
            }
            cgp_sink = blocks[BATCH - 1];
            for (int j = 0; j < BATCH; j++)
                free(blocks[j]);
        }
        break;
    case V_BURST:
        for (long i = 0; i < n; i += BURST) {
            for (int j = 0; j < BURST; j++) {
                char *p = malloc(burst_sizes[j & 7]);
                p[0] = (char)j;
                burst_blocks[j] = p;
            }
            cgp_sink = burst_blocks[BURST - 1];
            for (int j = 0; j < BURST; j++)
                free(burst_blocks[j]);
        }
        break;
    case V_NULL:
        for (long i = 0; i < n; i++) {
            char *p = cgp_null_malloc(size);
            p[0] = (char)i;
            cgp_sink = p;
            cgp_null_free(p);
        }
        break;
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s 16|64|256|1024|SIZE|mixed|batch|burst|null N [WARMUP]\n", argv[0]);
        return 2;
    }
    enum variant v = V_FIXED;
    size_t size = 64;
    if (strcmp(argv[1], "mixed") == 0)
        v = V_MIXED;
    else if (strcmp(argv[1], "batch") == 0)
        v = V_BATCH;
    else if (strcmp(argv[1], "burst") == 0)
        v = V_BURST;
    else if (strcmp(argv[1], "null") == 0)
        v = V_NULL;
    else
        size = strtoul(argv[1], NULL, 10);
    long n = atol(argv[2]);
    long warm = argc > 3 ? atol(argv[3]) : 20000;
    if (size == 0 || n <= 0 || warm < 0) {
        fprintf(stderr, "callgrind_pair: bad arguments\n");
        return 2;
    }
    if (v == V_BATCH || v == V_BURST) { /* whole batches only, so Δpairs is exact */
        long b = v == V_BATCH ? BATCH : BURST;
        n = (n + b - 1) / b * b;
        warm = (warm + b - 1) / b * b;
    }

    /* Anchors: 8 live blocks of each size the variant uses (never freed);
     * few enough that they cannot fill a page of any size class used. */
    static void *anchors[16 * 8];
    int nanchors = v == V_MIXED || v == V_BURST ? 16 * 8 : v == V_NULL ? 0 : 8;
    for (int k = 0; k < nanchors; k++) {
        size_t sz = v == V_MIXED ? mixed_sizes[k & 15] : v == V_BURST ? burst_sizes[k & 7] : size;
        anchors[k] = malloc(sz);
        if (!anchors[k])
            return 1;
        memset(anchors[k], 1, 1);
    }
    cgp_sink = anchors[0];

    cgp_measure(v, size, warm); /* warm-up: not collected (different call) */
    /* The collected call. With --toggle-collect=cgp_measure the warm-up call
     * above is collected too, so the script subtracts two runs: warm-up and
     * start-up cancel exactly. */
    cgp_measure(v, size, n);

    fprintf(stderr, "callgrind_pair: allocator=%s malloc_from=%s variant=%s n=%ld warmup=%ld\n",
            bench_alloc_name(bench_alloc_detect()), bench_malloc_origin(), argv[1], n, warm);
    return 0;
}
