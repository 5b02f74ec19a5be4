/*
 * oom.c -- out of memory for real: run under LD_PRELOAD=libtrimalloc.so in
 * a shell with its address space capped (ulimit -v; tests/bad_input/run.sh
 * uses 256 MiB). For small, large and huge blocks in turn it allocates
 * until the allocator says no, and checks that
 *   - the failure is a NULL with errno ENOMEM (posix_memalign: ENOMEM),
 *     for malloc, calloc, realloc, aligned_alloc and posix_memalign alike;
 *   - the blocks already held are intact (every byte), including the one
 *     a failed realloc was asked to grow;
 *   - _heapmin() returns 0 at the limit;
 *   - once blocks are freed, allocation of the same kind works again, and
 *     after _heapmin() any kind does.
 * Prints one line per phase; exits 0 if every check held, 1 otherwise.
 * Cross-kind reuse without _heapmin (small blocks freed, then a huge one
 * asked for) is reported, not required: see docs/reliability.md.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXBLK 300000

static int (*heapmin)(void);
static int failures;
static unsigned char *blk[MAXBLK];
static size_t nblk;

#define CHECK(cond, ...)                                                \
    do {                                                                \
        if (!(cond)) {                                                  \
            printf("FAIL (line %d): ", __LINE__);                       \
            printf(__VA_ARGS__);                                        \
            printf("\n");                                               \
            failures++;                                                 \
        }                                                               \
    } while (0)

/* Blocks held through the whole run: small, large and huge. */
static const size_t held_size[] = {24, 1000, 5000, 40000, 300000, 3 << 20};
#define NHELD (sizeof held_size / sizeof held_size[0])
static unsigned char *held[NHELD];

static unsigned char fill_of(size_t i) { return (unsigned char)(i * 37 + 11); }

static size_t bad_byte(const unsigned char *p, size_t n, unsigned char c) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != c) return i;
    return n;
}

static void check_held(const char *when) {
    for (size_t i = 0; i < NHELD; i++) {
        size_t b = bad_byte(held[i], held_size[i], fill_of(i));
        CHECK(b == held_size[i], "%s: held block %zu (%zu bytes) damaged at byte %zu", when, i,
              held_size[i], b);
    }
}

/* The phase's blocks: first and last byte of each, every byte of every 64th. */
static void check_phase(size_t size, const char *when) {
    for (size_t i = 0; i < nblk; i++) {
        unsigned char c = fill_of(i + 100);
        int ok = blk[i][0] == c && blk[i][size - 1] == c;
        if (ok && i % 64 == 0) ok = bad_byte(blk[i], size, c) == size;
        CHECK(ok, "%s: block %zu of %zu bytes damaged", when, i, size);
        if (!ok) return;
    }
}

/* Allocate blocks of `size` until malloc fails; returns the count. */
static size_t exhaust(size_t size) {
    nblk = 0;
    for (;;) {
        if (nblk == MAXBLK) {
            CHECK(0, "%zu blocks of %zu bytes and no failure: is ulimit -v set?", nblk, size);
            return nblk;
        }
        errno = 0;
        unsigned char *p = malloc(size);
        if (!p) {
            CHECK(errno == ENOMEM, "malloc(%zu) at the limit: NULL with errno %d, not ENOMEM",
                  size, errno);
            return nblk;
        }
        memset(p, fill_of(nblk + 100), size);
        blk[nblk++] = p;
    }
}

static void free_phase(size_t from) {
    for (size_t i = from; i < nblk; i++) free(blk[i]);
    nblk = from;
}

/* Every entry point at the limit: a request that cannot fit must fail
 * cleanly, and the block a failed realloc was asked to grow stays. */
