/*
 * tcache_share.c (unit) -- the bound on all thread caches together
 * (tcache_total_mb, tcache.c): the live caches share it, so with many
 * threads each cache holds less; with few, nothing changes.
 *
 * Each scenario runs on fresh threads (empty caches). tcache_total_mb is
 * settable at run time, and a bin takes a new bound at its next overflow,
 * so the tests set it before their threads allocate.
 *
 * A cache a trimmer emptied leaves the count the bound is shared by; one
 * it could not empty (no barrier: membarrier and the mprotect fallback
 * both refused, here by a seccomp filter in a child) stays in it.
 */
#include "test_cmocka.h"
#include "internal.h"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>

static const size_t sizes[] = {16, 48, 64, 100, 200, 300, 500, 700, 1000,
                               1500, 2500, 3500, 5000, 7000, 8192};

static unsigned cls_of(size_t size) { return size_class_of(size); }

static void set_total(long mb) { assert_int_equal(TM_API(trimalloc_option_set)("tcache_total_mb", mb), 0); }

/* Bytes of blocks the calling thread's cache holds. */
static size_t own_cache_bytes(void) {
    tm_tcache_t *tc = tm_tls.own;
    size_t bytes = 0;
    for (unsigned c = 1; c <= TM_NCLASSES; c++)
        bytes += (size_t)tc_bin_count(&tc->bins[c]) * tm_classes[c].size;
    return bytes;
}

/* What the bins of the classes of sizes[] (each its own class) hold at
 * their start sizes: the floor of a share for a cache that used those
 * classes only. (Summed over every class until 2026-12-08; with the
 * classes of 12-32 KiB that sum, 1.05 MiB, plus the share came within a
 * few KiB of what the bursts leave in an unbounded cache, and the check
 * that the bursts fill the caches failed now and then under the
 * sanitizers.) */
static size_t start_bytes(void) {
    size_t bytes = 0;
    for (size_t k = 0; k < TU_ARRAY_LEN(sizes); k++) {
        unsigned c = cls_of(sizes[k]);
        uint32_t cap = tm_classes[c].tc_cap * (uint32_t)tm_opt.tcache_scale_pct / 100;
        bytes += (size_t)(cap < TC_START_SLOTS ? cap : TC_START_SLOTS) * tm_classes[c].size;
    }
    return bytes;
}

/* Bursts of 64 blocks of every size, 10 rounds: every bin overflows and,
 * unbounded, grows. */
static const char *bursts(void) {
    void *p[64];
    for (int round = 0; round < 10; round++)
        for (size_t k = 0; k < TU_ARRAY_LEN(sizes); k++) {
            for (int i = 0; i < 64; i++)
                if (!(p[i] = TM_API(malloc)(sizes[k]))) return "malloc failed";
            for (int i = 0; i < 64; i++) TM_API(free)(p[i]);
        }
    return NULL;
}

/* ---- many threads: each cache within its share --------------------------------------- */

enum { NTHREADS = 24 };

typedef struct {
    pthread_barrier_t ready, measured;
    size_t bytes[NTHREADS];
    const char *why;
} crowd_t;

typedef struct {
    crowd_t *crowd;
    int index;
} member_t;

static void *member(void *arg) {
    member_t *m = arg;
    /* every cache exists before anyone allocates: the share is final */
    TM_API(free)(TM_API(malloc)(16));
    pthread_barrier_wait(&m->crowd->ready);
    const char *why = bursts();
    if (why) m->crowd->why = why;
    m->crowd->bytes[m->index] = own_cache_bytes();
    pthread_barrier_wait(&m->crowd->measured); /* keep the cache live until all have measured */
    return NULL;
}

