/*
 * mallctl.c -- jemalloc's mallctl() as trimalloc answers it (src/mallctl.c):
 * the names that steer an allocator reach trimalloc, with jemalloc's types
 * and error numbers; other names go to the next mallctl in the process (a
 * jemalloc the program itself links), else ENOENT; errno never changes.
 * malloc_stats_print writes trimalloc's report. Built three ways
 * (tests/CMakeLists.txt): prefixed (tm_mallctl), against
 * build/libtrimalloc_jemalloc.so, and against that with a stand-in for
 * jemalloc after it (api_mallctl_next); the prefixed one runs once more
 * with caching off (api_mallctl_nocache).
 */
#include "test_cmocka.h"

#include <dlfcn.h>
#include <stdbool.h>

#define ERRNO_SENTINEL 31337

/* mallctl with errno preset, which must come back unchanged */
static int ctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen)
{
    errno = ERRNO_SENTINEL;
    int r = TM_API(mallctl)(name, oldp, oldlenp, newp, newlen);
    if (errno != ERRNO_SENTINEL)
        fail_msg("mallctl(\"%s\") changed errno to %d", name ? name : "(null)", errno);
    return r;
}

static size_t stat_of(const char *name)
{
    size_t v = 0, len = sizeof v;
    assert_int_equal(ctl(name, &v, &len, NULL, 0), 0);
    assert_int_equal(len, sizeof v);
    return v;
}

static trimalloc_stats_t tm_stats(void)
{
    trimalloc_stats_t s;
    assert_int_equal(TM_API(trimalloc_stats_get)(&s), 0);
    return s;
}

/* Names trimalloc does not answer go to the next mallctl in the process:
 * in api_mallctl_next a stand-in for jemalloc linked after libtrimalloc.so
 * (tests/jemalloc/next_mallctl.c), which answers "version" and
 * "arenas.nbins", and whose answers to trimalloc's own names would show. */
static void test_other_names_go_to_the_next_mallctl(void **state)
{
    (void)state;
    const char *version = NULL;
    size_t len = sizeof version;
#ifndef TM_TEST_NEXT_MALLCTL
    /* no other mallctl in the process (and tm_mallctl never forwards):
     * jemalloc's names are unknown, but "version" is a string, for code
     * that reads it unchecked (MariaDB's guess_malloc_library) */
    assert_int_equal(ctl("arenas.nbins", NULL, NULL, NULL, 0), ENOENT);
    assert_int_equal(ctl("version", &version, &len, NULL, 0), 0);
    assert_non_null(version);
    assert_string_equal(version, "0.0.0-0-trimalloc");
    assert_int_equal(ctl("version", NULL, NULL, &version, sizeof version), EPERM);
    /* the next mallctl was looked up once: a name nobody knows leaves the
     * program's dlerror() alone */
    (void)dlerror();
    assert_int_equal(ctl("no.such.name", NULL, NULL, NULL, 0), ENOENT);
    assert_int_equal(ctl("arenas.nbins", NULL, NULL, NULL, 0), ENOENT);
    const char *err = dlerror();
    if (err)
        fail_msg("mallctl of an unknown name set dlerror: %s", err);
#else
    assert_int_equal(ctl("version", &version, &len, NULL, 0), 0);
    assert_non_null(version);
    assert_string_equal(version, "next-mallctl-test");
    unsigned nbins = 0;
    len = sizeof nbins;
    assert_int_equal(ctl("arenas.nbins", &nbins, &len, NULL, 0), 0);
    assert_int_equal(nbins, 42);
    assert_int_equal(ctl("no.such.name", NULL, NULL, NULL, 0), ENOENT);
    /* trimalloc's own names stay its own: a block held here is counted */
    size_t before = stat_of("stats.allocated");
    void *p = TM_API(malloc)(8 * TU_MIB);
    assert_non_null(p);
    memset(p, 1, 8 * TU_MIB);
    size_t held = stat_of("stats.allocated");
    TM_API(free)(p);
    if (held == (size_t)0xdeadbeef || held < before + 8 * TU_MIB)
        fail_msg("stats.allocated %zu -> %zu holding 8 MiB: not trimalloc's count", before, held);
#endif
}

