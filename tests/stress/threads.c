/*
 * threads.c -- many threads allocating, resizing, passing on and freeing
 * blocks, with every byte checked.
 *
 * NTHREADS workers each keep a table of blocks. Each step picks a slot and
 * allocates into it (malloc, calloc, an aligned allocator or realloc(NULL))
 * or takes a block from its inbox, frees it (free, free_sized or
 * free_aligned_sized), reallocs
 * it, or posts it to another thread's inbox. Inboxes are the shared exchange
 * (a mutex each): whatever a thread takes from its inbox was held by another
 * thread, so a good fraction of blocks are freed or resized by a thread
 * other than the one that allocated them, however the threads happen to be
 * scheduled. Sizes run from 1 B to a few MiB: mostly small, some large, a
 * few huge.
 *
 * Every block is filled with a pattern seeded from (pointer, thread,
 * sequence); it is verified byte for byte before every free and realloc,
 * when it changes hands, every VERIFY_EVERY steps for the whole table, and
 * at the end for everything any thread or inbox still holds.
 */
#include <stdatomic.h>

#include "test_cmocka.h"

enum {
    NTHREADS = 8,
    HELD = 192,        /* slots per thread */
    INBOX = 32,        /* blocks an inbox holds */
    VERIFY_EVERY = 4096,
};

/* A block, the thread that allocated it, and how it may be freed: C23
 * allows free_sized only for malloc/calloc/realloc blocks (align == 0) and
 * free_aligned_sized only for aligned_alloc blocks (align > 0);
 * posix_memalign blocks (align == -1) take plain free. */
typedef struct sblock {
    tu_block_t b;
    int owner;
    long align;
} sblock_t;

/* Blocks posted to a thread by the others; inbox[i] belongs to worker i+1. */
static struct inbox {
    pthread_mutex_t lock;
    int len;
    sblock_t slot[INBOX];
} inbox[NTHREADS];

static pthread_barrier_t start_barrier;
static size_t huge_max; /* largest size drawn */

struct worker {
    int id;
    long steps;
    /* results, read by main after join */
    long frees, foreign_frees, reallocs, foreign_reallocs, posted, taken;
};

/* Post *s to worker `to`'s inbox. If the inbox is full, *s is swapped with
 * a random block in it, preferably one allocated by another thread than
 * `me`, so blocks keep crossing threads even while `to` is not scheduled;
 * returns 1 if *s now holds that block, 0 if *s was emptied. */
static int inbox_post(int me, int to, sblock_t *s, tu_rng_t *rng)
{
    struct inbox *in = &inbox[to - 1];
    int swapped = 0;
    tu_lock(&in->lock);
    if (in->len < INBOX) {
        in->slot[in->len++] = *s;
        s->b.p = NULL;
    } else {
        size_t j = (size_t)(tu_rand(rng) % INBOX);
        for (int tries = 0; tries < 8 && in->slot[j].owner == me; tries++)
            j = (size_t)(tu_rand(rng) % INBOX);
        sblock_t t = in->slot[j];
        in->slot[j] = *s;
        *s = t;
        swapped = 1;
    }
    tu_unlock(&in->lock);
    return swapped;
}

/* Take the newest block from worker `id`'s inbox; false if it is empty. */
static int inbox_take(int id, sblock_t *s)
{
    struct inbox *in = &inbox[id - 1];
    int ok = 0;
    tu_lock(&in->lock);
    if (in->len > 0) {
        *s = in->slot[--in->len];
        ok = 1;
    }
    tu_unlock(&in->lock);
    return ok;
}

static int is_pow2(size_t x)
{
    return x && !(x & (x - 1));
}

