/*
 * large_blocks.h -- helpers for unit tests that drive arenas directly with
 * large blocks (growth_purge.c, decay.c): blocks taken with big() are
 * remembered so that a teardown can free them after a failed assertion
 * (big_free_all), and mincore() tells which pages the kernel holds.
 * Include after test_cmocka.h and internal.h.
 */
#ifndef TM_TEST_LARGE_BLOCKS_H
#define TM_TEST_LARGE_BLOCKS_H

#include <sys/mman.h>
#include <time.h>

#define BLK ((size_t)256 * 1024) /* 64 pages: a large block */
#define PG(n) ((size_t)(n) << TM_PAGE_SHIFT)

static void *held[64];

static inline void *big(tm_arena_t *a, size_t size) {
    void *p = arena_alloc_large(a, size, 0, false);
    assert_non_null(p);
    for (unsigned i = 0; i < TU_ARRAY_LEN(held); i++)
        if (!held[i]) {
            held[i] = p;
            return p;
        }
    fail_msg("more blocks than held[] has room for");
    return NULL;
}

static inline void big_free(void *p) {
    for (unsigned i = 0; i < TU_ARRAY_LEN(held); i++)
        if (held[i] == p) held[i] = NULL;
    tm_chunk_t *c = chunk_of_entry(pagemap_lookup((uintptr_t)p));
    assert_non_null(c);
    arena_free_large(c, (uint32_t)(((uintptr_t)p - c->base) >> TM_PAGE_SHIFT), p);
}

/* Free every block big() handed out and not yet freed. */
static inline void big_free_all(void) {
    for (unsigned i = 0; i < TU_ARRAY_LEN(held); i++)
        if (held[i]) big_free(held[i]);
}

/* Pages of [p, p + len) the kernel holds. */
static inline size_t resident(void *p, size_t len) {
    unsigned char vec[1024];
    size_t n = len >> TM_PAGE_SHIFT, r = 0;
    assert_true(n <= sizeof vec);
    assert_int_equal(mincore(p, len, vec), 0);
    for (size_t i = 0; i < n; i++) r += vec[i] & 1;
    return r;
}

static inline void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static inline size_t released(void) {
    return __atomic_load_n(&tm_gstats.released_bytes, __ATOMIC_RELAXED);
}

/* Arena a: 8 blocks from its chunk's first page, written, then freed: one
 * free run whose first 512 pages are resident. */
static inline char *idle_region(tm_arena_t *a) {
    void *p[8];
    for (int i = 0; i < 8; i++) {
        p[i] = big(a, BLK);
        assert_ptr_equal(p[i], (char *)p[0] + i * BLK); /* carved in order */
        memset(p[i], 0x5a, BLK);
    }
    for (int i = 0; i < 8; i++) big_free(p[i]);
    arena_lock(a);
    run_stash_flush_locked(a); /* the last block too: one free run (chunk.c) */
    arena_unlock(a);
    assert_int_equal(resident(p[0], 8 * BLK), 512);
    return p[0];
}

#endif