static void test_epoch(void **state)
{
    (void)state;
    uint64_t e0 = 0, e1 = 0, in = 1;
    size_t len = sizeof e0;
    assert_int_equal(ctl("epoch", &e0, &len, NULL, 0), 0);
    assert_true(e0 > 0);
    /* a write refreshes and advances; the value read is the new one */
    len = sizeof e1;
    assert_int_equal(ctl("epoch", &e1, &len, &in, sizeof in), 0);
    assert_true(e1 > e0);
    /* lengths must be the value's size */
    assert_int_equal(ctl("epoch", NULL, NULL, &in, 4), EINVAL);
    uint32_t small = 0;
    len = sizeof small;
    assert_int_equal(ctl("epoch", &small, &len, NULL, 0), EINVAL);
}

static void test_stats(void **state)
{
    (void)state;
    size_t a0 = stat_of("stats.allocated");
    enum { N = 64, SZ = 64 * 1024 };
    static void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = TM_API(malloc)(SZ);
        assert_non_null(p[i]);
        memset(p[i], i, SZ);
    }
    size_t a1 = stat_of("stats.allocated");
    if (a1 < a0 + (size_t)N * SZ)
        fail_msg("stats.allocated %zu -> %zu holding %d x %d bytes", a0, a1, N, SZ);
    /* each name is its field of trimalloc_stats_t (nothing allocates
     * between the readings: one thread, no background thread); mapped and
     * retained split the mapped bytes as jemalloc does, retained not
     * included in mapped */
    uint64_t e = 1;
    size_t elen = sizeof e;
    assert_int_equal(ctl("epoch", &e, &elen, &e, sizeof e), 0);
    trimalloc_stats_t s = tm_stats();
    assert_int_equal(stat_of("stats.allocated"), s.allocated);
    assert_int_equal(stat_of("stats.active"), s.active);
    assert_int_equal(stat_of("stats.resident"), s.resident);
    assert_int_equal(stat_of("stats.metadata"), s.metadata);
    assert_int_equal(stat_of("stats.mapped"), s.resident);
    assert_int_equal(stat_of("stats.retained"), s.mapped - s.resident);
    assert_true(s.active >= (size_t)N * SZ);
    unsigned narenas = 0;
    size_t nlen = sizeof narenas;
    assert_int_equal(ctl("arenas.narenas", &narenas, &nlen, NULL, 0), 0);
    assert_int_equal(narenas, s.narenas);
    for (int i = 0; i < N; i++)
        TM_API(free)(p[i]);
    size_t a2 = stat_of("stats.allocated");
    if (a2 + (size_t)N * SZ > a1)
        fail_msg("stats.allocated %zu -> %zu after freeing %d x %d bytes", a1, a2, N, SZ);
    /* read-only: no new value, not even a length alone */
    size_t v = 0, len = sizeof v;
    assert_int_equal(ctl("stats.allocated", &v, &len, &v, sizeof v), EPERM);
    assert_int_equal(ctl("stats.allocated", &v, &len, NULL, sizeof v), EPERM);
    assert_int_equal(ctl("arenas.narenas", NULL, NULL, &narenas, sizeof narenas), EPERM);
    /* a length that is not the value's: what fits is copied, the length
     * says how much, EINVAL */
    uint32_t small = 0;
    len = sizeof small;
    assert_int_equal(ctl("stats.resident", &small, &len, NULL, 0), EINVAL);
    assert_int_equal(len, sizeof small);
    size_t wide[2] = {0, 12345};
    len = sizeof wide;
    assert_int_equal(ctl("stats.resident", wide, &len, NULL, 0), EINVAL);
    assert_int_equal(len, sizeof(size_t));
    assert_int_equal(wide[1], 12345);
    /* near names are not ours */
    len = sizeof v;
    assert_int_equal(ctl("stats.allocatedx", &v, &len, NULL, 0), ENOENT);
}

