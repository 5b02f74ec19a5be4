/*
 * huge_blocks.c -- threads sharing the huge-block cache (huge.c): blocks
 * of 2-16 MiB, so that cached mappings are grown, cut after a block and
 * merged again, while the threads malloc, calloc, realloc, free and hand
 * blocks to each other, and one of them calls _heapmin() now and then
 * (which empties the cache under the others).
 *
 * Every block is filled with a pattern of its own over its whole size and
 * checked byte for byte before it is freed, reallocated (the kept prefix)
 * or handed over, and at the end; a calloc'd block must read zero first.
 * No time limits: the loops are counted, and shrink under sanitizers.
 */
#include <stdatomic.h>
#include <sys/mman.h>

#include "test_cmocka.h"

enum {
    NTHREADS = 3,
    HELD = 4,    /* slots per thread */
    MAILBOX = 4, /* blocks in flight to a thread */
};

typedef struct mailbox {
    pthread_mutex_t lock;
    tu_block_t b[MAILBOX];
    int n;
} mailbox_t;

static mailbox_t boxes[NTHREADS];
static atomic_long foreign_frees, reallocs, callocs, trims;
static long steps;

/* Half of them 2-5 MiB, half 8-16 MiB: a big mapping reused for a small
 * block is cut, and the block merges with its tail when it is freed. */
static size_t huge_size(tu_rng_t *r)
{
    return tu_chance(r, 50) ? tu_rand_range(r, 2 * TU_MIB + 1, 5 * TU_MIB)
                            : tu_rand_range(r, 8 * TU_MIB, 16 * TU_MIB);
}

static void post(int to, tu_block_t *b)
{
    mailbox_t *m = &boxes[to];
    tu_lock(&m->lock);
    if (m->n < MAILBOX) {
        m->b[m->n++] = *b;
        b->p = NULL;
        b->size = 0;
    }
    tu_unlock(&m->lock);
}

static int take(int self, tu_block_t *out)
{
    mailbox_t *m = &boxes[self];
    tu_lock(&m->lock);
    int got = m->n > 0;
    if (got)
        *out = m->b[--m->n];
    tu_unlock(&m->lock);
    return got;
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    tu_rng_t rng;
    tu_rng_seed(&rng, 0x4a11 + (uint64_t)id);
    tu_block_t held[HELD] = {{0}};
    uint64_t seq = 0;
    for (long s = 0; s < steps; s++) {
        tu_block_t *b = &held[tu_rand(&rng) % HELD];
        unsigned op = (unsigned)(tu_rand(&rng) % 100);
        if (!b->p) {
            if (op < 30 && take(id, b)) { /* another thread's block: check, free */
                tu_block_free(b);
                atomic_fetch_add(&foreign_frees, 1);
            } else if (op < 60) {
                size_t n = huge_size(&rng);
                unsigned char *p = TM_API(calloc)(1, n);
                TU_CHECK(p != NULL, "calloc(%zu) failed", n);
                size_t bad = tu_find_not_byte(p, n, 0);
                TU_CHECK(bad == (size_t)-1, "calloc(%zu) = %p: byte %zu not zero", n, (void *)p, bad);
                b->p = p;
                b->size = n;
                b->seed = tu_pattern_seed(p, (uint64_t)id, ++seq);
                tu_fill(p, n, b->seed);
                atomic_fetch_add(&callocs, 1);
            } else {
                *b = tu_block_new(huge_size(&rng), (uint64_t)id, ++seq);
            }
        } else if (op < 35) {
            tu_block_free(b);
        } else if (op < 60) { /* realloc: the kept prefix survives */
            size_t n = huge_size(&rng);
            tu_block_check(b);
            unsigned char *p = TM_API(realloc)(b->p, n);
            TU_CHECK(p != NULL, "realloc(%zu) failed", n);
            TU_CHECK_PATTERN(p, n < b->size ? n : b->size, b->seed);
            b->p = p;
            b->size = n;
            b->seed = tu_pattern_seed(p, (uint64_t)id, ++seq);
            tu_fill(p, n, b->seed);
            atomic_fetch_add(&reallocs, 1);
        } else if (op < 85) { /* hand over (checked first: it leaves our hands) */
            tu_block_check(b);
            post((id + 1 + (int)(tu_rand(&rng) % (NTHREADS - 1))) % NTHREADS, b);
        } else if (op < 90 && id == 0) {
            tu_heapmin_ok();
            atomic_fetch_add(&trims, 1);
        } else {
            tu_block_check(b);
        }
    }
    for (int i = 0; i < HELD; i++)
        tu_block_free(&held[i]);
    return NULL;
}

static void test_huge_blocks_shared(void **state)
{
    (void)state;
    steps = tu_scaled(120, 12);
    for (int i = 0; i < NTHREADS; i++) {
        pthread_mutex_init(&boxes[i].lock, NULL);
        boxes[i].n = 0;
    }
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        tu_thread_create(&t[i], worker, (void *)(intptr_t)i);
    for (int i = 0; i < NTHREADS; i++)
        tu_thread_join(t[i]);
    for (int i = 0; i < NTHREADS; i++)
        for (int k = 0; k < boxes[i].n; k++)
            tu_block_free(&boxes[i].b[k]);
    tu_heap_ok();
    tu_heapmin_ok();
    /* the mix happened: blocks crossed threads, were reallocated and
     * calloc'd (a run that did none of these would prove little) */
    assert_true(atomic_load(&foreign_frees) > 0);
    assert_true(atomic_load(&reallocs) > 0);
    assert_true(atomic_load(&callocs) > 0);
}

