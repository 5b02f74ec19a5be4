/*
 * allocx.c -- jemalloc's *allocx calls as trimalloc answers them
 * (src/mallctl.c): blocks from mallocx/rallocx free with free() and the
 * other way round, the alignment and the zeroing their flags ask for,
 * nallocx agreeing with what mallocx gives, xallocx resizing in place only,
 * and the failures. Built twice (tests/CMakeLists.txt): prefixed
 * (tm_mallocx, sanitizer builds too) and against
 * build/libtrimalloc_jemalloc.so (api_allocx), whose names a program built
 * against jemalloc calls.
 */
#include "test_cmocka.h"

#include <stdbool.h>
#include <string.h>

/* jemalloc's flag encodings (jemalloc/jemalloc.h) */
#define LG_ALIGN(la) ((int)(la))
#define ZERO 0x40
#define TCACHE_NONE (1 << 8)
#define ARENA(a) ((int)(((unsigned)(a) + 1) << 20))

static const size_t sizes[] = {1,     8,     16,    17,    100,          1000,     1024,
                               4096,  5000,  10240, 10241, 16384,        65536,    100000,
                               1 << 20, (2 << 20) + 1, 3 << 20};
#define NSIZES (sizeof sizes / sizeof sizes[0])

static void assert_all(const unsigned char *p, size_t from, size_t to, unsigned char v) {
    for (size_t i = from; i < to; i++)
        if (p[i] != v) fail_msg("byte %zu of %p is %#x, expected %#x", i, (const void *)p, p[i], v);
}

/* Every size with every alignment up to 8 KiB (and 2 MiB for a few): the
 * block is aligned, holds the size, and has the usable size nallocx says;
 * it frees with free(), dallocx or sdallocx. */
