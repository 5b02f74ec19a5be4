/*
 * heapwalk.c -- _heapwalk (docs/crt.md):
 *   - the used entries are exactly the blocks the program holds -- small,
 *     large and huge, each with its usable size -- before and after part of
 *     them is freed, and what was freed is covered by free entries;
 *   - entries come in strictly increasing address order without overlap,
 *     and their sizes add up to no more than what is mapped;
 *   - _HEAPEND at the end (and again when asked once more); _HEAPBADPTR for
 *     a NULL entry and for a _pentry that is not an entry;
 *   - an entry freed (or unmapped by _heapmin) between two calls does not
 *     stop the walk;
 *   - while other threads allocate, free, trim and _heapset, every walk
 *     ends with _HEAPEND and _heapchk stays _HEAPOK (clean under TSan).
 */
#include "test_cmocka.h"

#include <stdatomic.h>
#include <stdbool.h>

typedef struct ent {
    uintptr_t p;
    size_t size;
    int used;
} ent_t;

#define MAX_ENTS (1 << 19)
static ent_t ents[MAX_ENTS];
static size_t nents;

/* Walk the heap into ents[], checking order and fields; returns the code
 * that ended the walk. Usable from any thread (TU_CHECK). */
static int walk_all(void)
{
    _HEAPINFO e = {NULL, 0, 0};
    uintptr_t end = 0;
    int rc;
    nents = 0;
    while ((rc = TM_API(_heapwalk)(&e)) == _HEAPOK) {
        uintptr_t p = (uintptr_t)e._pentry;
        TU_CHECK(p >= end, "entry %p starts before the previous one ends (%p)", (void *)p,
                 (void *)end);
        TU_CHECK(e._size > 0 && (e._useflag == _USEDENTRY || e._useflag == _FREEENTRY),
                 "entry %p: size %zu, flag %d", (void *)p, e._size, e._useflag);
        TU_CHECK(nents < MAX_ENTS, "more than %d entries", MAX_ENTS);
        ents[nents++] = (ent_t){p, e._size, e._useflag == _USEDENTRY};
        end = p + e._size;
    }
    return rc;
}

