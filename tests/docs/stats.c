/*
 * stats.c -- the statistics API as docs/api.md describes it: the counters
 * of trimalloc_stats_t move the way the program's allocations say they
 * must, and trimalloc_stats_print() writes a report (text) and valid JSON.
 *
 *   - allocated grows by at least the usable size of every block held
 *     (small, large and huge), and falls back when they are freed;
 *   - huge_allocated covers the huge blocks; the figures nest:
 *     allocated <= active <= mapped, resident <= mapped, metadata <= mapped;
 *   - freed small blocks sit in the thread cache (tcache_bytes > 0) until
 *     _heapmin(), which empties every cache -- also that of a live thread
 *     blocked on a barrier -- counts itself in heapmin_calls and reports
 *     bytes released, while resident and mapped drop;
 *   - nthreads counts threads with a cache;
 *   - the JSON report parses (python3's json module, skipped with a note
 *     when python3 is missing), has exactly the struct's fields and agrees
 *     with trimalloc_stats_get.
 * Plain C, linked with libtrimalloc.so; single-threaded except where a
 * worker is started, so the figures are exact. Exit status 1 on failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <trimalloc.h>

#include "check.h"

static trimalloc_stats_t get(void)
{
    trimalloc_stats_t s;
    memset(&s, 0xff, sizeof s);
    if (trimalloc_stats_get(&s) != 0)
        fail("trimalloc_stats_get did not return 0");
    return s;
}

static void check_nesting(const char *when, const trimalloc_stats_t *s)
{
    if (s->allocated > s->active)
        fail("%s: allocated %zu > active %zu", when, s->allocated, s->active);
    if (s->active > s->mapped)
        fail("%s: active %zu > mapped %zu", when, s->active, s->mapped);
    if (s->resident > s->mapped)
        fail("%s: resident %zu > mapped %zu", when, s->resident, s->mapped);
    if (s->metadata > s->mapped)
        fail("%s: metadata %zu > mapped %zu", when, s->metadata, s->mapped);
    /* Before the first allocation there may be no cache and no metadata. */
    if (s->allocated && (s->metadata == 0 || s->nthreads < 1))
        fail("%s: metadata %zu, nthreads %u with blocks allocated", when, s->metadata,
             s->nthreads);
    if (s->huge_allocated > s->allocated)
        fail("%s: huge_allocated %zu > allocated %zu", when, s->huge_allocated, s->allocated);
    if (s->narenas < 1)
        fail("%s: narenas %u", when, s->narenas);
    if (s->heapmin_last_pause_ns > s->heapmin_max_pause_ns)
        fail("%s: last pause %llu > max pause %llu", when,
             (unsigned long long)s->heapmin_last_pause_ns,
             (unsigned long long)s->heapmin_max_pause_ns);
}

/* ---- blocks held by the main thread ------------------------------------------- */
enum { NSMALL = 4000, NMID = 2000, NLARGE = 20, NHUGE = 3 };
#define SMALL_SZ 100
#define MID_SZ 3000
#define LARGE_SZ (100 << 10)
#define HUGE_SZ (6 << 20)
/* Global so the compiler cannot prove the blocks unused. */
char *small_b[NSMALL], *mid_b[NMID], *large_b[NLARGE], *huge_b[NHUGE];

static size_t usable_sum(char **v, int n, int step)
{
    size_t sum = 0;
    for (int i = 0; i < n; i += step)
        sum += malloc_usable_size(v[i]);
    return sum;
}

static void alloc_all(char **v, int n, size_t size)
{
    for (int i = 0; i < n; i++) {
        v[i] = malloc(size);
        if (!v[i]) {
            fail("malloc(%zu) failed", size);
            exit(1);
        }
        memset(v[i], 0x5c, size);
    }
}

static void free_all(char **v, int n, int start, int step)
{
    for (int i = start; i < n; i += step) {
        free(v[i]);
        v[i] = NULL;
    }
}