static void test_background_thread(void **state)
{
    (void)state;
    bool old = true, on = true, off = false;
    size_t len = sizeof old;
    long opt = -1;
    assert_int_equal(ctl("background_thread", &old, &len, NULL, 0), 0);
    assert_int_equal(TM_API(trimalloc_option_get)("background_thread", &opt), 0);
    assert_int_equal(old, opt != 0);
    /* switch it on: the option follows; the value read is the old one */
    assert_int_equal(ctl("background_thread", &old, &len, &on, sizeof on), 0);
    assert_int_equal(TM_API(trimalloc_option_get)("background_thread", &opt), 0);
    assert_int_equal(opt, 1);
    len = sizeof old;
    assert_int_equal(ctl("background_thread", &old, &len, &off, sizeof off), 0);
    assert_true(old);
    assert_int_equal(TM_API(trimalloc_option_get)("background_thread", &opt), 0);
    assert_int_equal(opt, 0);
    /* a bool is one byte */
    int wide = 1;
    assert_int_equal(ctl("background_thread", NULL, NULL, &wide, sizeof wide), EINVAL);
    assert_int_equal(TM_API(trimalloc_option_get)("background_thread", &opt), 0);
    assert_int_equal(opt, 0);
}

/* arena.<i>.purge and .decay run _heapmin: memory the program freed goes
 * back to the kernel. jemalloc's indexes: below narenas, narenas itself (the
 * old "all"), 4096 (MALLCTL_ARENAS_ALL); others are ENOENT. */
static void test_purge(void **state)
{
    (void)state;
    unsigned narenas = 0;
    size_t nlen = sizeof narenas;
    assert_int_equal(ctl("arenas.narenas", &narenas, &nlen, NULL, 0), 0);
    assert_true(narenas >= 1);
    char at_n[32], past_n[32];
    snprintf(at_n, sizeof at_n, "arena.%u.purge", narenas);
    snprintf(past_n, sizeof past_n, "arena.%u.decay", narenas + 1);
    const char *names[] = {"arena.4096.purge", "arena.0.decay", at_n};
    for (size_t k = 0; k < TU_ARRAY_LEN(names); k++) {
        enum { N = 4096, SZ = 2048 };
        static void *p[N];
        for (int i = 0; i < N; i++) {
            p[i] = TM_API(malloc)(SZ);
            assert_non_null(p[i]);
            memset(p[i], 7, SZ);
        }
        for (int i = 0; i < N; i++)
            TM_API(free)(p[i]);
        trimalloc_stats_t s0 = tm_stats();
        assert_int_equal(ctl(names[k], NULL, NULL, NULL, 0), 0);
        trimalloc_stats_t s1 = tm_stats();
        assert_int_equal(s1.heapmin_calls, s0.heapmin_calls + 1);
        if (s1.heapmin_bytes_released <= s0.heapmin_bytes_released)
            fail_msg("%s released nothing after %d x %d bytes were freed", names[k], N, SZ);
    }
    /* the destroyed arenas (jemalloc's 4097): there are none, nothing runs */
    trimalloc_stats_t s0 = tm_stats();
    assert_int_equal(ctl("arena.4097.purge", NULL, NULL, NULL, 0), 0);
    assert_int_equal(tm_stats().heapmin_calls, s0.heapmin_calls);
    /* takes no value either way, and runs nothing when given one */
    size_t v = 0, len = sizeof v;
    assert_int_equal(ctl("arena.0.purge", &v, &len, NULL, 0), EPERM);
    assert_int_equal(ctl("arena.0.purge", NULL, &len, NULL, 0), EPERM);
    assert_int_equal(ctl("arena.0.purge", NULL, NULL, &v, sizeof v), EPERM);
    assert_int_equal(ctl("arena.0.purge", NULL, NULL, NULL, sizeof v), EPERM);
    /* not an arena name, or no such arena */
    const char *bad[] = {"arena..purge", "arena.1x.purge", "arena.1.purged", "arena.1234567890.purge",
                         "arena.-1.purge", "arena.0", past_n, "arena.4095.purge"};
    for (size_t k = 0; k < TU_ARRAY_LEN(bad); k++) {
        int r = ctl(bad[k], NULL, NULL, NULL, 0);
        if (r == 0)
            fail_msg("mallctl(\"%s\") succeeded", bad[k]);
    }
    assert_int_equal(tm_stats().heapmin_calls, s0.heapmin_calls);
}