/* The entry starting at p, or NULL. */
static const ent_t *find_ent(uintptr_t p)
{
    size_t lo = 0, hi = nents;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (ents[mid].p < p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < nents && ents[lo].p == p ? &ents[lo] : NULL;
}

/* The entry whose bytes hold address p, or NULL. */
static const ent_t *covering_ent(uintptr_t p)
{
    size_t lo = 0, hi = nents;
    while (lo < hi) { /* first entry starting above p */
        size_t mid = (lo + hi) / 2;
        if (ents[mid].p <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return NULL;
    const ent_t *e = &ents[lo - 1];
    return p < e->p + e->size ? e : NULL;
}

/* ---- the used entries are the held blocks ---------------------------------- */

enum { NHELD = 500 };
static tu_block_t held[NHELD];
static size_t held_usable[NHELD];
static ent_t base_used[MAX_ENTS / 8];
static size_t nbase;

static size_t held_size(int i)
{
    if (i % 97 == 5)
        return (size_t)(3 + i % 7) << 20; /* huge */
    if (i % 23 == 1)
        return 40 * TU_KIB + (size_t)i * 3000; /* large */
    return 1 + (size_t)(i * 131) % 32768 / (i % 3 ? 1 : 64); /* small, many classes */
}

static bool in_base(const ent_t *e)
{
    for (size_t i = 0; i < nbase; i++)
        if (base_used[i].p == e->p && base_used[i].size == e->size)
            return true;
    return false;
}

/* Every used entry is a held block (by address and usable size) or was
 * used before the test began, and every held block is a used entry. */
static void check_used_is_held(void)
{
    size_t nused = 0, nheld = 0;
    for (size_t i = 0; i < nents; i++) {
        if (!ents[i].used)
            continue;
        nused++;
        bool found = in_base(&ents[i]);
        for (int k = 0; k < NHELD && !found; k++)
            found = held[k].p && (uintptr_t)held[k].p == ents[i].p &&
                    held_usable[k] == ents[i].size;
        if (!found)
            fail_msg("used entry %p (%zu bytes) is not a block the test holds",
                     (void *)ents[i].p, ents[i].size);
    }
    for (int k = 0; k < NHELD; k++) {
        if (!held[k].p)
            continue;
        nheld++;
        const ent_t *e = find_ent((uintptr_t)held[k].p);
        if (!e || !e->used || e->size != held_usable[k])
            fail_msg("held block %p (%zu usable) is %s", (void *)held[k].p, held_usable[k],
                     !e ? "not an entry" : !e->used ? "a free entry" : "of another size");
    }
    assert_int_equal(nused, nheld + nbase);
}

static void test_walk_exact_set(void **state)
{
    (void)state;
    /* what is used before we start (the drop-in flavour's libc and cmocka);
     * a heap that never mapped anything says _HEAPEMPTY (the prefixed
     * flavour, when this test runs first) */
    int rc0 = walk_all();
    if (rc0 != _HEAPEMPTY)
        assert_int_equal(rc0, _HEAPEND);
    nbase = 0;
    for (size_t i = 0; i < nents; i++)
        if (ents[i].used && nbase < TU_ARRAY_LEN(base_used))
            base_used[nbase++] = ents[i];
#ifdef TRIMALLOC_PREFIX
    assert_int_equal(nbase, 0); /* the walk drained the caches: nothing is held */
#endif

    for (int i = 0; i < NHELD; i++) {
        held[i] = tu_block_new(held_size(i), 0, (uint64_t)i);
        held_usable[i] = TM_API(malloc_usable_size)(held[i].p);
    }
    assert_int_equal(walk_all(), _HEAPEND);
    check_used_is_held();

    /* free every third block: the rest stay used, the freed are free */
    static uintptr_t freed[NHELD];
    static size_t freed_usable[NHELD];
    size_t nfreed = 0, freed_bytes = 0;
    for (int i = 0; i < NHELD; i += 3) {
        freed[nfreed] = (uintptr_t)held[i].p;
        freed_usable[nfreed++] = held_usable[i];
        if (held_usable[i] <= TU_MIB * 2)
            freed_bytes += held_usable[i];
        tu_block_free(&held[i]);
    }
    assert_int_equal(walk_all(), _HEAPEND);
    check_used_is_held();
    size_t free_sum = 0, used_sum = 0;
    for (size_t i = 0; i < nents; i++)
        *(ents[i].used ? &used_sum : &free_sum) += ents[i].size;
    for (size_t k = 0; k < nfreed; k++) {
        const ent_t *e = covering_ent(freed[k]);
        if (freed_usable[k] > 2 * TU_MIB) { /* huge: its mapping is not part of the walk */
            assert_null(e);
            continue;
        }
        if (!e || e->used)
            fail_msg("freed block %p (%zu) is %s", (void *)freed[k], freed_usable[k],
                     e ? "inside a used entry" : "in no entry");
        /* a small block is its own free entry, unless its slab went back */
        if (e->p != freed[k])
            assert_true(e->size > freed_usable[k]);
    }
    /* the sizes add up */
    assert_true(free_sum >= freed_bytes);
    trimalloc_stats_t st;
    assert_int_equal(TM_API(trimalloc_stats_get)(&st), 0);
    assert_true(free_sum + used_sum <= st.mapped);

    for (int i = 0; i < NHELD; i++)
        tu_block_free(&held[i]);
    assert_int_equal(walk_all(), _HEAPEND);
    for (size_t i = 0; i < nents; i++)
        if (ents[i].used)
            assert_true(in_base(&ents[i]));
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

/* ---- ends and bad pointers -------------------------------------------------------- */

static void test_walk_end_and_badptr(void **state)
{
    (void)state;
    unsigned char *s = TM_API(malloc)(100);
    unsigned char *l = TM_API(malloc)(200 * TU_KIB);
    unsigned char *h = TM_API(malloc)(5 * TU_MIB);
    assert_true(s && l && h);

    _HEAPINFO e = {NULL, 0, 0};
    int rc, n = 0;
    while ((rc = TM_API(_heapwalk)(&e)) == _HEAPOK)
        n++;
    assert_int_equal(rc, _HEAPEND);
    assert_true(n >= 3);
    assert_int_equal(TM_API(_heapwalk)(&e), _HEAPEND); /* and again */

    errno = 0;
    assert_int_equal(TM_API(_heapwalk)(NULL), _HEAPBADPTR);
    assert_int_equal(errno, EINVAL);

    int local = 0;
    void *bogus[] = {&local, s + 16, s + 1, l + 4096, l + 16, h + 4096, h + 8 * TU_KIB,
                     (void *)(uintptr_t)8};
    for (size_t i = 0; i < TU_ARRAY_LEN(bogus); i++) {
        e._pentry = bogus[i];
        if (TM_API(_heapwalk)(&e) != _HEAPBADPTR)
            fail_msg("_heapwalk from %p (bogus #%zu) did not say _HEAPBADPTR", bogus[i], i);
    }
#ifdef TRIMALLOC_PREFIX
    void *libc = malloc(64); /* the C library's, not ours */
    e._pentry = libc;
    assert_int_equal(TM_API(_heapwalk)(&e), _HEAPBADPTR);
    free(libc);
#endif

    /* a block of ours is an entry, wherever it came from: the walk goes on
     * from there to entries above it */
    void *starts[] = {s, l, h};
    for (size_t i = 0; i < TU_ARRAY_LEN(starts); i++) {
        e._pentry = starts[i];
        rc = TM_API(_heapwalk)(&e);
        assert_true(rc == _HEAPOK || rc == _HEAPEND);
        if (rc == _HEAPOK)
            assert_true((uintptr_t)e._pentry > (uintptr_t)starts[i]);
    }

    TM_API(free)(s);
    TM_API(free)(l);
    TM_API(free)(h);
}

/* Two walks of a quiet heap are the same walk. */
static void test_walk_repeatable(void **state)
{
    (void)state;
    enum { N = 300 };
    void *b[N];
    for (int i = 0; i < N; i++)
        b[i] = TM_API(malloc)(held_size(i * 7 + 3));
    for (int i = 0; i < N; i += 4)
        TM_API(free)(b[i]);
    assert_int_equal(walk_all(), _HEAPEND);
    static ent_t first[MAX_ENTS / 4];
    size_t n1 = nents;
    assert_true(n1 <= TU_ARRAY_LEN(first));
    memcpy(first, ents, n1 * sizeof(ent_t));
    assert_int_equal(walk_all(), _HEAPEND);
    assert_int_equal(nents, n1);
    assert_memory_equal(first, ents, n1 * sizeof(ent_t));
    for (int i = 1; i < N; i++)
        if (i % 4)
            TM_API(free)(b[i]);
}

/* ---- entries that vanish between two calls -------------------------------------- */

/* Walk to the entry at p, free the block, carry on to the end. */
static void walk_free_at(void *p, void (*release)(void *))
{
    _HEAPINFO e = {NULL, 0, 0};
    int rc;
    bool seen = false;
    uintptr_t prev = 0;
    while ((rc = TM_API(_heapwalk)(&e)) == _HEAPOK) {
        assert_true((uintptr_t)e._pentry > prev || prev == 0);
        prev = (uintptr_t)e._pentry;
        if ((void *)e._pentry == p) {
            assert_int_equal(e._useflag, _USEDENTRY);
            release(p);
            seen = true;
        }
    }
    assert_int_equal(rc, _HEAPEND);
    assert_true(seen);
}

static void release_free(void *p) { TM_API(free)(p); }

static void release_all_and_trim(void *p)
{
    TM_API(free)(p);
    assert_int_equal(TM_API(_heapmin)(), 0);
}

static void test_walk_entry_vanishes(void **state)
{
    (void)state;
    /* a huge block, unmapped or cached once freed */
    walk_free_at(TM_API(malloc)(6 * TU_MIB), release_free);
    /* a large run between two free neighbours: it merges into them */
    void *l1 = TM_API(malloc)(64 * TU_KIB), *l2 = TM_API(malloc)(64 * TU_KIB);
    void *l3 = TM_API(malloc)(64 * TU_KIB);
    TM_API(free)(l1);
    TM_API(free)(l3);
    walk_free_at(l2, release_free);
    /* a small block (into this thread's cache, mid-walk) */
    void *s = TM_API(malloc)(20000);
    walk_free_at(s, release_free);
    /* a large block, then _heapmin, which may unmap its chunk */
    void *big = TM_API(malloc)(2 * TU_MIB);
    walk_free_at(big, release_all_and_trim);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

/* ---- other threads at work ---------------------------------------------------------- */

static atomic_int stop, started;

static void *worker(void *arg)
{
    uint64_t id = (uint64_t)(uintptr_t)arg;
    enum { SLOTS = 256 };
    tu_block_t b[SLOTS];
    memset(b, 0, sizeof b);
    tu_rng_t rng;
    tu_rng_seed(&rng, 1000 + id);
    uint64_t seq = 0;
    for (int i = 0; i < SLOTS / 2; i++)
        b[i] = tu_block_new(1 + (size_t)i * 40, id, seq++);
    atomic_fetch_add(&started, 1);
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        int i = (int)(tu_rand(&rng) % SLOTS);
        if (b[i].p) {
            tu_block_free(&b[i]); /* checks the pattern: nobody wrote into it */
        } else {
            size_t sz = tu_rand_size(&rng, 5 * TU_MIB, 2);
            b[i] = tu_block_new(sz, id, seq++);
        }
    }
    for (int i = 0; i < SLOTS; i++)
        tu_block_free(&b[i]);
    return NULL;
}

static void *trimmer(void *arg)
{
    (void)arg;
    unsigned n = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        if (n++ % 4 == 3)
            TU_CHECK(TM_API(_heapset)(0x5a) == _HEAPOK, "_heapset while others work");
        else
            TU_CHECK(TM_API(_heapmin)() == 0, "_heapmin while others work");
        usleep(2000);
    }
    return NULL;
}

static void test_walk_concurrent(void **state)
{
    (void)state;
    enum { NWORKERS = 4 };
    pthread_t w[NWORKERS], t;
    atomic_store(&stop, 0);
    atomic_store(&started, 0);
    for (int i = 0; i < NWORKERS; i++)
        tu_thread_create(&w[i], worker, (void *)(uintptr_t)(i + 1));
    while (atomic_load(&started) < NWORKERS) /* they hold blocks: never an empty walk */
        usleep(1000);
    tu_thread_create(&t, trimmer, NULL);
    long walks = tu_scaled(40, 4);
    for (long k = 0; k < walks; k++) {
        int rc = walk_all(); /* checks order */
        if (rc != _HEAPEND)
            fail_msg("walk %ld ended with %d after %zu entries", k, rc, nents);
        assert_true(nents > 0);
        assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < NWORKERS; i++)
        tu_thread_join(w[i]);
    tu_thread_join(t);
    assert_int_equal(walk_all(), _HEAPEND);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_walk_exact_set),
        cmocka_unit_test(test_walk_end_and_badptr),
        cmocka_unit_test(test_walk_repeatable),
        cmocka_unit_test(test_walk_entry_vanishes),
        cmocka_unit_test(test_walk_concurrent),
    };
    return cmocka_run_group_tests_name("api_heapwalk (" TU_FLAVOUR ")", tests, NULL, NULL);
}
