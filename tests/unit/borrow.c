/*
 * borrow.c (unit) -- a thread cache's bin whose overflows send blocks to
 * other arenas (tm_tc_bin_t.remote: the thread frees other threads'
 * blocks) refills through arena_refill_remote (arena.c): before its arena
 * makes another slab of the class, blocks from another arena's slab with
 * room (arena_refill_other). Threads that free each other's blocks
 * otherwise let their blocks drift from one arena to the other, one
 * arena's slabs emptying while the other faults in new ones. An arena
 * that has no slab of the class yet (a new thread's) makes its own, so a
 * thread's first blocks never share cache lines with another thread's;
 * classes whose slab holds fewer than 8 blocks never borrow; a bin that
 * sends no block elsewhere refills as before.
 *
 * The refill tests drive two arenas of the process directly, with classes
 * no thread uses: Y (the last index) and X, the next one after it (index
 * 0), which a scan from Y looks at first.
 */
#include "test_cmocka.h"
#include "internal.h"

#include <pthread.h>
#include <semaphore.h>

enum { MAXB = 2048 };

static unsigned class_at_least(uint32_t min) {
    for (unsigned c = 1; c <= TM_NCLASSES; c++)
        if (tm_classes[c].size >= min) return c;
    fail_msg("no class of %u bytes", min);
    return 0;
}

static unsigned owner(const void *p) {
    const tm_chunk_t *c = chunk_of_entry(pagemap_lookup((uintptr_t)p));
    return c ? c->arena->index : ~0u;
}

static size_t nslabs(const tm_arena_t *a, unsigned cls) {
    return __atomic_load_n(&a->bins[cls].nslabs, __ATOMIC_RELAXED);
}

/* n blocks of class cls from arena a, by as many refills as it takes */
static void take(tm_arena_t *a, unsigned cls, void **out, unsigned n) {
    for (unsigned got = 0, k; got < n; got += k) {
        k = arena_refill(a, cls, out + got, n - got);
        if (!k) fail_msg("arena %u gave no block of class %u", a->index, cls);
    }
}

/* X gets slabs of class cls with room: two slabs' worth taken, every other
 * block given back. Returns how many X still hands out (in xb). */
static unsigned give_x_room(tm_arena_t *x, unsigned cls, void **xb) {
    const unsigned nb = tm_classes[cls].nblocks;
    assert_true(2 * nb <= MAXB);
    take(x, cls, xb, 2 * nb);
    unsigned kept = 0;
    for (unsigned i = 0; i < 2 * nb; i++) {
        if (i % 2) arena_flush(cls, &xb[i], 1);
        else xb[kept++] = xb[i];
    }
    assert_non_null(__atomic_load_n(&x->bins[cls].partial, __ATOMIC_RELAXED));
    return kept;
}

static void setup(tm_arena_t **x, tm_arena_t **y) {
    tm_init();
    if (tm_narenas < 2) skip();
    *y = arena_get(tm_narenas - 1);
    *x = arena_get(0);
    assert_non_null(*x);
    assert_non_null(*y);
}