static void check_allocated_tracks_blocks(void)
{
    trimalloc_stats_t s0 = get();
    check_nesting("start", &s0);

    alloc_all(small_b, NSMALL, SMALL_SZ);
    alloc_all(mid_b, NMID, MID_SZ);
    alloc_all(large_b, NLARGE, LARGE_SZ);
    alloc_all(huge_b, NHUGE, HUGE_SZ);
    size_t requested = (size_t)NSMALL * SMALL_SZ + (size_t)NMID * MID_SZ +
                       (size_t)NLARGE * LARGE_SZ + (size_t)NHUGE * HUGE_SZ;
    size_t usable = usable_sum(small_b, NSMALL, 1) + usable_sum(mid_b, NMID, 1) +
                    usable_sum(large_b, NLARGE, 1) + usable_sum(huge_b, NHUGE, 1);
    trimalloc_stats_t s1 = get();
    check_nesting("holding blocks", &s1);
    size_t grew = s1.allocated - s0.allocated;
    printf("holding %zu bytes requested, %zu usable: allocated grew by %zu, active %zu, "
           "resident %zu, mapped %zu\n",
           requested, usable, grew, s1.active, s1.resident, s1.mapped);
    if (s1.allocated < s0.allocated + usable)
        fail("allocated grew by %zu, less than the %zu usable bytes held", grew, usable);
    /* Nothing else allocates here, so the growth is the blocks, exactly
     * (a little slack for whatever libc might do behind our back). */
    if (grew > usable + (256 << 10))
        fail("allocated grew by %zu, far more than the %zu usable bytes held", grew, usable);
    if (s1.huge_allocated < s0.huge_allocated + (size_t)NHUGE * HUGE_SZ)
        fail("huge_allocated %zu does not cover %d huge blocks of %d bytes", s1.huge_allocated,
             NHUGE, HUGE_SZ);
    struct mallinfo2 mi = mallinfo2();
    if (mi.uordblks < usable)
        fail("mallinfo2().uordblks %zu < %zu usable bytes held", mi.uordblks, usable);

    /* Free every other small block: they go to this thread's cache first. */
    size_t half = usable_sum(small_b, NSMALL, 2);
    free_all(small_b, NSMALL, 0, 2);
    trimalloc_stats_t s2 = get();
    check_nesting("after freeing half the small blocks", &s2);
    if (s1.allocated - s2.allocated != half)
        fail("freeing %zu usable bytes lowered allocated by %zu", half,
             s1.allocated - s2.allocated);
    if (s2.tcache_bytes == 0)
        fail("tcache_bytes is 0 right after freeing %d small blocks", NSMALL / 2);

    free_all(small_b, NSMALL, 1, 2);
    free_all(mid_b, NMID, 0, 1);
    free_all(large_b, NLARGE, 0, 1);
    free_all(huge_b, NHUGE, 0, 1);
    trimalloc_stats_t s3 = get();
    check_nesting("after freeing everything", &s3);
    if (s3.allocated > s0.allocated + (64 << 10) || s3.allocated + (64 << 10) < s0.allocated)
        fail("allocated %zu after freeing everything, %zu at the start", s3.allocated,
             s0.allocated);
    if (s3.huge_allocated != s0.huge_allocated)
        fail("huge_allocated %zu after freeing, %zu at the start", s3.huge_allocated,
             s0.huge_allocated);

    errno = 4242;
    int rc = _heapmin();
    if (rc != 0 || errno != 4242)
        fail("_heapmin() returned %d, errno %d", rc, errno);
    trimalloc_stats_t s4 = get();
    check_nesting("after _heapmin", &s4);
    printf("after free + _heapmin: allocated %zu, resident %zu -> %zu, mapped %zu -> %zu, "
           "released %zu -> %zu, heapmin released %llu bytes, pause %llu ns\n",
           s4.allocated, s3.resident, s4.resident, s3.mapped, s4.mapped, s3.released,
           s4.released, (unsigned long long)s4.heapmin_bytes_released,
           (unsigned long long)s4.heapmin_last_pause_ns);
    if (s4.heapmin_calls != s3.heapmin_calls + 1)
        fail("heapmin_calls %llu -> %llu over one _heapmin()",
             (unsigned long long)s3.heapmin_calls, (unsigned long long)s4.heapmin_calls);
    if (s4.heapmin_bytes_released <= s3.heapmin_bytes_released)
        fail("heapmin_bytes_released did not grow");
    if (s4.released <= s3.released)
        fail("released did not grow (%zu -> %zu)", s3.released, s4.released);
    if (s4.tcache_bytes != 0)
        fail("tcache_bytes %zu after _heapmin", s4.tcache_bytes);
    if (s4.resident >= s3.resident)
        fail("resident did not drop (%zu -> %zu)", s3.resident, s4.resident);
    if (s4.mapped >= s3.mapped)
        fail("mapped did not drop (%zu -> %zu)", s3.mapped, s4.mapped);
    if (s4.allocated != s3.allocated)
        fail("_heapmin changed allocated (%zu -> %zu)", s3.allocated, s4.allocated);
}

/* ---- a live thread's cache --------------------------------------------------------- */
static pthread_barrier_t cached, drained;

static void *worker(void *arg)
{
    (void)arg;
    enum { N = 300 };
    void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = malloc(64);
        memset(p[i], 1, 64);
    }
    for (int i = 0; i < N; i++)
        free(p[i]);
    pthread_barrier_wait(&cached);  /* blocks sit in this thread's cache */
    pthread_barrier_wait(&drained); /* main has called _heapmin */
    return NULL;
}