static void test_tcache_flush(void **state)
{
    (void)state;
    long scale = -1;
    assert_int_equal(TM_API(trimalloc_option_get)("tcache_scale", &scale), 0);
    if (scale == 0) {
        /* caching off (api_mallctl_nocache): no cache to flush, as
         * jemalloc answers with tcache:false, before it looks at the
         * arguments */
        assert_int_equal(ctl("thread.tcache.flush", NULL, NULL, NULL, 0), EFAULT);
        assert_int_equal(ctl("thread.tcache.flush", NULL, NULL, NULL, 4), EFAULT);
        return;
    }
    /* an empty start: no cache and no transfer cache holds a block (a
     * transfer cache is the arena's, not the thread's, and the flush leaves
     * it), then a few frees that fit in this thread's bin */
    assert_int_equal(TM_API(_heapmin)(), 0);
    enum { N = 20, SZ = 64 };
    void *p[N];
    for (int i = 0; i < N; i++)
        assert_non_null(p[i] = TM_API(malloc)(SZ));
    for (int i = 0; i < N; i++)
        TM_API(free)(p[i]);
    size_t before = tm_stats().tcache_bytes;
    assert_true(before >= (size_t)N * SZ);
    assert_int_equal(ctl("thread.tcache.flush", NULL, NULL, NULL, 0), 0);
    size_t after = tm_stats().tcache_bytes;
    if (after != 0)
        fail_msg("thread.tcache.flush: cached bytes %zu -> %zu, not 0", before, after);
    /* the cache works on */
    void *q = TM_API(malloc)(SZ);
    assert_non_null(q);
    TM_API(free)(q);
    assert_true(tm_stats().tcache_bytes > 0);
    /* takes no value either way, and flushes nothing when given one */
    before = tm_stats().tcache_bytes;
    size_t len = sizeof q;
    assert_int_equal(ctl("thread.tcache.flush", &q, &len, NULL, 0), EPERM);
    assert_int_equal(ctl("thread.tcache.flush", NULL, NULL, NULL, 4), EPERM);
    assert_int_equal(tm_stats().tcache_bytes, before);
}

/* malloc_stats_print: trimalloc's report, in pieces to the callback, which
 * may allocate */
typedef struct {
    char text[16384];
    size_t len;
    int pieces;
} report_t;

static void collect(void *opaque, const char *piece)
{
    report_t *r = opaque;
    size_t n = strlen(piece);
    void *scratch = TM_API(malloc)(n + 1); /* a callback that allocates, as redis's does */
    assert_non_null(scratch);
    memcpy(scratch, piece, n + 1);
    if (r->len + n < sizeof r->text) {
        memcpy(r->text + r->len, scratch, n + 1);
        r->len += n;
    }
    TM_API(free)(scratch);
    r->pieces++;
}

static void test_malloc_stats_print(void **state)
{
    (void)state;
    static report_t r;
    void *held = TM_API(malloc)(3 * TU_MIB);
    assert_non_null(held);
    memset(&r, 0, sizeof r);
    TM_API(malloc_stats_print)(collect, &r, NULL);
    assert_true(r.pieces > 1);
    if (strncmp(r.text, "trimalloc statistics\n", 21) != 0 || !strstr(r.text, "  allocated "))
        fail_msg("malloc_stats_print wrote:\n%.300s", r.text);
    memset(&r, 0, sizeof r);
    TM_API(malloc_stats_print)(collect, &r, "J");
    assert_true(r.len > 2);
    if (r.text[0] != '{' || strcmp(r.text + r.len - 3, "]}\n") != 0 || !strstr(r.text, "\"allocated\":"))
        fail_msg("malloc_stats_print(\"J\") wrote:\n%.300s", r.text);
    TM_API(free)(held);
}

/* mallctlnametomib/mallctlbymib with errno preset, which must come back unchanged */
static int name_to_mib(const char *name, size_t *mib, size_t *len)
{
    errno = ERRNO_SENTINEL;
    int r = TM_API(mallctlnametomib)(name, mib, len);
    if (errno != ERRNO_SENTINEL)
        fail_msg("mallctlnametomib(\"%s\") changed errno to %d", name ? name : "(null)", errno);
    return r;
}

