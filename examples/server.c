/*
 * server.c -- a server-shaped program that calls _heapmin() after a burst.
 *
 * A pool of worker threads serves a burst of requests:
 *
 *   main ("acceptor")          worker i                       worker i+1 ("writer")
 *   -----------------          --------                       ---------------------
 *   malloc a request with  ->  parse it: header strings,
 *   a payload of mixed         a token table (small blocks);
 *   size (64 B .. 3 MiB),       build the response in a buffer
 *   queue it to worker i       grown with realloc; free the
 *                              request and the temporaries;
 *                              hand the response on        ->  check it, maybe keep a
 *                                                              copy in the response
 *                                                              cache, free it
 *
 * So blocks are freed by threads other than the ones that allocated them
 * (the request by its worker, the response by the next worker, queue
 * messages by their receiver), and sizes span small, large and huge
 * blocks. The whole burst is queued before it is served, as when a spike
 * of connections arrives, so the process's memory climbs.
 *
 * When every response has been written the workers go idle, blocked on
 * their queues, with their thread caches still full. The program then reads
 * its RSS, calls _heapmin(), and reads the RSS again. A real server would
 * do the same from a timer or when it notices that the load has dropped
 * (see docs/tuning.md). Only the small response cache stays live.
 *
 * It links against trimalloc (-ltrimalloc, or the CMake target) because it
 * calls _heapmin() and trimalloc_stats_get() directly. The RSS figures come
 * from /proc/self/statm.
 *
 * Usage: server [--workers N] [--requests N] [--check]
 *   --check: exit 1 unless the burst grew the RSS by at least 16 MiB and
 *            _heapmin() gave back at least half of that growth; ctest runs it
 *            this way. Without --check the exit status only reports data
 *            errors (a request or response whose bytes changed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <trimalloc.h>

#define MAX_WORKERS 64
#define CACHE_SLOTS 256 /* responses kept live after the burst */
#define KEEP_EVERY 16   /* one response in KEEP_EVERY is copied into the cache */
#define MIB (1024.0 * 1024.0)

/* ---- messages and queues ----------------------------------------------- */

enum msg_kind { MSG_REQUEST, MSG_RESPONSE };

typedef struct request {
    uint64_t id;
    size_t len;
    unsigned char *payload;
} request_t;

typedef struct response {
    uint64_t id;
    uint64_t checksum; /* of body[0..len) */
    size_t len;
    char *body;
} response_t;

typedef struct msg {
    struct msg *next;
    enum msg_kind kind;
    void *item; /* request_t * or response_t * */
} msg_t;

typedef struct worker {
    pthread_t thread;
    int index;
    pthread_mutex_t lock;
    pthread_cond_t ready;
    msg_t *head, *tail;
    int stop;
    uint64_t rng;
} worker_t;

static worker_t workers[MAX_WORKERS];
static int nworkers = 4;
static long nrequests = 10000;

static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond = PTHREAD_COND_INITIALIZER;
static long responses_written;
static long data_errors;

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static response_t *cache[CACHE_SLOTS];
static unsigned cache_next;

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "server: out of memory (%zu bytes)\n", n);
        exit(2);
    }
    return p;
}

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void send_msg(worker_t *w, enum msg_kind kind, void *item)
{
    msg_t *m = xmalloc(sizeof *m); /* freed by the receiver */
    m->next = NULL;
    m->kind = kind;
    m->item = item;
    pthread_mutex_lock(&w->lock);
    if (w->tail)
        w->tail->next = m;
    else
        w->head = m;
    w->tail = m;
    pthread_cond_signal(&w->ready);
    pthread_mutex_unlock(&w->lock);
}

/* ---- request handling ------------------------------------------------------- */

static unsigned char payload_byte(uint64_t id, size_t i)
{
    return (unsigned char)(id * 131 + i * 7 + (i >> 9));
}