static void check_live_thread_cache(void)
{
    trimalloc_stats_t s0 = get();
    pthread_t t;
    pthread_barrier_init(&cached, NULL, 2);
    pthread_barrier_init(&drained, NULL, 2);
    if (pthread_create(&t, NULL, worker, NULL) != 0) {
        fail("pthread_create failed");
        return;
    }
    pthread_barrier_wait(&cached);
    trimalloc_stats_t s1 = get();
    if (s1.nthreads != s0.nthreads + 1)
        fail("nthreads %u with a worker alive, %u before", s1.nthreads, s0.nthreads);
    if (s1.tcache_bytes < s0.tcache_bytes + 64)
        fail("worker freed 300 blocks of 64 bytes, tcache_bytes %zu -> %zu", s0.tcache_bytes,
             s1.tcache_bytes);
    _heapmin();
    trimalloc_stats_t s2 = get();
    if (s2.tcache_bytes != 0)
        fail("tcache_bytes %zu after _heapmin with the worker blocked", s2.tcache_bytes);
    if (s2.nthreads != s1.nthreads)
        fail("_heapmin changed nthreads (%u -> %u)", s1.nthreads, s2.nthreads);
    printf("worker thread blocked: tcache_bytes %zu -> %zu over _heapmin, nthreads %u\n",
           s1.tcache_bytes, s2.tcache_bytes, s2.nthreads);
    pthread_barrier_wait(&drained);
    pthread_join(t, NULL);
    trimalloc_stats_t s3 = get();
    if (s3.nthreads != s0.nthreads)
        fail("nthreads %u after the worker exited, %u before it started", s3.nthreads,
             s0.nthreads);
    pthread_barrier_destroy(&cached);
    pthread_barrier_destroy(&drained);
}

/* ---- the reports ---------------------------------------------------------------------- */

static void check_reports(void)
{
    /* Text: to a temporary file, then look for the headline lines. */
    FILE *f = tmpfile();
    if (!f) {
        fail("tmpfile failed");
        return;
    }
    trimalloc_stats_print(fileno(f), 0);
    char text[4096];
    rewind(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = 0;
    fclose(f);
    if (!strstr(text, "trimalloc statistics") || !strstr(text, "_heapmin calls") ||
        !strstr(text, "allocated"))
        fail("text report lacks its headings:\n%s", text);

    if (system("command -v python3 >/dev/null 2>&1") != 0) {
        printf("SKIP: JSON report not parsed (python3 is not installed)\n");
        return;
    }
    trimalloc_stats_t s = get();
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "python3 -c '"
             "import json, sys\n"
             "d = json.load(sys.stdin)\n"
             "keys = {\"allocated\", \"active\", \"resident\", \"mapped\", \"released\",\n"
             "        \"metadata\", \"tcache_bytes\", \"huge_allocated\", \"heapmin_calls\",\n"
             "        \"heapmin_bytes_released\", \"heapmin_last_pause_ns\",\n"
             "        \"heapmin_max_pause_ns\", \"narenas\", \"nthreads\", \"arenas\",\n"
             "        \"classes\"}\n"
             "assert set(d) == keys, sorted(set(d) ^ keys)\n"
             "arenas, classes = d.pop(\"arenas\"), d.pop(\"classes\")\n"
             "assert all(type(v) is int and v >= 0 for v in d.values()), d\n"
             "assert len(arenas) == d[\"narenas\"], arenas\n"
             "assert sum(a[\"mapped\"] for a in arenas) <= d[\"mapped\"], arenas\n"
             "assert classes and all(c[\"size\"] %% 16 == 0 for c in classes), classes\n"
             "assert d[\"heapmin_calls\"] == %llu, d\n"
             "assert d[\"narenas\"] == %u, d\n"
             "assert d[\"allocated\"] <= d[\"active\"] <= d[\"mapped\"], d\n"
             "print(\"json report parses:\", len(d), \"fields\")\n"
             "'",
             (unsigned long long)s.heapmin_calls, s.narenas);
    fflush(stdout);
    FILE *py = popen(cmd, "w");
    if (!py) {
        fail("popen(python3) failed");
        return;
    }
    trimalloc_stats_print(fileno(py), 1);
    int status = pclose(py);
    if (status != 0)
        fail("python3 rejected the JSON report (status %d)", status);
}

int main(void)
{
    /* stdio allocates stdout's buffer on first use: do that before any
     * figure is read, so it is not counted as one of the test's blocks. */
    printf("docs_stats: trimalloc_stats_t against known allocations\n");
    fflush(stdout);
    check_allocated_tracks_blocks();
    check_live_thread_cache();
    check_reports();
    if (failures) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