/* Allocate a block of n bytes by one of several entry points and fill it. */
static sblock_t new_block(tu_rng_t *rng, int id, uint64_t seq)
{
    size_t n = tu_rand_size(rng, huge_max, 4);
    sblock_t s = {{NULL, n, 0}, id, 0};
    unsigned how = (unsigned)(tu_rand(rng) % 100);
    unsigned char *p;
    if (how < 60) {
        p = TM_API(malloc)(n);
    } else if (how < 75) {
        p = TM_API(calloc)(1, n);
        TU_CHECK(p != NULL, "calloc(1, %zu)", n);
        size_t bad = tu_find_not_byte(p, n, 0);
        TU_CHECK(bad == (size_t)-1, "calloc(1, %zu) = %p: byte %zu is 0x%02x", n, (void *)p, bad,
                 p[bad]);
    } else if (how < 85) {
        size_t align = (size_t)16 << (tu_rand(rng) % 9); /* 16 B .. 4 KiB */
        if (how < 80) {
            p = TM_API(aligned_alloc)(align, n);
            s.align = (long)align;
        } else {
            void *q = NULL;
            int rc = TM_API(posix_memalign)(&q, align, n);
            TU_CHECK(rc == 0, "posix_memalign(%zu, %zu) = %d", align, n, rc);
            p = q;
            s.align = -1;
        }
        TU_CHECK(p != NULL && is_pow2(align) && (uintptr_t)p % align == 0,
                 "aligned allocation (%zu, %zu) = %p", align, n, (void *)p);
    } else {
        p = TM_API(realloc)(NULL, n);
    }
    TU_CHECK(p != NULL && (uintptr_t)p % 16 == 0, "allocation of %zu = %p", n, (void *)p);
    TU_CHECK(TM_API(malloc_usable_size)(p) >= n, "usable %zu < %zu",
             TM_API(malloc_usable_size)(p), n);
    s.b.p = p;
    s.b.seed = tu_pattern_seed(p, (uint64_t)id, seq);
    tu_fill(p, n, s.b.seed);
    return s;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    sblock_t held[HELD];
    memset(held, 0, sizeof held);
    tu_rng_t rng;
    tu_rng_seed(&rng, 0x1000 + (uint64_t)w->id);
    uint64_t seq = 0;

    pthread_barrier_wait(&start_barrier);
    for (long step = 0; step < w->steps; step++) {
        sblock_t *s = &held[tu_rand(&rng) % HELD];
        if (s->b.p == NULL) {
            if (tu_chance(&rng, 50) && inbox_take(w->id, s)) {
                tu_block_check(&s->b); /* it arrived intact */
                w->taken++;
            } else {
                *s = new_block(&rng, w->id, ++seq);
            }
            continue;
        }
        unsigned action = (unsigned)(tu_rand(&rng) % 100);
        if (action < 40) { /* free */
            tu_block_check(&s->b);
            if (action & 1)
                TM_API(free)(s->b.p);
            else if (s->align == 0)
                TM_API(free_sized)(s->b.p, s->b.size);
            else if (s->align > 0)
                TM_API(free_aligned_sized)(s->b.p, (size_t)s->align, s->b.size);
            else
                TM_API(free)(s->b.p);
            w->frees++;
            w->foreign_frees += s->owner != w->id;
            s->b.p = NULL;
        } else if (action < 55) { /* realloc, keeping the seed */
            size_t m = tu_chance(&rng, 50) ? s->b.size + (size_t)(tu_rand(&rng) % 256)
                                           : tu_rand_size(&rng, huge_max, 4);
            tu_block_check(&s->b);
            unsigned char *q = TM_API(realloc)(s->b.p, m);
            TU_CHECK(q != NULL && (uintptr_t)q % 16 == 0, "realloc(%zu -> %zu) = %p",
                     s->b.size, m, (void *)q);
            size_t keep = s->b.size < m ? s->b.size : m;
            size_t bad = tu_find_bad(q, keep, s->b.seed);
            TU_CHECK(bad == (size_t)-1, "realloc %zu -> %zu (%p -> %p) lost byte %zu",
                     s->b.size, m, (void *)s->b.p, (void *)q, bad);
            tu_fill_range(q, keep, m, s->b.seed);
            w->reallocs++;
            w->foreign_reallocs += s->owner != w->id;
            s->b.p = q;
            s->b.size = m;
            s->align = 0; /* a realloc result is a malloc-family block */
        } else if (action < 75) { /* post it to another thread */
            int to = 1 + (int)((unsigned)(w->id + tu_rand(&rng) % (NTHREADS - 1)) % NTHREADS);
            tu_block_check(&s->b);
            w->posted++;
            if (inbox_post(w->id, to, s, &rng)) {
                tu_block_check(&s->b); /* what we got in exchange arrived intact */
                w->taken++;
            }
        } else if (action < 85) { /* look at it */
            tu_block_check(&s->b);
        }
        /* else: leave it alone */

        if (step % VERIFY_EVERY == 0)
            for (int i = 0; i < HELD; i++)
                if (held[i].b.p)
                    tu_block_check(&held[i].b);
    }

    /* The end: verify every byte this thread holds, then free it all. */
    for (int i = 0; i < HELD; i++) {
        if (held[i].b.p) {
            w->frees++;
            w->foreign_frees += held[i].owner != w->id;
            tu_block_free(&held[i].b);
        }
    }
    return NULL;
}