static uint64_t fnv1a(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* Request payload sizes: mostly small, some medium, a few large and huge. */
static size_t payload_size(uint64_t *rng)
{
    uint64_t r = next_rand(rng);
    unsigned pick = (unsigned)(r % 1000);
    uint64_t x = r >> 20;
    if (pick < 600)
        return 64 + x % 960; /* 64 B .. 1 KiB */
    if (pick < 900)
        return 1024 + x % (7 * 1024); /* .. 8 KiB */
    if (pick < 990)
        return 8192 + x % (24 * 1024); /* .. 32 KiB */
    if (pick < 999)
        return 32768 + x % (224 * 1024); /* large: .. 256 KiB */
    return (2 << 20) + x % (1 << 20);    /* huge: 2 .. 3 MiB */
}

/* Append n bytes to a buffer grown with realloc, as response builders do. */
static void append(char **buf, size_t *len, size_t *cap, const void *src, size_t n)
{
    if (*len + n > *cap) {
        size_t ncap = *cap ? *cap : 256;
        while (ncap < *len + n)
            ncap *= 2;
        char *nb = realloc(*buf, ncap);
        if (!nb) {
            fprintf(stderr, "server: realloc(%zu) failed\n", ncap);
            exit(2);
        }
        *buf = nb;
        *cap = ncap;
    }
    memcpy(*buf + *len, src, n);
    *len += n;
}

/* Serve one request: returns the response; frees the request. */
static response_t *handle_request(worker_t *w, request_t *req)
{
    /* Check the payload the acceptor wrote. */
    for (size_t i = 0; i < req->len; i += 61)
        if (req->payload[i] != payload_byte(req->id, i)) {
            __atomic_add_fetch(&data_errors, 1, __ATOMIC_RELAXED);
            break;
        }

    /* "Parse": a table of header strings of assorted small sizes. */
    int nheaders = 8 + (int)(next_rand(&w->rng) % 24);
    char **headers = xmalloc((size_t)nheaders * sizeof *headers);
    for (int h = 0; h < nheaders; h++) {
        size_t n = 16 + next_rand(&w->rng) % 200;
        headers[h] = xmalloc(n);
        snprintf(headers[h], n, "X-Header-%d: request %llu, worker %d", h,
                 (unsigned long long)req->id, w->index);
    }

    /* Build the response: the headers, then the payload transformed. */
    char *body = NULL;
    size_t len = 0, cap = 0;
    for (int h = 0; h < nheaders; h++) {
        append(&body, &len, &cap, headers[h], strlen(headers[h]));
        append(&body, &len, &cap, "\r\n", 2);
    }
    for (size_t off = 0; off < req->len; off += 4096) {
        unsigned char chunk[4096];
        size_t n = req->len - off < sizeof chunk ? req->len - off : sizeof chunk;
        for (size_t i = 0; i < n; i++)
            chunk[i] = req->payload[off + i] ^ 0x5a;
        append(&body, &len, &cap, chunk, n);
    }

    response_t *resp = xmalloc(sizeof *resp);
    resp->id = req->id;
    resp->len = len;
    resp->body = body;
    resp->checksum = fnv1a(body, len);

    for (int h = 0; h < nheaders; h++)
        free(headers[h]);
    free(headers);
    free(req->payload); /* allocated by the acceptor thread */
    free(req);
    return resp;
}

/* "Write" a response built by another worker: check it, keep a copy of one
 * in KEEP_EVERY in the response cache, free it. */
static void write_response(response_t *resp)
{
    if (fnv1a(resp->body, resp->len) != resp->checksum)
        __atomic_add_fetch(&data_errors, 1, __ATOMIC_RELAXED);
    if (resp->id % KEEP_EVERY == 0) {
        response_t *copy = xmalloc(sizeof *copy);
        *copy = *resp;
        copy->body = xmalloc(resp->len);
        memcpy(copy->body, resp->body, resp->len);
        pthread_mutex_lock(&cache_lock);
        response_t *old = cache[cache_next];
        cache[cache_next] = copy;
        cache_next = (cache_next + 1) % CACHE_SLOTS;
        pthread_mutex_unlock(&cache_lock);
        if (old) { /* evicted: allocated by whichever worker cached it */
            free(old->body);
            free(old);
        }
    }
    free(resp->body); /* built by the previous worker */
    free(resp);
    pthread_mutex_lock(&done_lock);
    if (++responses_written == nrequests)
        pthread_cond_broadcast(&done_cond);
    pthread_mutex_unlock(&done_lock);
}

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    worker_t *writer = &workers[(w->index + 1) % nworkers];
    for (;;) {
        pthread_mutex_lock(&w->lock);
        while (!w->head && !w->stop)
            pthread_cond_wait(&w->ready, &w->lock); /* idle here after the burst */
        msg_t *m = w->head;
        if (m) {
            w->head = m->next;
            if (!w->head)
                w->tail = NULL;
        }
        pthread_mutex_unlock(&w->lock);
        if (!m)
            return NULL; /* stop, and nothing left */
        enum msg_kind kind = m->kind;
        void *item = m->item;
        free(m); /* allocated by the sender */
        if (kind == MSG_REQUEST)
            send_msg(writer, MSG_RESPONSE, handle_request(w, item));
        else
            write_response(item);
    }
}

/* ---- measurements ------------------------------------------------------------------ */

