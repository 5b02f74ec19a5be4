/*
 * borrow.c (unit) -- before an arena makes another slab of a class, a
 * refill takes the blocks of another arena's slab with room
 * (arena_refill_other, arena.c): threads that free each other's blocks
 * otherwise let their blocks drift from one arena to the other, one
 * arena's slabs emptying while the other faults in new ones. An arena
 * that has no slab of the class yet (a new thread's) makes its own, so a
 * thread's first blocks never share cache lines with another thread's.
 *
 * The test drives two arenas of the process directly, with a class no
 * thread uses: Y (the last index) and X, the next one after it (index 0),
 * which a scan from Y looks at first.
 */
#include "test_cmocka.h"
#include "internal.h"

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

    /* Y's next blocks come from X's slabs, and Y makes no second slab */
    unsigned n = arena_refill_other(y, cls, ob, 8);
    if (n == 0) fail_msg("arena %u made no use of arena %u's slabs with room", y->index, x->index);
    for (unsigned i = 0; i < n; i++)
        if (owner(ob[i]) != x->index)
            fail_msg("a borrowed block belongs to arena %u, not %u", owner(ob[i]), x->index);
    assert_int_equal(nslabs(y, cls), 1);
    arena_flush(cls, ob, n);

    /* With one block of room left in its slab, a refill of Y stops there
     * rather than make a slab while X has room */
    arena_flush(cls, &yb[nb - 1], 1);
    n = arena_refill(y, cls, ob, 8);
    assert_int_equal(n, 1);
    assert_ptr_equal(ob[0], yb[nb - 1]);
    assert_int_equal(nslabs(y, cls), 1);

    /* Once no other arena has room, Y makes its slab as before */
    arena_flush(cls, xb, xn);
    arena_release_empty_slabs(x); /* X's slabs, now empty, go back to its chunk */
    n = 0;
    while (__atomic_load_n(&x->bins[cls].partial, __ATOMIC_RELAXED) && n < MAXB)
        n += arena_refill(x, cls, xb + n, 1); /* a slab X keeps: used up */
    n = arena_refill(y, cls, ob, 8);
    assert_true(n >= 1);
    assert_int_equal(nslabs(y, cls), 2);
    for (unsigned i = 0; i < n; i++) assert_int_equal(owner(ob[i]), y->index);
    arena_flush(cls, ob, n);
    arena_flush(cls, yb, nb);
}

/* An arena with no slab of the class makes its own, even when another
 * arena has room: a new thread's blocks stay off other threads' lines. */
static void test_a_first_slab_is_never_borrowed(void **state) {
    (void)state;
    tm_arena_t *x, *y;
    setup(&x, &y);
    const unsigned cls = class_at_least(1500);
    static void *xb[MAXB], *ob[64];
    unsigned xn = give_x_room(x, cls, xb);
    assert_int_equal(nslabs(y, cls), 0);
    assert_int_equal(arena_refill_other(y, cls, ob, 8), 0);
    unsigned n = arena_refill(y, cls, ob, 8);
    assert_true(n >= 1);
    for (unsigned i = 0; i < n; i++) assert_int_equal(owner(ob[i]), y->index);
    arena_flush(cls, ob, n);
    arena_flush(cls, xb, xn);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_refill_borrows_before_making_a_slab),
        cmocka_unit_test(test_a_first_slab_is_never_borrowed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
