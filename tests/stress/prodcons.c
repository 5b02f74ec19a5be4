/*
 * prodcons.c -- one thread allocates, another frees, and memory stays flat.
 *
 * The producer allocates blocks (mostly small, some large, a few huge),
 * fills them with a pattern and passes them in batches through a bounded
 * queue to the consumer, which verifies and frees them. Every block is
 * therefore freed by a thread that did not allocate it: the remote-free
 * path, at full rate, for ROUNDS rounds.
 *
 * At the end of each round the producer waits until the consumer has freed
 * everything, and the consumer records the resident set size. An allocator
 * that never gets remotely freed memory back to the producer, or lets it
 * pile up in the consumer's cache, grows by roughly the round's volume
 * every round; a healthy one is flat after warm-up. The test asserts that
 * RSS after the last round is at most RSS after round WARMUP plus a
 * generous margin, and gives up as soon as any round exceeds that.
 */
#include "test_cmocka.h"

enum {
    ROUNDS = 60,
    WARMUP = 10,
    BATCH = 64,   /* blocks per queue entry */
    QUEUE = 16,   /* queue entries */
};

/* Allowed growth after round WARMUP. Sanitizers add shadow and metadata
 * memory of their own that keeps growing slowly, hence more room there. A
 * round moves about 50 MiB in Release builds (a tenth under TSan). */
#define RSS_MARGIN ((TU_TSAN || TU_ASAN ? 112 : 48) * TU_MIB)

typedef struct batch {
    int count;
    tu_block_t b[BATCH];
} batch_t;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t not_empty, not_full, round_done;
    batch_t *q[QUEUE];
    int head, tail, len; /* ring buffer of batches */
    int rounds_done;     /* rounds the consumer finished */
    int stop;            /* set by the producer after the last round */
    size_t rss[ROUNDS];
    size_t mapped[ROUNDS]; /* the allocator's own view, for the report */
} qs = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .not_empty = PTHREAD_COND_INITIALIZER,
    .not_full = PTHREAD_COND_INITIALIZER,
    .round_done = PTHREAD_COND_INITIALIZER,
};

static long per_round; /* blocks per round */
static int rounds_run; /* rounds the producer started; < ROUNDS if it gave up */

/* NULL marks the end of a round. */
static void queue_push(batch_t *b)
{
    tu_lock(&qs.lock);
    while (qs.len == QUEUE)
        pthread_cond_wait(&qs.not_full, &qs.lock);
    qs.q[qs.tail] = b;
    qs.tail = (qs.tail + 1) % QUEUE;
    qs.len++;
    pthread_cond_signal(&qs.not_empty);
    tu_unlock(&qs.lock);
}

static batch_t *queue_pop(int *stop)
{
    tu_lock(&qs.lock);
    while (qs.len == 0 && !qs.stop)
        pthread_cond_wait(&qs.not_empty, &qs.lock);
    batch_t *b = NULL;
    *stop = qs.len == 0; /* only when stopped and drained */
    if (!*stop) {
        b = qs.q[qs.head];
        qs.head = (qs.head + 1) % QUEUE;
        qs.len--;
        pthread_cond_signal(&qs.not_full);
    }
    tu_unlock(&qs.lock);
    return b;
}

static void *producer(void *arg)
{
    (void)arg;
    tu_rng_t rng;
    tu_rng_seed(&rng, 314);
    uint64_t seq = 0;
    size_t limit = 0;
    int round;
    for (round = 0; round < ROUNDS; round++) {
        for (long made = 0; made < per_round; made += BATCH) {
            /* the batch itself comes from the allocator too */
            batch_t *bt = TM_API(malloc)(sizeof *bt);
            TU_CHECK(bt != NULL, "malloc(batch)");
            bt->count = BATCH;
            for (int i = 0; i < BATCH; i++)
                bt->b[i] = tu_block_new(tu_rand_size(&rng, 2 * TU_MIB, 3), 1, ++seq);
            queue_push(bt);
        }
        queue_push(NULL);
        /* wait for the consumer to free the whole round and take the RSS */
        tu_lock(&qs.lock);
        while (qs.rounds_done <= round)
            pthread_cond_wait(&qs.round_done, &qs.lock);
        size_t rss = qs.rss[round];
        tu_unlock(&qs.lock);
        if (round == WARMUP)
            limit = rss + RSS_MARGIN;
        if (round > WARMUP && rss > limit) {
            round++; /* the last one counts as run */
            break;   /* growing: stop now rather than exhaust memory */
        }
    }
    rounds_run = round;
    tu_lock(&qs.lock);
    qs.stop = 1;
    pthread_cond_broadcast(&qs.not_empty);
    tu_unlock(&qs.lock);
    return NULL;
}

static void *consumer(void *arg)
{
    (void)arg;
    int stop = 0;
    for (;;) {
        batch_t *bt = queue_pop(&stop);
        if (stop)
            break;
        if (bt == NULL) { /* end of a round: everything of it is freed */
            size_t rss = tu_rss_bytes();
            trimalloc_stats_t st;
            TM_API(trimalloc_stats_get)(&st);
            tu_lock(&qs.lock);
            qs.mapped[qs.rounds_done] = st.mapped;
            qs.rss[qs.rounds_done++] = rss;
            pthread_cond_broadcast(&qs.round_done);
            tu_unlock(&qs.lock);
            continue;
        }
        for (int i = 0; i < bt->count; i++)
            tu_block_free(&bt->b[i]); /* verifies first */
        TM_API(free)(bt);
    }
    return NULL;
}

static void test_rss_steady(void **state)
{
    (void)state;
    assert_true(tu_rss_bytes() > 0); /* /proc/self/statm is readable */
    per_round = tu_scaled(8192, 1024);
    pthread_t p, c;
    tu_thread_create(&c, consumer, NULL);
    tu_thread_create(&p, producer, NULL);
    tu_thread_join(p);
    tu_thread_join(c);

    int last = rounds_run - 1;
    print_message("%ld blocks per round; RSS (allocator's mapped) after round 1: %zu (%zu) KiB, "
                  "round %d: %zu (%zu) KiB, round %d: %zu (%zu) KiB\n",
                  per_round, qs.rss[0] >> 10, qs.mapped[0] >> 10, WARMUP + 1,
                  qs.rss[WARMUP] >> 10, qs.mapped[WARMUP] >> 10, last + 1, qs.rss[last] >> 10,
                  qs.mapped[last] >> 10);
    for (int r = WARMUP + 1; r < rounds_run; r++) {
        if (qs.rss[r] > qs.rss[WARMUP] + RSS_MARGIN)
            fail_msg("RSS keeps growing: %zu KiB after round %d, %zu KiB after round %d "
                     "(margin %zu KiB)",
                     qs.rss[r] >> 10, r + 1, qs.rss[WARMUP] >> 10, WARMUP + 1, RSS_MARGIN >> 10);
    }
    assert_int_equal(rounds_run, ROUNDS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rss_steady),
    };
    return cmocka_run_group_tests_name("stress_prodcons (" TU_FLAVOUR ")", tests, NULL, NULL);
}