static size_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void print_row(const char *when, size_t rss)
{
    trimalloc_stats_t st;
    trimalloc_stats_get(&st);
    printf("%-28s %9.1f MiB %12.1f MiB %12.1f MiB %12.1f MiB\n", when, rss / MIB,
           st.allocated / MIB, st.tcache_bytes / MIB, st.resident / MIB);
}

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [--workers N] [--requests N] [--check]\n", argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    int check = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--check"))
            check = 1;
        else if (!strcmp(argv[i], "--workers") && i + 1 < argc)
            nworkers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--requests") && i + 1 < argc)
            nrequests = atol(argv[++i]);
        else
            usage(argv[0]);
    }
    if (nworkers < 1 || nworkers > MAX_WORKERS || nrequests < 1)
        usage(argv[0]);

    printf("server: %d workers, a burst of %ld requests\n", nworkers, nrequests);
    printf("%-28s %13s %16s %16s %16s\n", "", "RSS", "live (allocated)", "thread caches",
           "resident (stats)");
    size_t rss_start = rss_bytes();
    print_row("start", rss_start);

    for (int i = 0; i < nworkers; i++) {
        worker_t *w = &workers[i];
        w->index = i;
        w->rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->ready, NULL);
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            fprintf(stderr, "server: pthread_create failed\n");
            return 2;
        }
    }

    /* The burst: every request is built and queued before it is served. */
    uint64_t rng = 88172645463325252ull;
    request_t **burst = xmalloc((size_t)nrequests * sizeof *burst);
    for (long r = 0; r < nrequests; r++) {
        request_t *req = xmalloc(sizeof *req);
        req->id = (uint64_t)r;
        req->len = payload_size(&rng);
        req->payload = xmalloc(req->len);
        for (size_t i = 0; i < req->len; i++)
            req->payload[i] = payload_byte(req->id, i);
        burst[r] = req;
    }
    for (long r = 0; r < nrequests; r++)
        send_msg(&workers[r % nworkers], MSG_REQUEST, burst[r]);
    free(burst);

    pthread_mutex_lock(&done_lock);
    while (responses_written < nrequests)
        pthread_cond_wait(&done_cond, &done_lock);
    pthread_mutex_unlock(&done_lock);
    usleep(100 * 1000); /* let the last worker block on its queue */

    size_t rss_burst = rss_bytes();
    print_row("after the burst (idle)", rss_burst);

    double t0 = now_ms();
    int rc = _heapmin();
    double t1 = now_ms();
    size_t rss_trim = rss_bytes();
    print_row("after _heapmin()", rss_trim);
    printf("_heapmin() returned %d in %.2f ms; gave back %.1f MiB of RSS (%.0f%% of what the "
           "burst added)\n",
           rc, t1 - t0, ((double)rss_burst - (double)rss_trim) / MIB,
           rss_burst > rss_start
               ? 100.0 * ((double)rss_burst - (double)rss_trim) / (double)(rss_burst - rss_start)
               : 0.0);

    /* Shut down: stop the workers, empty the response cache. */
    for (int i = 0; i < nworkers; i++) {
        pthread_mutex_lock(&workers[i].lock);
        workers[i].stop = 1;
        pthread_cond_signal(&workers[i].ready);
        pthread_mutex_unlock(&workers[i].lock);
    }
    for (int i = 0; i < nworkers; i++)
        pthread_join(workers[i].thread, NULL);
    for (int i = 0; i < CACHE_SLOTS; i++)
        if (cache[i]) {
            if (fnv1a(cache[i]->body, cache[i]->len) != cache[i]->checksum)
                data_errors++;
            free(cache[i]->body);
            free(cache[i]);
        }

    int status = 0;
    if (data_errors) {
        printf("FAIL: %ld requests or responses had changed bytes\n", data_errors);
        status = 1;
    }
    if (rc != 0) {
        printf("FAIL: _heapmin() returned %d (errno %d)\n", rc, errno);
        status = 1;
    }
    if (check) {
        size_t grown = rss_burst > rss_start ? rss_burst - rss_start : 0;
        if (grown < (16u << 20)) {
            printf("FAIL (--check): the burst grew the RSS by only %.1f MiB; the example "
                   "measures nothing\n",
                   grown / MIB);
            status = 1;
        } else if (rss_trim > rss_burst - grown / 2) {
            printf("FAIL (--check): after _heapmin() the RSS is %.1f MiB, not below %.1f MiB "
                   "(half of the burst's growth given back)\n",
                   rss_trim / MIB, (rss_burst - grown / 2) / MIB);
            status = 1;
        } else {
            printf("check passed: RSS after _heapmin() is %.1f MiB, below %.1f MiB\n",
                   rss_trim / MIB, (rss_burst - grown / 2) / MIB);
        }
    }
    return status;
}
