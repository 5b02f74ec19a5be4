/*
 * remote_free.c -- which blocks and which arena a thread gets when blocks
 * and arenas move between threads:
 *   - a thread that frees an object another thread allocated, then
 *     allocates one of the same size, does not get that object back (nor
 *     anything in a cache line holding the other thread's objects): it
 *     would go on writing the other thread's cache line (passive false
 *     sharing, as in Hoard's cache-scratch);
 *   - a thread that replaces one that exited takes over its arena, so it
 *     reuses the memory the first one left there.
 */
#include "test_cmocka.h"

#define LINE 64

static unsigned narenas(void)
{
    trimalloc_stats_t st;
    assert_int_equal(TM_API(trimalloc_stats_get)(&st), 0);
    return st.narenas;
}

enum { NOBJ = 8 };
static void *objs[NOBJ];
static void *got;

static void *scratch_thread(void *arg)
{
    (void)arg;
    /* Empty every cache, this thread's too, so the free below lands in an
     * empty bin, whatever the thread start-up allocated. */
    assert_int_equal(TM_API(_heapmin)(), 0);
    TM_API(free)(objs[1]);
    got = TM_API(malloc)(16);
    assert_non_null(got);
    memset(got, 0x5a, 16);
    TM_API(free)(got);
    return NULL;
}

static void test_remote_object_not_handed_back(void **state)
{
    (void)state;
    if (narenas() < 2)
        skip(); /* one arena: no block is remote */
    for (int i = 0; i < NOBJ; i++) {
        objs[i] = TM_API(malloc)(16);
        assert_non_null(objs[i]);
        memset(objs[i], i, 16);
    }
    pthread_t t;
    tu_thread_create(&t, scratch_thread, NULL);
    tu_thread_join(t);
    assert_true(got != objs[1]);
    for (int i = 0; i < NOBJ; i++)
        if (i != 1 && ((uintptr_t)got & ~(uintptr_t)(LINE - 1)) ==
                          ((uintptr_t)objs[i] & ~(uintptr_t)(LINE - 1)))
            fail_msg("the thread got %p, in the cache line of another thread's object %p", got,
                     objs[i]);
    /* the objects the main thread still holds are intact, the heap too */
    for (int i = 0; i < NOBJ; i++)
        if (i != 1)
            assert_int_equal(tu_find_not_byte(objs[i], 16, (unsigned char)i), (size_t)-1);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    for (int i = 0; i < NOBJ; i++)
        if (i != 1)
            TM_API(free)(objs[i]);
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
}

static void *first_block(void *arg)
{
    void **out = arg;
    *out = TM_API(malloc)(100);
    assert_non_null(*out);
    return NULL;
}

static void test_replacement_thread_takes_arena(void **state)
{
    (void)state;
    if (narenas() < 2)
        skip();
    void *a = NULL, *b = NULL;
    pthread_t t;
    tu_thread_create(&t, first_block, &a);
    tu_thread_join(t);
    tu_thread_create(&t, first_block, &b);
    tu_thread_join(t);
    uintptr_t chunk = (uintptr_t)4 << 20;
    if (((uintptr_t)a & ~(chunk - 1)) != ((uintptr_t)b & ~(chunk - 1)))
        fail_msg("a replacement thread allocated %p, not in the chunk of its predecessor's %p", b,
                 a);
    TM_API(free)(a);
    TM_API(free)(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_remote_object_not_handed_back),
        cmocka_unit_test(test_replacement_thread_takes_arena),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