/* The most bytes any one of NTHREADS threads' caches held after bursts. */
static size_t crowd_max_bytes(void) {
    crowd_t crowd = {.why = NULL};
    member_t m[NTHREADS];
    pthread_t t[NTHREADS];
    pthread_barrier_init(&crowd.ready, NULL, NTHREADS);
    pthread_barrier_init(&crowd.measured, NULL, NTHREADS);
    for (int i = 0; i < NTHREADS; i++) {
        m[i] = (member_t){&crowd, i};
        assert_int_equal(pthread_create(&t[i], NULL, member, &m[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++) assert_int_equal(pthread_join(t[i], NULL), 0);
    pthread_barrier_destroy(&crowd.ready);
    pthread_barrier_destroy(&crowd.measured);
    if (crowd.why) fail_msg("%s", crowd.why);
    size_t max = 0;
    for (int i = 0; i < NTHREADS; i++)
        if (crowd.bytes[i] > max) max = crowd.bytes[i];
    return max;
}

/* With 8 MiB for all and at least NTHREADS + 1 live caches (this thread's
 * too), a share is at most 8 MiB / 25 = 328 KiB; a cache then holds at
 * most its start sizes plus the share. Without the bound the same bursts
 * leave about 1.3 MiB in each cache (bins grown to 256 KiB of the largest
 * classes). */
static void test_each_cache_stays_within_its_share(void **state) {
    (void)state;
    TM_API(free)(TM_API(malloc)(16)); /* this thread's cache counts too */
    size_t share = ((size_t)8 << 20) / (NTHREADS + 1), bound = start_bytes() + share;
    set_total(8);
    size_t bounded = crowd_max_bytes();
    set_total(0);
    size_t unbounded = crowd_max_bytes();
    set_total(64);
    if (bounded > bound)
        fail_msg("with tcache_total_mb:8 and %d threads a cache held %zu bytes (at most %zu: the "
                 "start sizes %zu plus the share %zu)", NTHREADS, bounded, bound, start_bytes(), share);
    if (unbounded <= bound)
        fail_msg("with no common bound a cache held only %zu bytes (the bounded run's limit: %zu): "
                 "the bursts no longer fill the caches, so the test proves nothing", unbounded, bound);
}

/* ---- few threads: the default bound changes nothing ----------------------------------- */

static void *grow_4k(void *arg) {
    uint32_t *cap = arg;
    void *p[64];
    for (int round = 0; round < 30; round++) {
        for (int i = 0; i < 64; i++)
            if (!(p[i] = TM_API(malloc)(4096))) return (void *)1;
        for (int i = 0; i < 64; i++) TM_API(free)(p[i]);
    }
    *cap = tc_bin_cap(&tm_tls.own->bins[cls_of(4096)]);
    return NULL;
}

/* The 4 KiB bin's capacity is 32 blocks and it may grow to 64 (256 KiB):
 * at the default 64 MiB, a handful of threads leaves each its whole share. */
static void test_few_threads_grow_as_before(void **state) {
    (void)state;
    long mb = 0;
    assert_int_equal(TM_API(trimalloc_option_get)("tcache_total_mb", &mb), 0);
    assert_int_equal(mb, 64);
    uint32_t cap = 0;
    pthread_t t;
    void *r = NULL;
    assert_int_equal(pthread_create(&t, NULL, grow_4k, &cap), 0);
    assert_int_equal(pthread_join(t, &r), 0);
    assert_null(r);
    if (cap != 64) fail_msg("the 4 KiB bin of a lone thread reached %u blocks, not 64", cap);
}

/* ---- a grown bin shrinks to a smaller share at its next overflow ---------------------- */

typedef struct {
    uint32_t grown_cap, cap_after, count_after;
    const char *why;
} shrink_t;

static void *grow_then_shrink(void *arg) {
    shrink_t *s = arg;
    unsigned cls = cls_of(4096);
    void *p[64];
    for (int round = 0; round < 30; round++) {
        for (int i = 0; i < 64; i++)
            if (!(p[i] = TM_API(malloc)(4096))) { s->why = "malloc failed"; return NULL; }
        for (int i = 0; i < 64; i++) TM_API(free)(p[i]);
    }
    s->grown_cap = tc_bin_cap(&tm_tls.own->bins[cls]);
    set_total(1); /* far below this process's caches: each at its start sizes */
    for (int i = 0; i < 64; i++)
        if (!(p[i] = TM_API(malloc)(4096))) { s->why = "malloc failed"; return NULL; }
    for (int i = 0; i < 64; i++) TM_API(free)(p[i]);
    s->cap_after = tc_bin_cap(&tm_tls.own->bins[cls]);
    s->count_after = tc_bin_count(&tm_tls.own->bins[cls]);
    set_total(64);
    return NULL;
}

static void test_a_grown_bin_shrinks_when_the_share_does(void **state) {
    (void)state;
    shrink_t s = {0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, grow_then_shrink, &s), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    if (s.why) fail_msg("%s", s.why);
    assert_int_equal(s.grown_cap, 64);
    /* 1 MiB over 2 or more caches (this thread's and the main thread's)
     * is at most a third of what every bin at its capacity holds (1.5
     * MiB): the 32-block capacity scales to 10 or less */
    if (s.cap_after > 32 / 3 || s.count_after > s.cap_after)
        fail_msg("after the share shrank, the 4 KiB bin (grown to %u) is at %u blocks holding %u; "
                 "expected at most %d", s.grown_cap, s.cap_after, s.count_after, 32 / 3);
}

/* ---- caches a trimmer could not empty stay counted ---- */
enum { IDLE_WORKERS = 4 };
static pthread_barrier_t filled;
static pthread_mutex_t go_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t go_cv = PTHREAD_COND_INITIALIZER;
static int go;

static void *fill_and_wait(void *arg) {
    (void)arg;
    void *v[1000];
    for (int i = 0; i < 1000; i++) v[i] = TM_API(malloc)(16 + (size_t)(i % 64) * 16);
    for (int i = 0; i < 1000; i++) TM_API(free)(v[i]);
    pthread_barrier_wait(&filled);
    pthread_mutex_lock(&go_mu);
    while (!go) pthread_cond_wait(&go_cv, &go_mu);
    pthread_mutex_unlock(&go_mu);
    return NULL;
}

/* The child: IDLE_WORKERS threads fill their caches and wait; with
 * no_barrier, membarrier and mprotect(PROT_READ) are refused first.
 * Exit status 0 if the counts after _heapmin are as they should be. */
static int no_barrier_child(bool no_barrier) {
    static const tu_refusal_t refuse[] = {{SYS_membarrier, ENOSYS, 0, 0},
                                          {SYS_mprotect, EACCES, 1, PROT_READ}};
    if (no_barrier && tu_refuse_syscalls(refuse, 2) != 0) return TU_NO_SECCOMP;
    pthread_barrier_init(&filled, NULL, IDLE_WORKERS + 1);
    pthread_t t[IDLE_WORKERS];
    for (int i = 0; i < IDLE_WORKERS; i++)
        if (pthread_create(&t[i], NULL, fill_and_wait, NULL)) return 2;
    pthread_barrier_wait(&filled);
    unsigned before = tcache_drained_unused();
    if (TM_API(_heapmin)() != 0) return 3;
    trimalloc_stats_t st;
    TM_API(trimalloc_stats_get)(&st);
    unsigned after = tcache_drained_unused();
    int rc = 0;
    if (no_barrier) {
        /* nothing could be emptied: the workers' caches hold their blocks
         * and are all still counted (until 2026-12-06 all left the count) */
        if (st.tcache_bytes == 0) rc = 4;
        else if (after != before) rc = 5;
    } else if (st.tcache_bytes != 0 || after < before + IDLE_WORKERS) {
        rc = 6; /* emptied, and out of the count */
    }
    pthread_mutex_lock(&go_mu);
    go = 1;
    pthread_cond_broadcast(&go_cv);
    pthread_mutex_unlock(&go_mu);
    for (int i = 0; i < IDLE_WORKERS; i++) pthread_join(t[i], NULL);
    return rc;
}

static int drained_child(void) { return no_barrier_child(false); }
static int not_drained_child(void) { return no_barrier_child(true); }

static void test_drained_caches_leave_the_count(void **state) {
    (void)state;
    if (TU_TSAN) skip(); /* threads in a child forked after others ran: beyond ThreadSanitizer */
    assert_int_equal(tu_run_forked(drained_child), 0);
}

static void test_caches_not_drained_stay_counted(void **state) {
    (void)state;
    if (TU_TSAN) skip(); /* and its build drains without a barrier */
    int rc = tu_run_forked(not_drained_child);
    if (rc == TU_NO_SECCOMP) skip();
    assert_int_equal(rc, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_few_threads_grow_as_before),
        cmocka_unit_test(test_each_cache_stays_within_its_share),
        cmocka_unit_test(test_a_grown_bin_shrinks_when_the_share_does),
        cmocka_unit_test(test_drained_caches_leave_the_count),
        cmocka_unit_test(test_caches_not_drained_stay_counted),
    };
    return cmocka_run_group_tests_name("unit_tcache_share (" TU_FLAVOUR ")", tests, NULL, NULL);
}