static void test_a_refill_borrows_before_making_a_slab(void **state) {
    (void)state;
    tm_arena_t *x, *y;
    setup(&x, &y);
    const unsigned cls = class_at_least(1000), nb = tm_classes[cls].nblocks;
    static void *xb[MAXB], *yb[MAXB], *ob[64];
    unsigned xn = give_x_room(x, cls, xb);
    /* Y fills one slab of its own */
    take(y, cls, yb, nb);
    assert_int_equal(nslabs(y, cls), 1);
    assert_null(__atomic_load_n(&y->bins[cls].partial, __ATOMIC_RELAXED));
    for (unsigned i = 0; i < nb; i++) assert_int_equal(owner(yb[i]), y->index);

    /* X is the only lender: told to avoid it, Y borrows nothing */
    assert_int_equal(arena_refill_other(y, x->index, cls, ob, 8), 0);
    /* Y's next blocks come from X's slabs, and Y makes no second slab */
    unsigned n = arena_refill_other(y, TM_MAX_ARENAS, cls, ob, 8);
    if (n == 0) fail_msg("arena %u made no use of arena %u's slabs with room", y->index, x->index);
    for (unsigned i = 0; i < n; i++)
        if (owner(ob[i]) != x->index)
            fail_msg("a borrowed block belongs to arena %u, not %u", owner(ob[i]), x->index);
    assert_int_equal(nslabs(y, cls), 1);
    arena_flush(cls, ob, n);

    /* With one block of room left in its slab, a remote refill of Y stops
     * there rather than make a slab while X has room, and the next one
     * borrows */
    arena_flush(cls, &yb[nb - 1], 1);
    n = arena_refill_remote(y, TM_MAX_ARENAS, cls, ob, 8);
    assert_int_equal(n, 1);
    assert_ptr_equal(ob[0], yb[nb - 1]);
    n = arena_refill_remote(y, TM_MAX_ARENAS, cls, ob + 1, 8);
    assert_true(n >= 1);
    for (unsigned i = 1; i <= n; i++) assert_int_equal(owner(ob[i]), x->index);
    assert_int_equal(nslabs(y, cls), 1);
    arena_flush(cls, ob + 1, n);
    arena_flush(cls, ob, 1);
    /* a plain refill (a bin that sends no block elsewhere) takes Y's last
     * block and goes on into a slab of its own */
    n = arena_refill(y, cls, ob, 8);
    assert_int_equal(n, 8);
    assert_ptr_equal(ob[0], yb[nb - 1]);
    assert_int_equal(nslabs(y, cls), 2);
    for (unsigned i = 0; i < n; i++) assert_int_equal(owner(ob[i]), y->index);
    arena_flush(cls, ob, n); /* Y's second slab empties: back to its chunk */
    assert_int_equal(nslabs(y, cls), 1);

    /* Once no other arena has room, Y makes its slab as before */
    arena_flush(cls, xb, xn);
    arena_release_empty_slabs(x); /* X's slabs, now empty, go back to its chunk */
    n = 0;
    while (__atomic_load_n(&x->bins[cls].partial, __ATOMIC_RELAXED) && n < MAXB)
        n += arena_refill(x, cls, xb + n, 1); /* a slab X keeps: used up */
    n = arena_refill_remote(y, TM_MAX_ARENAS, cls, ob, 8);
    assert_true(n >= 1);
    assert_int_equal(nslabs(y, cls), 2);
    for (unsigned i = 0; i < n; i++) assert_int_equal(owner(ob[i]), y->index);
    arena_flush(cls, ob, n); /* yb[nb - 1] among them */
    arena_flush(cls, yb, nb - 1);
}

/* A class whose slab holds a few big blocks does not borrow: one borrowed
 * block would keep its lender's slab from emptying. */
static void test_big_blocks_are_not_borrowed(void **state) {
    (void)state;
    tm_arena_t *x, *y;
    setup(&x, &y);
    const unsigned cls = class_at_least(2048), nb = tm_classes[cls].nblocks;
    assert_true(nb < 8);
    static void *xb[MAXB], *yb[MAXB], *ob[64];
    unsigned xn = give_x_room(x, cls, xb);
    take(y, cls, yb, nb);
    size_t before = nslabs(y, cls);
    unsigned n = arena_refill_remote(y, TM_MAX_ARENAS, cls, ob, 2);
    assert_true(n >= 1);
    for (unsigned i = 0; i < n; i++) assert_int_equal(owner(ob[i]), y->index);
    assert_int_equal(nslabs(y, cls), before + 1);
    arena_flush(cls, ob, n);
    arena_flush(cls, yb, nb);
    arena_flush(cls, xb, xn);
}

/* ---- the bin's flag: set by another arena's blocks, not by the thread's own ----
 * P allocates a burst of 64-byte blocks and stays alive; C, bound to
 * another arena, frees them all into a bin that holds one of its own,
 * and frees a burst of its own 96-byte blocks. */
enum { FLAG_BURST = 300 };

typedef struct flags {
    void *p[FLAG_BURST];
    sem_t handed, done;
    unsigned arena_p, arena_c;
    int remote_foreign, remote_own; /* C's bins after its frees */
} flags_t;

static void wait_sem(sem_t *s) {
    while (sem_wait(s) != 0) {
    }
}

static void *producer(void *arg) {
    flags_t *f = arg;
    for (unsigned i = 0; i < FLAG_BURST; i++) f->p[i] = TM_API(malloc)(64);
    f->arena_p = tm_tls.arena;
    sem_post(&f->handed);
    wait_sem(&f->done); /* alive until C has gone */
    return NULL;
}