/* ---- moves against fresh mappings ------------------------------------------
 * A cached mapping that grows by moving (the address space after it is
 * taken) leaves its old range free, and another thread's fresh mapping may
 * land there at once and enter itself in the pagemap. Clearing the old
 * entry after the move wiped out that thread's entry, and its free() then
 * aborted with "invalid pointer" (in 4-5 runs of 6 of this loop; also
 * through realloc, before the cache grew mappings). One thread walks its
 * block up through 5..19 MiB (each size a growth of the cached mapping,
 * emptied by _heapmin every 8), two others map and free 3 MiB blocks as
 * fast as they can, checking the first page and the last byte. */
static atomic_int moves_stop;

/* malloc(size), the first page and the last byte written and checked,
 * free: the pages a move would carry, without the cost of filling MiBs. */
static void touch_and_free(size_t size, uint64_t id, uint64_t seq)
{
    unsigned char *p = TM_API(malloc)(size);
    TU_CHECK(p != NULL, "malloc(%zu) failed", size);
    uint64_t seed = tu_pattern_seed(p, id, seq);
    tu_fill(p, 4096, seed);
    p[size - 1] = (unsigned char)seq;
    TU_CHECK_PATTERN(p, 4096, seed);
    TU_CHECK(p[size - 1] == (unsigned char)seq, "last byte of %p changed", (void *)p);
    TM_API(free)(p);
}

static void *mover(void *arg)
{
    long n = (long)(intptr_t)arg;
    for (long i = 0; i < n; i++) {
        touch_and_free(((size_t)5 + (size_t)(i % 8) * 2) * TU_MIB, 99, (uint64_t)i);
        if (i % 8 == 7)
            tu_heapmin_ok();
    }
    atomic_store(&moves_stop, 1);
    return NULL;
}

static void *mapper(void *arg)
{
    uint64_t id = (uint64_t)(intptr_t)arg, seq = 0;
    while (!atomic_load(&moves_stop))
        touch_and_free(3 * TU_MIB, id, ++seq);
    return NULL;
}

static void test_moves_against_fresh_mappings(void **state)
{
    (void)state;
    atomic_store(&moves_stop, 0);
    pthread_t t[3];
    tu_thread_create(&t[0], mover, (void *)(intptr_t)tu_scaled(8000, 800));
    tu_thread_create(&t[1], mapper, (void *)(intptr_t)1);
    tu_thread_create(&t[2], mapper, (void *)(intptr_t)2);
    for (int i = 0; i < 3; i++)
        tu_thread_join(t[i]);
    tu_heap_ok();
}

/* _heapchk while another thread grows a huge block that must move
 * (a page is mapped right after it each time): huge_grow enters the block
 * at its new spot before its descriptor's base changes, and _heapchk took
 * that for a broken heap (_HEAPBADPTR in a third of its calls, until
 * 2026-12-05). */
static atomic_int checker_stop;

static void *grow_and_block(void *arg)
{
    (void)arg;
    long n = tu_scaled(3000, 300);
    unsigned char *p = TM_API(malloc)(6 * TU_MIB);
    TU_CHECK(p != NULL, "malloc(6 MiB) failed");
    p[0] = 0x5c;
    void *blk = NULL;
    for (long i = 0; i < n; i++) {
        unsigned char *q = TM_API(realloc)(p, (i & 1) ? 6 * TU_MIB : 12 * TU_MIB);
        TU_CHECK(q != NULL, "realloc failed");
        TU_CHECK(q[0] == 0x5c, "realloc lost the block's first byte");
        p = q;
        if (blk)
            munmap(blk, 4096);
        blk = mmap(p + TM_API(_msize)(p), 4096, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (blk == MAP_FAILED)
            blk = NULL;
    }
    if (blk)
        munmap(blk, 4096);
    TM_API(free)(p);
    atomic_store(&checker_stop, 1);
    return NULL;
}

static void test_heapchk_while_huge_blocks_move(void **state)
{
    (void)state;
    atomic_store(&checker_stop, 0);
    pthread_t t;
    tu_thread_create(&t, grow_and_block, NULL);
    long checks = 0, bad = 0;
    int first = _HEAPOK;
    while (!atomic_load(&checker_stop)) {
        int rc = TM_API(_heapchk)();
        checks++;
        if (rc != _HEAPOK && !bad++)
            first = rc;
    }
    tu_thread_join(t);
    if (bad)
        fail_msg("_heapchk: %ld of %ld calls failed, the first with %d", bad, checks, first);
    tu_heap_ok();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_huge_blocks_shared),
        cmocka_unit_test(test_moves_against_fresh_mappings),
        cmocka_unit_test(test_heapchk_while_huge_blocks_move),
    };
    return cmocka_run_group_tests_name("stress_huge_blocks (" TU_FLAVOUR ")", tests, NULL, NULL);
}
