/*
 * test_cmocka.h -- includes cmocka the way it wants (it needs <stdarg.h>,
 * <stddef.h>, <stdint.h> and <setjmp.h> first) plus test_util.h, and adds
 * a few assertion helpers for allocator results. cmocka's assert_* may only
 * be used on the thread running the test; use TU_CHECK elsewhere.
 */
#ifndef TRIMALLOC_TEST_CMOCKA_H
#define TRIMALLOC_TEST_CMOCKA_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memalign, pvalloc, reallocarray; the build defines it too */
#endif

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_util.h"

/* p is non-NULL and a multiple of align. */
#define assert_aligned(p, align)                                                               \
    do {                                                                                       \
        assert_non_null(p);                                                                    \
        assert_int_equal((uintptr_t)(p) % (uintptr_t)(align), 0);                              \
    } while (0)

/* A call that must fail: result NULL and errno == err. errno is cleared
 * first and read straight after, before cmocka can touch it. */
#define assert_alloc_fails(call, err)                                                          \
    do {                                                                                       \
        errno = 0;                                                                             \
        void *af_p_ = (call);                                                                  \
        int af_errno_ = errno;                                                                 \
        if (af_p_ != NULL)                                                                     \
            fail_msg("%s returned %p, expected NULL", #call, af_p_);                           \
        if (af_errno_ != (err))                                                                \
            fail_msg("%s set errno %d (%s), expected %d (%s)", #call, af_errno_,               \
                     strerror(af_errno_), (err), strerror(err));                               \
    } while (0)

/* The block's usable size is at least n, and all of it can be written and
 * read back (filled with a pattern from seed, then verified). */
static inline void tu_assert_usable(void *p, size_t n, uint64_t seed)
{
    assert_non_null(p);
    size_t usable = TM_API(malloc_usable_size)(p);
    if (usable < n)
        fail_msg("malloc_usable_size(%p) = %zu < requested %zu", p, usable, n);
    tu_fill(p, usable, seed);
    size_t bad = tu_find_bad(p, usable, seed);
    if (bad != (size_t)-1)
        fail_msg("block %p: byte %zu of %zu usable did not keep its value", p, bad, usable);
}

/* The first n bytes of p hold the pattern of seed. */
#define assert_pattern(p, n, seed)                                                             \
    do {                                                                                       \
        size_t ap_bad_ = tu_find_bad((p), (n), (seed));                                        \
        if (ap_bad_ != (size_t)-1)                                                             \
            fail_msg("block %p size %zu: byte %zu corrupted", (void *)(p), (size_t)(n),        \
                     ap_bad_);                                                                 \
    } while (0)

#endif /* TRIMALLOC_TEST_CMOCKA_H */