static void at_limit_calls(void) {
    size_t big = 64 << 20;
    void *q = (void *)1;
    errno = 0;
    q = calloc(1, big);
    CHECK(!q && errno == ENOMEM, "calloc(1, 64 MiB) at the limit: %p errno %d", q, errno);
    errno = 0;
    q = realloc(held[1], big);
    CHECK(!q && errno == ENOMEM, "realloc(held, 64 MiB) at the limit: %p errno %d", q, errno);
    errno = 0;
    q = aligned_alloc(4096, big);
    CHECK(!q && errno == ENOMEM, "aligned_alloc(4096, 64 MiB) at the limit: %p errno %d", q, errno);
    q = NULL;
    int rc = posix_memalign(&q, 64, big);
    CHECK(rc == ENOMEM && !q, "posix_memalign(64, 64 MiB) at the limit: %d", rc);
    errno = 0;
    q = malloc(big);
    CHECK(!q && errno == ENOMEM, "malloc(64 MiB) at the limit: %p errno %d", q, errno);
    check_held("after the failed calls at the limit");
}

static void phase(const char *name, size_t size, int with_heapmin_before) {
    if (with_heapmin_before) CHECK(heapmin() == 0, "_heapmin before the %s phase", name);
    size_t n = exhaust(size);
    CHECK(n > 0, "%s: not one block of %zu bytes could be allocated", name, size);
    printf("%-6s %8zu bytes: %6zu blocks (%zu MiB) before ENOMEM\n", name, size, n,
           n * size >> 20);
    check_held(name);
    check_phase(size, name);
    at_limit_calls();
    int rc = heapmin();
    CHECK(rc == 0, "%s: _heapmin() at the limit returned %d (errno %d)", name, rc, errno);
    check_held("after _heapmin at the limit");
    check_phase(size, "after _heapmin at the limit");
    /* Free half, then the same kind must be allocatable again. */
    size_t half = nblk / 2;
    free_phase(half);
    size_t again = 0;
    for (; again < n - half; again++) {
        unsigned char *p = malloc(size);
        if (!p) break;
        memset(p, fill_of(nblk + 100), size);
        blk[nblk++] = p;
    }
    CHECK(again > 0, "%s: after freeing %zu blocks, malloc(%zu) still fails", name, n - half, size);
    printf("%-6s after freeing %zu blocks: %zu allocated again\n", name, n - half, again);
    check_phase(size, "after allocating again");
    free_phase(0);
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    heapmin = (int (*)(void))dlsym(RTLD_DEFAULT, "_heapmin");
    if (!heapmin) {
        printf("FAIL: _heapmin not found: run with LD_PRELOAD=libtrimalloc.so\n");
        return 1;
    }
    for (size_t i = 0; i < NHELD; i++) {
        held[i] = malloc(held_size[i]);
        if (!held[i]) {
            printf("FAIL: malloc(%zu) before the test\n", held_size[i]);
            return 1;
        }
        memset(held[i], fill_of(i), held_size[i]);
    }
    phase("small", 1000, 0);
    /* Cross-kind without _heapmin: a mapping that fails makes the allocator
     * give back empty chunks and cached huge mappings, then retry. */
    size_t huge = 8 << 20;
    errno = 0;
    void *h = malloc(huge);
    CHECK(h != NULL, "malloc(8 MiB) right after freeing the small blocks, no _heapmin: errno %d",
          errno);
    printf("huge block right after freeing the small ones, no _heapmin: %s\n",
           h ? "allocated" : "ENOMEM");
    free(h);
    phase("large", 256 << 10, 1);
    phase("huge", huge, 1);
    phase("small", 1000, 1);
    CHECK(heapmin() == 0, "final _heapmin");
    /* After _heapmin, one block as large as half the limit fits. */
    void *big = malloc(100 << 20);
    CHECK(big != NULL, "malloc(100 MiB) after freeing everything and _heapmin: errno %d", errno);
    if (big) memset(big, 1, 100 << 20);
    free(big);
    check_held("at the end");
    for (size_t i = 0; i < NHELD; i++) free(held[i]);
    CHECK(heapmin() == 0, "_heapmin after freeing everything");
    printf("%s\n", failures ? "oom: FAIL" : "oom: all checks passed");
    return failures ? 1 : 0;
}
