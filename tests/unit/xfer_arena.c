/*
 * xfer_arena.c (unit) -- transfer caches belong to arenas (tcache.c): a
 * thread cache that overflows parks the blocks with the arena that owns
 * them, and a thread that runs dry takes a batch from its own arena's
 * transfer cache, not from a cache other threads are cycling. Only a
 * neighbour's that is at least a quarter full is shared.
 *
 * Two threads, each bound to its own arena: A allocates and frees a burst
 * of 64-byte blocks and stays alive; then B allocates blocks of the same
 * class. With one transfer cache per class for the whole process (before
 * 2026-12-04), B's first refills took A's parked blocks.
 */
#include "test_cmocka.h"
#include "internal.h"

#include <pthread.h>
#include <semaphore.h>

enum { SIZE = 64, B_BLOCKS = 200, MAX_BLOCKS = 4000 };

typedef struct scenario {
    unsigned a_blocks;          /* A's burst */
    sem_t parked, done;
    unsigned arena_a, arena_b;
    unsigned b_from_a;          /* B's blocks owned by A's arena */
    const char *why;
} scenario_t;

static unsigned owner(const void *p) {
    tm_chunk_t *c = chunk_of_entry(pagemap_lookup((uintptr_t)p));
    return c ? c->arena->index : ~0u;
}

static void *thread_a(void *arg) {
    scenario_t *s = arg;
    static void *p[MAX_BLOCKS];
    for (unsigned i = 0; i < s->a_blocks; i++)
        if (!(p[i] = TM_API(malloc)(SIZE))) s->why = "A: malloc failed";
    s->arena_a = tm_tls.arena;
    for (unsigned i = 0; i < s->a_blocks; i++) TM_API(free)(p[i]);
    sem_post(&s->parked);
    while (sem_wait(&s->done) != 0) {
    } /* alive, holding its cache, until B is done */
    return NULL;
}

static void *thread_b(void *arg) {
    scenario_t *s = arg;
    void *p[B_BLOCKS];
    for (unsigned i = 0; i < B_BLOCKS; i++)
        if (!(p[i] = TM_API(malloc)(SIZE))) s->why = "B: malloc failed";
    s->arena_b = tm_tls.arena;
    for (unsigned i = 0; i < B_BLOCKS; i++)
        if (p[i] && owner(p[i]) == s->arena_a) s->b_from_a++;
    for (unsigned i = 0; i < B_BLOCKS; i++) TM_API(free)(p[i]);
    return NULL;
}

static void run(scenario_t *s) {
    sem_init(&s->parked, 0, 0);
    sem_init(&s->done, 0, 0);
    pthread_t a, b;
    assert_int_equal(pthread_create(&a, NULL, thread_a, s), 0);
    while (sem_wait(&s->parked) != 0) {
    }
    assert_int_equal(pthread_create(&b, NULL, thread_b, s), 0);
    assert_int_equal(pthread_join(b, NULL), 0);
    sem_post(&s->done);
    assert_int_equal(pthread_join(a, NULL), 0);
    sem_destroy(&s->parked);
    sem_destroy(&s->done);
    if (s->why) fail_msg("%s", s->why);
    /* each thread is bound to the arena with the fewest threads: with A
     * alive, B gets another one whenever there are two */
    if (tm_narenas < 2) skip();
    if (s->arena_a == s->arena_b) fail_msg("A and B share arena %u", s->arena_a);
}

/* A burst that parks a few hundred blocks: B's arena has none parked, and
 * A's transfer cache is below a quarter full, so B's blocks are its own. */
static void test_small_burst_stays_with_its_arena(void **state) {
    (void)state;
    scenario_t s = {.a_blocks = 300};
    run(&s);
    if (s.b_from_a)
        fail_msg("%u of B's %d blocks came from A's arena %u (B is in arena %u)", s.b_from_a,
                 B_BLOCKS, s.arena_a, s.arena_b);
}

/* A burst that fills A's transfer cache past a quarter: a refill that finds
 * its own empty takes a batch from it. */
static void test_full_neighbour_is_shared(void **state) {
    (void)state;
    scenario_t s = {.a_blocks = MAX_BLOCKS};
    run(&s);
    if (!s.b_from_a)
        fail_msg("none of B's %d blocks came from A's arena %u, whose transfer cache "
                 "should hold thousands",
                 B_BLOCKS, s.arena_a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_burst_stays_with_its_arena),
        cmocka_unit_test(test_full_neighbour_is_shared),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