static void *consumer(void *arg) {
    flags_t *f = arg;
    wait_sem(&f->handed);
    void *own[FLAG_BURST];
    for (unsigned i = 0; i < FLAG_BURST; i++) own[i] = TM_API(malloc)(96);
    f->arena_c = tm_tls.arena;
    /* C's 64-byte bin holds blocks of its own first, so P's blocks never
     * meet it empty: only an overflow, which sends some home, marks it */
    void *mine = TM_API(malloc)(64);
    TM_API(free)(mine);
    for (unsigned i = 0; i < FLAG_BURST; i++) TM_API(free)(f->p[i]);
    for (unsigned i = 0; i < FLAG_BURST; i++) TM_API(free)(own[i]);
    f->remote_foreign = tm_tls.tc->bins[size_class_of(64)].remote;
    f->remote_own = tm_tls.tc->bins[size_class_of(96)].remote;
    return NULL;
}

static void test_remote_frees_mark_the_bin(void **state) {
    (void)state;
    static flags_t f;
    sem_init(&f.handed, 0, 0);
    sem_init(&f.done, 0, 0);
    pthread_t p, c;
    assert_int_equal(pthread_create(&p, NULL, producer, &f), 0);
    assert_int_equal(pthread_create(&c, NULL, consumer, &f), 0);
    assert_int_equal(pthread_join(c, NULL), 0);
    sem_post(&f.done);
    assert_int_equal(pthread_join(p, NULL), 0);
    if (tm_narenas < 2) skip();
    if (f.arena_p == f.arena_c) fail_msg("P and C share arena %u", f.arena_p);
    if (!f.remote_foreign) fail_msg("C freed %d of P's blocks and its bin is not marked", FLAG_BURST);
    if (f.remote_own) fail_msg("C freed only its own blocks of 96 B and the bin is marked");
}

/* An arena with no slab of the class makes its own, even when another
 * arena has room: a new thread's blocks stay off other threads' lines. */
static void test_a_first_slab_is_never_borrowed(void **state) {
    (void)state;
    tm_arena_t *x, *y;
    setup(&x, &y);
    const unsigned cls = class_at_least(700);
    assert_true(tm_classes[cls].nblocks >= 8); /* a class that borrows */
    static void *xb[MAXB], *ob[64];
    unsigned xn = give_x_room(x, cls, xb);
    assert_int_equal(nslabs(y, cls), 0);
    assert_int_equal(arena_refill_other(y, TM_MAX_ARENAS, cls, ob, 8), 0);
    unsigned n = arena_refill_remote(y, TM_MAX_ARENAS, cls, ob, 8);
    assert_true(n >= 1);
    for (unsigned i = 0; i < n; i++) assert_int_equal(owner(ob[i]), y->index);
    arena_flush(cls, ob, n);
    arena_flush(cls, xb, xn);
}

/* ---- malloc: a marked bin borrows, an unmarked one makes a slab ----
 * The thread's own arena has one full slab in each of two classes, and
 * another arena has room in both; only the first class's bin is marked. */
static void test_a_marked_bin_borrows_on_malloc(void **state) {
    (void)state;
    tm_arena_t *x, *y;
    setup(&x, &y);
    void *warm = TM_API(malloc)(16); /* the thread's cache exists */
    TM_API(free)(warm);
    tm_arena_t *own = tm_tls.tc->arena;
    if (own == x) x = y; /* a lender that is not the thread's own */
    const unsigned marked = class_at_least(700), plain = class_at_least(600);
    assert_true(marked != plain);
    static void *xb[2][MAXB], *ob[2][MAXB];
    const unsigned cls[2] = {marked, plain};
    for (int k = 0; k < 2; k++) {
        const unsigned nb = tm_classes[cls[k]].nblocks;
        assert_true(nb >= 8);
        assert_int_equal(tm_tls.tc->bins[cls[k]].top, tm_tls.tc->bins[cls[k]].base); /* unused */
        assert_int_equal(nslabs(own, cls[k]), 0);
        take(own, cls[k], ob[k], nb); /* one slab, full */
        give_x_room(x, cls[k], xb[k]); /* the blocks stay out: the test ends */
    }
    tm_tls.tc->bins[marked].remote = 1;
    void *pm = TM_API(malloc)(tm_classes[marked].size);
    void *pp = TM_API(malloc)(tm_classes[plain].size);
    unsigned om = owner(pm), op = owner(pp);
    size_t sm = nslabs(own, marked), sp = nslabs(own, plain);
    TM_API(free)(pm);
    TM_API(free)(pp);
    if (om != x->index)
        fail_msg("a marked bin's malloc got a block of arena %u, not of arena %u, which has room", om,
                 x->index);
    assert_int_equal(sm, 1);
    if (op != own->index) fail_msg("an unmarked bin's malloc got a block of arena %u", op);
    assert_int_equal(sp, 2);
}

