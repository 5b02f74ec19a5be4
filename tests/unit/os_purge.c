/*
 * os_purge.c (unit) -- giving many ranges back at once (os_purge_ranges,
 * os_batch_*): every range the caller names is purged and reads zero,
 * every page it does not name keeps its bytes, ranges longer than one
 * call's bound are cut, more ranges than one call takes are split over
 * calls, whole page tables (2 MiB, aligned) go in one call however long,
 * and a range the kernel refuses is reported alone while the others of
 * its call still go. Each case runs twice: with process_madvise
 * vectors on (as inside _heapmin) and off (one madvise per range).
 */
#include "test_cmocka.h"
#include "internal.h"

#include <pthread.h>
#include <sys/mman.h>

static char *map_filled(size_t pages, int byte) {
    char *p = mmap(NULL, pages * TM_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    memset(p, byte, pages * TM_PAGE);
    return p;
}

static bool resident(const char *pg) {
    unsigned char v = 0;
    assert_int_equal(mincore((void *)pg, TM_PAGE, &v), 0);
    return v & 1;
}

/* Page i of m is purged exactly when want[i]: it reads zero and is not
 * resident; the others still hold `byte` everywhere. */
static void check_pages(const char *m, size_t pages, const bool *want, int byte) {
    for (size_t i = 0; i < pages; i++) {
        const char *pg = m + i * TM_PAGE;
        if (want[i]) {
            if (resident(pg)) fail_msg("page %zu should have been given back", i);
            assert_int_equal(tu_find_not_byte(pg, TM_PAGE, 0), (size_t)-1);
        } else if (tu_find_not_byte(pg, TM_PAGE, (unsigned char)byte) != (size_t)-1) {
            fail_msg("page %zu was not named but lost its bytes", i);
        }
    }
}

/* 40 one-page ranges (more than one call takes), a 3-page range and a
 * 1.5 MiB range (longer than one call's bytes), all apart. */
/* state: NULL for vectors off, non-NULL for on */
static int vectors_setup(void **state) {
    if (*state) os_purge_vectors_on();
    return 0;
}

static int vectors_teardown(void **state) {
    (void)state;
    os_purge_vectors_off();
    return 0;
}

/* Purges the 42 ranges, checks every page, and returns the system calls
 * it took. */
static unsigned long purge_42_ranges(void) {
    enum { PAGES = 1024 };
    char *m = map_filled(PAGES, 0xab);
    static bool want[PAGES];
    memset(want, 0, sizeof want);
    os_range_t r[42];
    unsigned n = 0;
    size_t expect = 0;
    for (unsigned i = 0; i < 40; i++) { /* pages 1, 3, ..., 79 */
        r[n].base = m + (2 * i + 1) * TM_PAGE;
        r[n++].len = TM_PAGE;
        want[2 * i + 1] = true;
    }
    r[n].base = m + 100 * TM_PAGE;
    r[n++].len = 3 * TM_PAGE;
    for (unsigned i = 100; i < 103; i++) want[i] = true;
    size_t big = (3u << 20) / 2 / TM_PAGE; /* 1.5 MiB of pages */
    r[n].base = m + 200 * TM_PAGE;
    r[n++].len = big * TM_PAGE;
    for (size_t i = 200; i < 200 + big; i++) want[i] = true;
    for (unsigned i = 0; i < n; i++) expect += r[i].len;
    bool ok[42];
    memset(ok, 0, sizeof ok);
    unsigned long calls = os_purge_syscalls;
    assert_int_equal(os_purge_ranges(r, n, ok), expect);
    calls = os_purge_syscalls - calls;
    for (unsigned i = 0; i < n; i++)
        if (!ok[i]) fail_msg("range %u reported not purged", i);
    check_pages(m, PAGES, want, 0xab);
    munmap(m, PAGES * TM_PAGE);
    return calls;
}

static void test_ranges_purged_others_kept(void **state) {
    unsigned long calls = purge_42_ranges();
    /* 40 + 1 + 1.5 MiB cut in pieces: at least 43 madvise calls, or with
     * vectors (64 ranges or 1 MiB a call) the 41 small ranges and the
     * first 852 KiB of the long one, then the rest of it: 2 calls */
    if (!*state || os_purge_vectors_state() < 0) /* off, or the kernel refused them */
        assert_true(calls >= 43);
    else if (calls > 2)
        fail_msg("%lu system calls for 42 ranges with vectors on (expected 2)", calls);
}

static void *purge_in_thread(void *arg) {
    *(unsigned long *)arg = purge_42_ranges();
    return NULL;
}

/* Vectors are the permission of the thread that turned them on (a
 * _heapmin caller, which checked its own seccomp filter): another thread
 * purging meanwhile -- which may have a filter of its own -- makes one
 * madvise per range. */
static void test_vectors_are_the_callers_alone(void **state) {
    (void)state;
    os_purge_vectors_on();
    int mine = os_purge_vectors_state();
    unsigned long calls = 0;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, purge_in_thread, &calls), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    if (calls < 43)
        fail_msg("another thread used process_madvise (%lu calls for 42 ranges) while "
                 "this one had vectors on", calls);
    calls = purge_42_ranges();
    if (mine > 0 && calls > 2)
        fail_msg("%lu system calls for 42 ranges in the thread with vectors on", calls);
}

/* The middle range is not mapped: madvise refuses it (ENOMEM). It alone
 * is reported; the ranges before and after it in the same call are
 * purged, and the count is theirs. */