static int by_mib(const size_t *mib, size_t len, void *oldp, size_t *oldlenp, void *newp, size_t newlen)
{
    errno = ERRNO_SENTINEL;
    int r = TM_API(mallctlbymib)(mib, len, oldp, oldlenp, newp, newlen);
    if (errno != ERRNO_SENTINEL)
        fail_msg("mallctlbymib changed errno to %d", errno);
    return r;
}

/* The same names by number (jemalloc's MIB pair): each MIB reaches the
 * allocator that answers the name, trimalloc's names here, the others the
 * next jemalloc (api_mallctl_next's stand-in). */
static void test_mib(void **state)
{
    (void)state;
    size_t mib[8], len = 8;
    /* stats.allocated by number follows a block the program holds */
    assert_int_equal(name_to_mib("stats.allocated", mib, &len), 0);
    assert_int_equal(len, 2);
    size_t before = 0, held = 0, vlen = sizeof before;
    assert_int_equal(by_mib(mib, len, &before, &vlen, NULL, 0), 0);
    void *p = TM_API(malloc)(8 * TU_MIB);
    assert_non_null(p);
    memset(p, 1, 8 * TU_MIB);
    vlen = sizeof held;
    assert_int_equal(by_mib(mib, len, &held, &vlen, NULL, 0), 0);
    TM_API(free)(p);
    if (held < before + 8 * TU_MIB)
        fail_msg("stats.allocated by MIB %zu -> %zu holding 8 MiB", before, held);
    /* one MIB per name: stats.active differs from stats.allocated */
    size_t mib2[8], len2 = 8;
    assert_int_equal(name_to_mib("stats.active", mib2, &len2), 0);
    assert_int_equal(len2, 2);
    assert_true(mib2[0] == mib[0] && mib2[1] != mib[1]);
    /* arenas.narenas as mallctl reads it */
    unsigned n1 = 0, n2 = 0;
    len = 8;
    assert_int_equal(name_to_mib("arenas.narenas", mib, &len), 0);
    vlen = sizeof n1;
    assert_int_equal(by_mib(mib, len, &n1, &vlen, NULL, 0), 0);
    vlen = sizeof n2;
    assert_int_equal(ctl("arenas.narenas", &n2, &vlen, NULL, 0), 0);
    assert_true(n1 >= 1 && n1 == n2);
    /* epoch written by number advances it */
    uint64_t e0 = 0, e1 = 0, in = 1;
    len = 8;
    assert_int_equal(name_to_mib("epoch", mib, &len), 0);
    assert_int_equal(len, 1);
    vlen = sizeof e0;
    assert_int_equal(by_mib(mib, len, &e0, &vlen, NULL, 0), 0);
    vlen = sizeof e1;
    assert_int_equal(by_mib(mib, len, &e1, &vlen, &in, sizeof in), 0);
    assert_true(e1 > e0);
    /* arena.<i>.purge: the index is a number the program may change, as
     * jemalloc's users do with MALLCTL_ARENAS_ALL; it runs _heapmin */
    len = 8;
    assert_int_equal(name_to_mib("arena.0.purge", mib, &len), 0);
    assert_int_equal(len, 3);
    assert_int_equal(mib[1], 0);
    mib[1] = 4096;
    trimalloc_stats_t s0 = tm_stats();
    assert_int_equal(by_mib(mib, len, NULL, NULL, NULL, 0), 0);
    assert_int_equal(tm_stats().heapmin_calls, s0.heapmin_calls + 1);
    mib[1] = 4095; /* no such arena, as by name */
    assert_int_equal(by_mib(mib, len, NULL, NULL, NULL, 0), ENOENT);
    mib[1] = 1000000000; /* more digits than any index */
    assert_int_equal(by_mib(mib, len, NULL, NULL, NULL, 0), ENOENT);
    assert_int_equal(tm_stats().heapmin_calls, s0.heapmin_calls + 1);
    /* a partial MIB (a short *miblenp) names nothing until completed */
    size_t part[8], plen = 2;
    assert_int_equal(name_to_mib("arena.0.decay", part, &plen), 0);
    assert_int_equal(plen, 2);
    assert_int_equal(by_mib(part, plen, NULL, NULL, NULL, 0), ENOENT);
    part[2] = mib[2]; /* "purge", from the full lookup above */
    part[1] = 4096;
    assert_int_equal(by_mib(part, 3, NULL, NULL, NULL, 0), 0);
    assert_int_equal(tm_stats().heapmin_calls, s0.heapmin_calls + 2);
    /* a MIB of ours with a word that is no part of the name, or too long */
    len = 8;
    assert_int_equal(name_to_mib("stats.resident", mib, &len), 0);
    size_t bad[4] = {mib[0], 999, 0, 0};
    vlen = sizeof held;
    assert_int_equal(by_mib(bad, 2, &held, &vlen, NULL, 0), ENOENT);
    bad[1] = mib[1];
    assert_int_equal(by_mib(bad, 4, &held, &vlen, NULL, 0), ENOENT);
    assert_int_equal(by_mib(bad, 0, &held, &vlen, NULL, 0), ENOENT);
    /* names nobody answers, and bad calls */
    len = 8;
    assert_int_equal(name_to_mib("no.such.name", mib, &len), ENOENT);
    assert_int_equal(name_to_mib("stats.allocated.x", mib, &len), ENOENT);
    assert_int_equal(name_to_mib("stats..allocated", mib, &len), ENOENT);
    assert_int_equal(name_to_mib("arena.x.purge", mib, &len), ENOENT);
    assert_int_equal(name_to_mib("arena.4095.purge", mib, &len), ENOENT); /* no such arena */
    assert_int_equal(name_to_mib("arena.4097.decay", mib, &len), 0);
    assert_int_equal(name_to_mib(NULL, mib, &len), EINVAL);
    assert_int_equal(name_to_mib("epoch", NULL, &len), EINVAL);
    assert_int_equal(by_mib(NULL, 1, NULL, NULL, NULL, 0), EINVAL);
    const char *version = NULL;
    len = 8;
    vlen = sizeof version;
#ifndef TM_TEST_NEXT_MALLCTL
    size_t other[2] = {1, 7}; /* a jemalloc MIB, with no jemalloc here */
    assert_int_equal(by_mib(other, 2, NULL, NULL, NULL, 0), ENOENT);
    assert_int_equal(name_to_mib("arenas.nbins", mib, &len), ENOENT);
    len = 8;
    assert_int_equal(name_to_mib("version", mib, &len), 0);
    assert_int_equal(by_mib(mib, len, &version, &vlen, NULL, 0), 0);
    assert_string_equal(version, "0.0.0-0-trimalloc");
#else
    /* the program's jemalloc answers its names and their MIBs */
    unsigned nbins = 0;
    assert_int_equal(name_to_mib("arenas.nbins", mib, &len), 0);
    assert_int_equal(len, 2);
    vlen = sizeof nbins;
    assert_int_equal(by_mib(mib, len, &nbins, &vlen, NULL, 0), 0);
    assert_int_equal(nbins, 42);
    len = 8;
    assert_int_equal(name_to_mib("version", mib, &len), 0);
    vlen = sizeof version;
    assert_int_equal(by_mib(mib, len, &version, &vlen, NULL, 0), 0);
    assert_string_equal(version, "next-mallctl-test");
#endif
}

static void test_bad_calls(void **state)
{
    (void)state;
    assert_int_equal(ctl(NULL, NULL, NULL, NULL, 0), EINVAL);
    assert_int_equal(ctl("", NULL, NULL, NULL, 0), ENOENT);
    assert_int_equal(ctl("no.such.name", NULL, NULL, NULL, 0), ENOENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_other_names_go_to_the_next_mallctl),
        cmocka_unit_test(test_epoch),
        cmocka_unit_test(test_stats),
        cmocka_unit_test(test_background_thread),
        cmocka_unit_test(test_purge),
        cmocka_unit_test(test_tcache_flush),
        cmocka_unit_test(test_malloc_stats_print),
        cmocka_unit_test(test_mib),
        cmocka_unit_test(test_bad_calls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