/* ---- the passive false-sharing guard ----
 * A thread frees another arena's block into its empty bin: the refill
 * that goes under it (tcache_free_slow) may borrow, but never from that
 * block's arena, whose slab holds the other thread's objects; here the
 * only arena with room is that one, so the thread's own arena makes a
 * slab. */
static void test_a_handed_over_block_lends_nothing(void **state) {
    (void)state;
    tm_arena_t *x, *y;
    setup(&x, &y);
    void *warm = TM_API(malloc)(16);
    TM_API(free)(warm);
    tm_arena_t *own = tm_tls.tc->arena;
    if (own == x) x = y;
    const unsigned cls = class_at_least(400), nb = tm_classes[cls].nblocks;
    assert_true(nb >= 8);
    assert_int_equal(tm_tls.tc->bins[cls].top, tm_tls.tc->bins[cls].base); /* empty */
    assert_int_equal(nslabs(own, cls), 0);
    static void *ob[MAXB], *xb[MAXB];
    take(own, cls, ob, nb); /* the thread's arena: one slab, full */
    unsigned xn = give_x_room(x, cls, xb);
    void *handed = xb[xn - 1]; /* another thread's object, freed here */
    *tm_cookie_slot(handed) = 0; /* as malloc hands it out */
    TM_API(free)(handed);
    void *p = TM_API(malloc)(tm_classes[cls].size);
    unsigned op = owner(p);
    TM_API(free)(p);
    if (op == x->index)
        fail_msg("after freeing arena %u's block into its empty bin, the thread got another "
                 "block of that arena",
                 x->index);
    assert_int_equal(op, own->index);
}

/* ---- the mark goes when the bin is emptied ----
 * By a drain (_heapmin here) and by the garbage collection once it has
 * given back every block of a bin the thread stopped using (tcache.c);
 * the bin's next foreign block marks it again. On the code before
 * 2026-12-08 the mark stayed for the thread's life. */
static void test_a_drain_clears_the_mark(void **state) {
    (void)state;
    const unsigned cls = class_at_least(2000);
    TM_API(free)(TM_API(malloc)(tm_classes[cls].size));
    tm_tcache_t *tc = tm_tls.own;
    assert_non_null(tc);
    tc->bins[cls].remote = 1;
    assert_int_equal(TM_API(_heapmin)(), 0);
    assert_int_equal(tc->bins[cls].remote, 0);
}

static void test_the_gc_clears_the_mark_of_an_idle_bin(void **state) {
    (void)state;
    const unsigned cls = class_at_least(3000), other = class_at_least(64);
    void *p = TM_API(malloc)(tm_classes[cls].size), *q = TM_API(malloc)(tm_classes[cls].size);
    TM_API(free)(p);
    TM_API(free)(q);
    tm_tcache_t *tc = tm_tls.own;
    tm_tc_bin_t *b = &tc->bins[cls];
    assert_true(b->top - b->base >= 2);
    b->remote = 1;
    /* slow-path calls of another class, each one a GC visit of cls */
    for (int visit = 0; visit < 16 && b->top != b->base; visit++) {
        if (!b->remote) fail_msg("the mark went while the bin still held %d blocks", (int)(b->top - b->base));
        tm_lock(&tc->mu);
        tc->gc_next = cls;
        tc->gc_tick = 1000; /* the visit is due */
        pthread_mutex_unlock(&tc->mu);
        void *r = tcache_malloc_slow(tm_classes[other].size, other);
        assert_non_null(r);
        TM_API(free)(r);
    }
    assert_ptr_equal(b->top, b->base); /* the idle bin was given back */
    assert_int_equal(b->remote, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_refill_borrows_before_making_a_slab),
        cmocka_unit_test(test_a_first_slab_is_never_borrowed),
        cmocka_unit_test(test_big_blocks_are_not_borrowed),
        cmocka_unit_test(test_remote_frees_mark_the_bin),
        cmocka_unit_test(test_a_marked_bin_borrows_on_malloc),
        cmocka_unit_test(test_a_handed_over_block_lends_nothing),
        cmocka_unit_test(test_a_drain_clears_the_mark),
        cmocka_unit_test(test_the_gc_clears_the_mark_of_an_idle_bin),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