static void run_stress(size_t max_size, long steps)
{
    struct worker ws[NTHREADS];
    pthread_t ts[NTHREADS];
    huge_max = max_size;
    assert_int_equal(pthread_barrier_init(&start_barrier, NULL, NTHREADS), 0);
    for (int i = 0; i < NTHREADS; i++) {
        pthread_mutex_init(&inbox[i].lock, NULL);
        inbox[i].len = 0;
    }
    for (int i = 0; i < NTHREADS; i++) {
        memset(&ws[i], 0, sizeof ws[i]);
        ws[i].id = i + 1;
        ws[i].steps = steps;
        tu_thread_create(&ts[i], worker_main, &ws[i]);
    }
    long frees = 0, foreign = 0, reallocs = 0, foreign_re = 0, posted = 0, taken = 0;
    for (int i = 0; i < NTHREADS; i++) {
        tu_thread_join(ts[i]);
        frees += ws[i].frees;
        foreign += ws[i].foreign_frees;
        reallocs += ws[i].reallocs;
        foreign_re += ws[i].foreign_reallocs;
        posted += ws[i].posted;
        taken += ws[i].taken;
    }
    pthread_barrier_destroy(&start_barrier);

    /* What is left in the inboxes outlived its threads: verify and free. */
    long left = 0;
    for (int i = 0; i < NTHREADS; i++) {
        for (int j = 0; j < inbox[i].len; j++) {
            left++;
            tu_block_free(&inbox[i].slot[j].b);
        }
        inbox[i].len = 0;
        pthread_mutex_destroy(&inbox[i].lock);
    }
    print_message("max size %zu, %d threads x %ld steps: %ld frees (%ld by another thread), "
                  "%ld reallocs (%ld of another thread's block), %ld posted, %ld taken, "
                  "%ld left in inboxes\n",
                  max_size, NTHREADS, steps, frees, foreign, reallocs, foreign_re, posted, taken,
                  left);
    /* The test is only worth its name if blocks really cross threads: every
     * block taken from an inbox was posted by another thread, so unless the
     * inboxes barely moved, plenty of frees are foreign. */
    assert_int_equal(posted, taken + left);
    assert_true(taken * 20 >= frees);
    assert_true(foreign * 20 >= frees);
    assert_true(foreign_re > 0);
}

/* Mostly small blocks, huge ones up to 4 MiB (1 MiB under sanitizers). */
static void test_stress_mixed(void **state)
{
    (void)state;
    run_stress(TU_TSAN || TU_ASAN ? TU_MIB : 4 * TU_MIB, tu_scaled(60000, 3000));
}

/* Small blocks only: the thread-cache and remote-free paths at full rate. */
static void test_stress_small(void **state)
{
    (void)state;
    run_stress(256 * TU_KIB, tu_scaled(150000, 5000));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stress_mixed),
        cmocka_unit_test(test_stress_small),
    };
    return cmocka_run_group_tests_name("stress_threads (" TU_FLAVOUR ")", tests, NULL, NULL);
}