static void test_refused_range_reported_alone(void **state) {
    enum { PAGES = 64 };
    char *m = map_filled(PAGES, 0x5c);
    assert_int_equal(munmap(m + 20 * TM_PAGE, 4 * TM_PAGE), 0); /* the hole */
    os_range_t r[5] = {
        {m + 2 * TM_PAGE, 2 * TM_PAGE},  {m + 10 * TM_PAGE, TM_PAGE},
        {m + 20 * TM_PAGE, 4 * TM_PAGE}, {m + 30 * TM_PAGE, 3 * TM_PAGE},
        {m + 40 * TM_PAGE, TM_PAGE},
    };
    bool ok[5];
    (void)state;
    size_t got = os_purge_ranges(r, 5, ok);
    assert_true(ok[0] && ok[1] && !ok[2] && ok[3] && ok[4]);
    assert_int_equal(got, 7 * TM_PAGE);
    bool want[PAGES] = {false};
    want[2] = want[3] = want[10] = want[30] = want[31] = want[32] = want[40] = true;
    /* the hole cannot be read: check around it */
    check_pages(m, 20, want, 0x5c);
    check_pages(m + 24 * TM_PAGE, PAGES - 24, want + 24, 0x5c);
    munmap(m, 20 * TM_PAGE);
    munmap(m + 24 * TM_PAGE, (PAGES - 24) * TM_PAGE);
}

/* Whole page tables -- 2 MiB spans on a 2 MiB boundary -- go in one call
 * however many there are, and a range is cut where a table begins, so the
 * tables it covers whole stay whole (os.c's "page tables" note: such a
 * call costs the process's other threads about a tenth). 6 MiB from a
 * boundary: one call. The same 6 MiB less its first page: the rest of the
 * first table, 1 MiB (one call's bound) and then to the boundary, then the
 * two whole tables: three calls, where cuts every 1 MiB made six. */
static void test_whole_page_tables_in_one_call(void **state) {
    (void)state;
    const size_t table = (size_t)2 << 20, pages = 3 * table / TM_PAGE;
    char *map = mmap(NULL, 4 * table, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(map != MAP_FAILED);
    char *m = (char *)(((uintptr_t)map + table - 1) & ~(uintptr_t)(table - 1));
    static bool want[3 * (2 << 20) / 4096 + 1];
    for (int pass = 0; pass < 2; pass++) {
        size_t skip = pass ? TM_PAGE : 0;
        memset(m, 0x3c, 3 * table + TM_PAGE);
        os_range_t r = {m + skip, 3 * table - skip};
        bool ok = false;
        unsigned long calls = os_purge_syscalls;
        assert_int_equal(os_purge_ranges(&r, 1, &ok), 3 * table - skip);
        calls = os_purge_syscalls - calls;
        assert_true(ok);
        for (size_t i = 0; i <= pages; i++) want[i] = i >= skip / TM_PAGE && i < pages;
        check_pages(m, pages + 1, want, 0x3c);
        if (calls != (pass ? 3u : 1u))
            fail_msg("%lu calls for 6 MiB %s a page-table boundary (expected %u)", calls,
                     pass ? "starting a page after" : "starting on", pass ? 3u : 1u);
    }
    munmap(map, 4 * table);
}

/* A batch merges touching ranges, keeps only whole pages, flushes itself
 * when full, and counts what it released. */
static void test_batch_merges_and_flushes(void **state) {
    (void)state;
    enum { PAGES = 2 * OS_BATCH_RANGES + 40 };
    char *m = map_filled(PAGES, 0x77);
    bool want[PAGES] = {false};
    os_batch_t b = {.n = 0, .released = 0};
    /* pages 0-3 in two touching halves: one range */
    os_batch_add(&b, m, m + 2 * TM_PAGE);
    os_batch_add(&b, m + 2 * TM_PAGE, m + 4 * TM_PAGE);
    assert_int_equal(b.n, 1);
    for (int i = 0; i < 4; i++) want[i] = true;
    /* a range with partial pages at both ends gives only its whole page */
    os_batch_add(&b, m + 6 * TM_PAGE - 8, m + 8 * TM_PAGE + 8);
    want[6] = want[7] = true;
    os_batch_add(&b, m + 9 * TM_PAGE + 8, m + 10 * TM_PAGE - 8); /* no whole page */
    assert_int_equal(b.n, 2);
    /* then more separate pages than the batch holds: it flushes itself */
    for (unsigned i = 0; i < OS_BATCH_RANGES + 10; i++) {
        unsigned pg = 12 + 2 * i;
        os_batch_add(&b, m + pg * TM_PAGE, m + (pg + 1) * TM_PAGE);
        want[pg] = true;
    }
    assert_true(b.n < OS_BATCH_RANGES);
    assert_false(resident(m)); /* the first ranges went with the full batch */
    size_t pages = 0;
    for (unsigned i = 0; i < PAGES; i++) pages += want[i];
    assert_int_equal(os_batch_flush(&b), pages * TM_PAGE);
    assert_int_equal(b.n, 0);
    check_pages(m, PAGES, want, 0x77);
    munmap(m, PAGES * TM_PAGE);
}

int main(void) {
    static int on = 1;
#define BOTH(t)                                                                          \
    {#t " (one madvise per range)", t, vectors_setup, vectors_teardown, NULL},           \
    {                                                                                    \
        #t " (vectors)", t, vectors_setup, vectors_teardown, &on                         \
    }
    const struct CMUnitTest tests[] = {
        BOTH(test_ranges_purged_others_kept),
        BOTH(test_refused_range_reported_alone),
        BOTH(test_batch_merges_and_flushes),
        BOTH(test_whole_page_tables_in_one_call),
        cmocka_unit_test_teardown(test_vectors_are_the_callers_alone, vectors_teardown),
    };
    return cmocka_run_group_tests_name("unit_os_purge", tests, NULL, NULL);
}