static void test_mallocx_alignments_and_nallocx(void **state) {
    (void)state;
    for (size_t i = 0; i < NSIZES; i++) {
        for (unsigned la = 0; la <= 21; la++) {
            if (la > 13 && la != 21) continue;
            if (la == 21 && sizes[i] > 65536) continue;
            int flags = LG_ALIGN(la) | (la & 1 ? TCACHE_NONE : 0) | (la & 2 ? ARENA(0) : 0);
            void *p = TM_API(mallocx)(sizes[i], flags);
            assert_aligned(p, (size_t)1 << la);
            size_t usable = TM_API(sallocx)(p, flags);
            if (usable < sizes[i]) fail_msg("mallocx(%zu, 2^%u): usable %zu", sizes[i], la, usable);
            if (usable != TM_API(nallocx)(sizes[i], flags))
                fail_msg("mallocx(%zu, 2^%u): usable %zu, nallocx %zu", sizes[i], la, usable,
                         TM_API(nallocx)(sizes[i], flags));
            assert_int_equal(usable, TM_API(malloc_usable_size)(p));
            memset(p, 0xab, usable);
            switch ((i + la) % 3) {
            case 0: TM_API(free)(p); break;
            case 1: TM_API(dallocx)(p, flags); break;
            default: TM_API(sdallocx)(p, sizes[i], flags); break;
            }
        }
    }
    /* and blocks from malloc go back through dallocx */
    void *q = TM_API(malloc)(300);
    assert_non_null(q);
    TM_API(dallocx)(q, 0);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

/* MALLOCX_ZERO: every usable byte zero, even in a block whose memory held
 * something before (the same size freed just before, so likely reused). */
static void test_mallocx_zero(void **state) {
    (void)state;
    for (size_t i = 0; i < NSIZES; i++) {
        for (unsigned la = 0; la <= 12; la += 6) {
            void *old = TM_API(mallocx)(sizes[i], LG_ALIGN(la));
            assert_non_null(old);
            memset(old, 0x5a, TM_API(sallocx)(old, 0));
            TM_API(free)(old);
            unsigned char *p = TM_API(mallocx)(sizes[i], LG_ALIGN(la) | ZERO);
            assert_aligned(p, (size_t)1 << la);
            assert_all(p, 0, TM_API(sallocx)(p, 0), 0);
            TM_API(free)(p);
        }
    }
}

/* rallocx keeps the contents up to the smaller size, gives the alignment
 * asked for (moving the block when it must), and with MALLOCX_ZERO zeroes
 * every byte past the old usable size. */
static void test_rallocx(void **state) {
    (void)state;
    static const size_t chain[] = {100, 200, 5000, 20000, 3 << 20, 50000, 64, 10};
    for (unsigned la = 0; la <= 12; la += 6) {
        int flags = LG_ALIGN(la) | ZERO;
        unsigned char *p = TM_API(mallocx)(chain[0], flags);
        assert_non_null(p);
        size_t have = chain[0]; /* bytes with the pattern */
        for (size_t k = 0; k < have; k++) p[k] = (unsigned char)(k * 7);
        for (size_t c = 1; c < sizeof chain / sizeof chain[0]; c++) {
            size_t old_usable = TM_API(sallocx)(p, 0);
            /* what the old block held past the pattern, which a grown block
             * must not show: fill it first */
            memset(p + have, 0xee, old_usable - have);
            unsigned char *q = TM_API(rallocx)(p, chain[c], flags);
            assert_aligned(q, (size_t)1 << la);
            size_t keep = have < chain[c] ? have : chain[c];
            for (size_t k = 0; k < keep; k++)
                if (q[k] != (unsigned char)(k * 7))
                    fail_msg("rallocx to %zu (2^%u): byte %zu lost", chain[c], la, k);
            size_t usable = TM_API(sallocx)(q, 0);
            assert_true(usable >= chain[c]);
            if (usable > old_usable) assert_all(q, old_usable, usable, 0);
            /* the pattern now covers the new size */
            for (size_t k = keep; k < chain[c]; k++) q[k] = (unsigned char)(k * 7);
            have = chain[c];
            p = q;
        }
        TM_API(dallocx)(p, flags);
    }
    /* a block from malloc, grown by rallocx, freed by free */
    char *m = TM_API(malloc)(10);
    assert_non_null(m);
    memcpy(m, "trimalloc", 10);
    m = TM_API(rallocx)(m, 100000, 0);
    assert_non_null(m);
    assert_string_equal(m, "trimalloc");
    TM_API(free)(m);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

/* xallocx never moves the block: a large block grows in place where the
 * pages after it are free, a small block stays in its class; it returns
 * the usable size it has then, and zeroes what it gained if asked. */
static void test_xallocx(void **state) {
    (void)state;
    /* a small block: shrink keeps it, a larger size than its class fails */
    unsigned char *s = TM_API(mallocx)(100, 0);
    assert_non_null(s);
    size_t cls = TM_API(sallocx)(s, 0);
    memset(s, 3, cls);
    assert_int_equal(TM_API(xallocx)(s, 8, 0, 0), cls);
    assert_int_equal(TM_API(xallocx)(s, 100, 5000, 0), cls);
    assert_int_equal(TM_API(xallocx)(s, 5000, 0, 0), cls);
    assert_all(s, 0, cls, 3);
    TM_API(free)(s);

    /* a large block: grows in place into the free pages after it (those
     * of a 64 KiB block freed just now, where that one came right after
     * it), or stays as it is */
    unsigned char *l = TM_API(mallocx)(20000, 0);
    unsigned char *next = TM_API(mallocx)(65536, 0);
    assert_non_null(l);
    assert_non_null(next);
    size_t before = TM_API(sallocx)(l, 0);
    bool adjacent = next == l + before;
    memset(l, 9, before);
    TM_API(free)(next);
    size_t after = TM_API(xallocx)(l, 30000, 20000, ZERO);
    assert_int_equal(after, TM_API(sallocx)(l, 0));
    if (adjacent && after < 50000)
        fail_msg("xallocx to 30000 + 20000 bytes left a block of %zu with 64 KiB free after it", after);
    if (!adjacent && after != before && after < 30000)
        fail_msg("xallocx to at least 30000 bytes gave %zu (from %zu)", after, before);
    assert_all(l, 0, before, 9);
    assert_all(l, before, after, 0);
    /* a block that holds between size and size + extra bytes stays as it
     * is when it cannot grow (jemalloc's rule), whatever the extra */
    unsigned char *held = TM_API(mallocx)(65536, 0); /* after l: nothing to grow into */
    assert_non_null(held);
    size_t have = TM_API(sallocx)(l, 0);
    if (held == l + have) {
        assert_int_equal(TM_API(xallocx)(l, have / 2, 1 << 20, 0), have);
        assert_int_equal(TM_API(xallocx)(l, have - 1, SIZE_MAX, 0), have);
        assert_int_equal(TM_API(xallocx)(l, (size_t)1 << 63, (size_t)1 << 63, 0), have);
    }
    TM_API(free)(held);
    /* shrinking in place */
    size_t small = TM_API(xallocx)(l, 12000, 0, 0);
    assert_true(small >= 12000 && small <= after);
    assert_all(l, 0, small < before ? small : before, 9);
    /* an alignment the block does not have: unchanged */
    if ((uintptr_t)l % (1u << 20))
        assert_int_equal(TM_API(xallocx)(l, 50000, 0, LG_ALIGN(20)), small);
    TM_API(sdallocx)(l, 12000, 0);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

/* Sizes and alignments no allocator can give: NULL and ENOMEM, the block
 * of a failed rallocx untouched; nallocx 0; errno unchanged on success. */
static void test_failures(void **state) {
    (void)state;
    assert_alloc_fails(TM_API(mallocx)((size_t)PTRDIFF_MAX + 1, 0), ENOMEM);
    assert_alloc_fails(TM_API(mallocx)(SIZE_MAX, ZERO), ENOMEM);
    assert_alloc_fails(TM_API(mallocx)(16, LG_ALIGN(63)), ENOMEM);
    assert_int_equal(TM_API(nallocx)(SIZE_MAX, 0), 0);
    assert_int_equal(TM_API(nallocx)(16, LG_ALIGN(63)), 0);
    char *p = TM_API(mallocx)(64, 0);
    assert_non_null(p);
    memcpy(p, "kept", 5);
    assert_alloc_fails(TM_API(rallocx)(p, SIZE_MAX / 2, 0), ENOMEM);
    assert_alloc_fails(TM_API(rallocx)(p, 64, LG_ALIGN(63)), ENOMEM);
    assert_string_equal(p, "kept");
    errno = 1234;
    void *q = TM_API(rallocx)(p, 5000, LG_ALIGN(12));
    assert_int_equal(errno, 1234);
    assert_aligned(q, 4096);
    assert_string_equal((char *)q, "kept");
    size_t n = TM_API(xallocx)(q, SIZE_MAX, SIZE_MAX, 0); /* cannot: unchanged */
    assert_int_equal(n, TM_API(sallocx)(q, 0));
    assert_int_equal(errno, 1234);
    assert_int_equal(TM_API(nallocx)(PTRDIFF_MAX, 0), 0); /* whole pages past PTRDIFF_MAX */
    /* a huge block that reuses a larger freed mapping may hold more than
     * nallocx says, never less */
    void *big = TM_API(mallocx)(8 << 20, 0);
    assert_non_null(big);
    TM_API(free)(big);
    void *reuse = TM_API(mallocx)(5 << 20, 0);
    assert_non_null(reuse);
    assert_true(TM_API(sallocx)(reuse, 0) >= TM_API(nallocx)(5 << 20, 0));
    assert_true(TM_API(nallocx)(5 << 20, 0) >= (5 << 20));
    TM_API(free)(reuse);
    /* size 0 is taken as 1 */
    void *z = TM_API(mallocx)(0, 0);
    assert_non_null(z);
    assert_true(TM_API(sallocx)(z, 0) >= 1);
    assert_int_equal(TM_API(nallocx)(0, 0), TM_API(sallocx)(z, 0));
    TM_API(dallocx)(z, 0);
    TM_API(free)(q);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mallocx_alignments_and_nallocx),
        cmocka_unit_test(test_mallocx_zero),
        cmocka_unit_test(test_rallocx),
        cmocka_unit_test(test_xallocx),
        cmocka_unit_test(test_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
