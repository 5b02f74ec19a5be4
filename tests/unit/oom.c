/*
 * oom.c (unit) -- out of memory through the OS layer's fault injection:
 * every mapping from the n-th on fails (os_set_fail_from, so the allocator's
 * own release-and-retry cannot absorb it). Every entry point returns NULL
 * with ENOMEM, no lock stays held, blocks already held are intact, and
 * allocation works again once mappings succeed. A realloc that shrinks a
 * block never fails for want of memory: it keeps the block where it is.
 */
#include "test_cmocka.h"
#include "internal.h"

#define HELD 64

static void fill(void *p, size_t n, int seed) { memset(p, seed & 0xff, n); }
static void check(void *p, size_t n, int seed) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i += 61) assert_int_equal(c[i], seed & 0xff);
}

static void test_every_entry_point_fails_cleanly(void **state) {
    (void)state;
    void *held[HELD];
    size_t sizes[HELD];
    for (int i = 0; i < HELD; i++) {
        sizes[i] = (size_t)(i % 4 == 0 ? 3 << 20 : i % 4 == 1 ? 200000 : 24 + 37 * i);
        held[i] = TM_API(malloc)(sizes[i]);
        assert_non_null(held[i]);
        fill(held[i], sizes[i], i);
    }
    /* Each request below needs a new mapping; make the very next one fail. */
    struct { const char *name; int kind; } calls[] = {
        {"malloc huge", 0}, {"calloc huge", 1}, {"realloc to huge", 2},
        {"aligned_alloc huge", 3}, {"posix_memalign huge", 4}, {"valloc huge", 5},
        {"malloc large (new chunk)", 6},
    };
    for (size_t k = 0; k < sizeof calls / sizeof calls[0]; k++) {
        os_set_fail_from(1);
        errno = 0;
        void *r = NULL;
        int rc = 0;
        void *small = held[2];
        switch (calls[k].kind) {
        case 0: r = TM_API(malloc)(64 << 20); break;
        case 1: r = TM_API(calloc)(1, 64 << 20); break;
        case 2: r = TM_API(realloc)(small, 64 << 20); break;
        case 3: r = TM_API(aligned_alloc)(1 << 16, 64 << 20); break;
        case 4: rc = TM_API(posix_memalign)(&r, 1 << 16, 64 << 20); break;
        case 5: r = TM_API(valloc)(64 << 20); break;
        case 6: {
            /* exhaust what the arenas have, so a chunk must be mapped */
            void *tmp[64];
            int n;
            for (n = 0; n < 64; n++) {
                tmp[n] = TM_API(malloc)(1 << 20);
                if (!tmp[n]) break;
            }
            assert_true(n < 64); /* one of them needed a chunk and failed */
            r = NULL;
            errno = ENOMEM;
            os_set_fail_after(0);
            for (int i = 0; i < n; i++) TM_API(free)(tmp[i]);
            break;
        }
        }
        int err = errno;
        os_set_fail_after(0);
        if (calls[k].kind == 4) {
            assert_int_equal(rc, ENOMEM);
        } else {
            assert_null(r);
            assert_int_equal(err, ENOMEM);
        }
        /* the held blocks are intact, and the realloc'd one untouched */
        for (int i = 0; i < HELD; i++) check(held[i], sizes[i], i);
        /* and allocation works again, from every kind of size */
        void *ok1 = TM_API(malloc)(64 << 20), *ok2 = TM_API(malloc)(100), *ok3 = TM_API(malloc)(300000);
        assert_non_null(ok1);
        assert_non_null(ok2);
        assert_non_null(ok3);
        TM_API(free)(ok1);
        TM_API(free)(ok2);
        TM_API(free)(ok3);
        TM_API(_heapmin)(); /* empty the huge cache, so the next call must map */
    }
    /* _heapmin works right after a failure too */
    os_set_fail_from(1);
    assert_null(TM_API(malloc)(64 << 20));
    os_set_fail_after(0);
    assert_int_equal(TM_API(_heapmin)(), 0);
    for (int i = 0; i < HELD; i++) {
        check(held[i], sizes[i], i);
        TM_API(free)(held[i]);
    }
}

static void test_new_thread_small_alloc_fails_then_recovers(void **state) {
    (void)state;
    /* exhaust a small class's slabs so the next refill needs a new chunk */
    enum { N = 200000 };
    void **v = TM_API(malloc)(N * sizeof(void *));
    assert_non_null(v);
    os_set_fail_from(1);
    int n = 0, failed = 0;
    for (; n < N; n++) {
        errno = 0;
        v[n] = TM_API(malloc)(4000);
        if (!v[n]) {
            assert_int_equal(errno, ENOMEM);
            failed = 1;
            break;
        }
    }
    os_set_fail_after(0);
    assert_true(failed);
    void *again = TM_API(malloc)(4000);
    assert_non_null(again);
    TM_API(free)(again);
    for (int i = 0; i < n; i++) TM_API(free)(v[i]);
    TM_API(free)(v);
}

/* Shrinking needs no memory: when the smaller block it would move to cannot
 * be had, realloc keeps the block where it is (glibc shrinks in place and
 * never fails there; a program that writes p = realloc(p, smaller) without
 * a check would lose the block). Every kind of move is tried: huge to
 * large and to small, large to small, small to a smaller class. */
static void test_shrinking_realloc_keeps_block_when_memory_is_out(void **state) {
    (void)state;
    enum { N = 1 << 20 };
    static const struct { size_t from, to; } cases[] = {
        {8u << 20, 1u << 20}, {8u << 20, 100}, {100000, 50}, {1000, 16},
    };
    void **v = TM_API(malloc)(N * sizeof(void *));
    assert_non_null(v);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        unsigned char *b = TM_API(malloc)(cases[k].from);
        assert_non_null(b);
        fill(b, cases[k].from, (int)k + 1);
        /* no new mapping from here; use up what the arenas already have,
         * down to the size the block would move to */
        os_set_fail_from(1);
        size_t n = 0;
        static const size_t fillers[] = {65536, 4096, 16};
        for (size_t f = 0; f < 3; f++)
            while (n < N && (v[n] = TM_API(malloc)(fillers[f])) != NULL) n++;
        while (n < N && (v[n] = TM_API(malloc)(cases[k].to)) != NULL) n++;
        assert_true(n < N);
        errno = 0;
        unsigned char *q = TM_API(realloc)(b, cases[k].to);
        int err = errno;
        os_set_fail_after(0);
        if (q != b)
            fail_msg("realloc(%zu-byte block, %zu) with no memory left = %p (errno %d), not the block %p",
                     cases[k].from, cases[k].to, (void *)q, err, (void *)b);
        assert_int_equal(err, 0);
        check(b, cases[k].to, (int)k + 1);
        assert_true(TM_API(malloc_usable_size)(b) >= cases[k].to);
        for (size_t i = 0; i < n; i++) TM_API(free)(v[i]);
        TM_API(free)(b);
    }
    TM_API(free)(v);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_entry_point_fails_cleanly),
        cmocka_unit_test(test_new_thread_small_alloc_fails_then_recovers),
        cmocka_unit_test(test_shrinking_realloc_keeps_block_when_memory_is_out),
    };
    return cmocka_run_group_tests_name("unit_oom", tests, NULL, NULL);
}
