/*
 * consumer.c -- a program built against an *installed* trimalloc, the way a
 * user would build one: through pkg-config or find_package(trimalloc).
 *
 * It allocates blocks of the three kinds (small, large, huge), checks that
 * trimalloc's statistics see them -- which proves that malloc() here is
 * trimalloc's and not the C library's -- frees them, calls _heapmin() and
 * checks the call was counted. Then it reads /proc/self/maps:
 *   shared build (default): libtrimalloc.so must be mapped, and if a path is
 *       given as argv[1] it must be that file (the installed copy, not the
 *       build tree's);
 *   static build (-DCONSUMER_STATIC): no libtrimalloc.so may be mapped.
 * Exit status 0 and one "consumer: OK" line on success; 1 and a message
 * naming the failed check otherwise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <trimalloc.h>

#ifndef CONSUMER_STATIC
#define CONSUMER_STATIC 0
#endif

static int failures;

/* Global, so the compiler cannot prove the blocks unused and drop the
 * malloc/free pairs. */
enum { NSMALL = 1000, SMALL_SZ = 1000, LARGE_SZ = 200 * 1024, HUGE_SZ = 8 << 20 };
char *small[NSMALL], *large, *huge;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "consumer: FAIL: %s: ", #cond);                \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
            failures++;                                                    \
        }                                                                  \
    } while (0)

/* The path of the first mapping whose file name contains "libtrimalloc.so",
 * or "" if none. */
static void find_mapped_lib(char *out, size_t n)
{
    out[0] = 0;
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        return;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        char *path = strchr(line, '/');
        if (!path || !strstr(path, "libtrimalloc.so"))
            continue;
        path[strcspn(path, "\n")] = 0;
        snprintf(out, n, "%s", path);
        break;
    }
    fclose(f);
}

int main(int argc, char **argv)
{
    trimalloc_stats_t before, held, after;
    trimalloc_stats_get(&before);

    for (int i = 0; i < NSMALL; i++) {
        small[i] = malloc(SMALL_SZ);
        CHECK(small[i] != NULL, "malloc(%d) failed", SMALL_SZ);
        if (small[i])
            memset(small[i], i & 0xff, SMALL_SZ);
    }
    large = malloc(LARGE_SZ);
    huge = malloc(HUGE_SZ);
    CHECK(large && huge, "malloc of a large or huge block failed");
    if (large)
        memset(large, 1, LARGE_SZ);
    if (huge)
        memset(huge, 2, HUGE_SZ);
    size_t want = (size_t)NSMALL * SMALL_SZ + LARGE_SZ + HUGE_SZ;

    CHECK(trimalloc_stats_get(&held) == 0, "trimalloc_stats_get failed");
    CHECK(held.allocated >= before.allocated + want,
          "allocated grew by %zu bytes, the program holds %zu: is malloc trimalloc's?",
          held.allocated - before.allocated, want);
    CHECK(held.huge_allocated >= HUGE_SZ, "huge_allocated %zu < %d", held.huge_allocated, HUGE_SZ);
    CHECK(malloc_usable_size(huge) >= HUGE_SZ, "malloc_usable_size(huge) too small");

    for (int i = 0; i < NSMALL; i++)
        free(small[i]);
    free(large);
    free(huge);
    errno = 12345;
    int rc = _heapmin();
    CHECK(rc == 0, "_heapmin() returned %d", rc);
    CHECK(errno == 12345, "_heapmin() changed errno to %d", errno);
    trimalloc_stats_get(&after);
    CHECK(after.heapmin_calls == held.heapmin_calls + 1, "heapmin_calls went %llu -> %llu",
          (unsigned long long)held.heapmin_calls, (unsigned long long)after.heapmin_calls);
    CHECK(after.tcache_bytes == 0, "%zu bytes still in thread caches after _heapmin",
          after.tcache_bytes);

    char mapped[PATH_MAX];
    find_mapped_lib(mapped, sizeof mapped);
    if (CONSUMER_STATIC) {
        CHECK(mapped[0] == 0, "static build, but %s is mapped", mapped);
    } else {
        CHECK(mapped[0] != 0, "libtrimalloc.so does not appear in /proc/self/maps");
        if (mapped[0] && argc > 1) {
            char want_path[PATH_MAX], got_path[PATH_MAX];
            if (!realpath(argv[1], want_path))
                snprintf(want_path, sizeof want_path, "%s", argv[1]);
            if (!realpath(mapped, got_path))
                snprintf(got_path, sizeof got_path, "%s", mapped);
            CHECK(strcmp(want_path, got_path) == 0, "mapped %s, expected %s", got_path,
                  want_path);
        }
    }

    if (failures)
        return 1;
    printf("consumer: OK (%s; allocated grew by %zu bytes for %zu held; %s)\n",
           CONSUMER_STATIC ? "static" : "shared", held.allocated - before.allocated, want,
           mapped[0] ? mapped : "no libtrimalloc.so mapped");
    return 0;
}
