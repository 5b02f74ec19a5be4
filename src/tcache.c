/*
 * tcache.c -- thread caches: creation, refill and flush (the slow paths
 * behind malloc/free), and the drain at thread exit.
 *
 * Every thread starts on tm_tcache_sentinel, a static cache whose
 * drain_req is permanently set, so the fast path never asks "initialised?":
 * the first call just misses and lands here, where the real cache is made.
 * After the thread's cache has been drained by its pthread key destructor,
 * the thread goes back to the sentinel in the DEAD state, and later calls
 * (other libraries' TLS destructors) go straight to the arenas.
 *
 * Owner and lock: a cache's bins are touched by its owner on the fast path
 * with busy = 1 and no lock; on slow paths by its owner holding tc->mu; and
 * by a trimmer (world.c) holding tc->mu after the busy/drain_req handshake.
 * The registry of live caches is guarded by registry_lock.
 */
#include "internal.h"

__thread tm_tcache_t *tm_tls_tc __attribute__((tls_model("initial-exec"))) =
    &tm_tcache_sentinel;
tm_tcache_t tm_tcache_sentinel = {.busy = 0, .drain_req = 1, .state = TC_STATE_SENTINEL};
uint64_t tm_cookie_key;

enum { TLS_NONE = 0, TLS_BOOTING, TLS_LIVE, TLS_DEAD };
static __thread int tls_state __attribute__((tls_model("initial-exec")));

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static tm_tcache_t *registry;      /* live caches */
static tm_tcache_t *recycled;      /* caches of exited threads, for reuse */
static unsigned registry_count;
static pthread_key_t tc_key;
static bool tc_key_ok;

void tcache_registry_lock(void) { pthread_mutex_lock(&registry_lock); }
void tcache_registry_unlock(void) { pthread_mutex_unlock(&registry_lock); }
tm_tcache_t *tcache_registry_first(void) { return registry; }
unsigned tcache_count(void) { return __atomic_load_n(&registry_count, __ATOMIC_RELAXED); }

static uint32_t bin_cap(unsigned cls) {
    uint64_t cap = (uint64_t)tm_classes[cls].tc_cap * (uint64_t)tm_opt.tcache_scale_pct / 100;
    return cap > 65535 ? 65535 : (uint32_t)cap;
}

/* Empty every bin into the arenas. Caller holds tc->mu (or is the only
 * thread, in a fork child) and the owner is not on its fast path. */
void tcache_drain_locked(tm_tcache_t *tc) {
    for (unsigned c = 1; c <= TM_NCLASSES; c++) {
        tm_tc_bin_t *b = &tc->bins[c];
        if (b->count) {
            arena_flush(c, b->slots, b->count);
            b->count = 0;
        }
    }
}

static void tcache_destructor(void *arg) {
    tm_tcache_t *tc = arg;
    if (!tc || tc == &tm_tcache_sentinel) return;
    tm_tls_tc = &tm_tcache_sentinel;
    tls_state = TLS_DEAD;
    pthread_mutex_lock(&tc->mu);
    tcache_drain_locked(tc);
    __atomic_store_n(&tc->drain_req, 0, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&tc->mu);
    pthread_mutex_lock(&registry_lock);
    if (tc->prev) tc->prev->next = tc->next;
    else registry = tc->next;
    if (tc->next) tc->next->prev = tc->prev;
    registry_count--;
    tc->state = TC_STATE_FREE;
    tc->arena->nthreads--;
    tc->next = recycled;
    recycled = tc;
    pthread_mutex_unlock(&registry_lock);
}

void tcache_init(void) {
    tc_key_ok = pthread_key_create(&tc_key, tcache_destructor) == 0;
    os_random(&tm_cookie_key, sizeof tm_cookie_key);
    tm_cookie_key |= 1; /* never zero: a zeroed block must not look free */
}

static tm_tcache_t *tcache_create(void) {
    tls_state = TLS_BOOTING;
    pthread_mutex_lock(&registry_lock);
    tm_tcache_t *tc = recycled;
    if (tc) recycled = tc->next;
    pthread_mutex_unlock(&registry_lock);
    size_t nslots = 0;
    for (unsigned c = 1; c <= TM_NCLASSES; c++) nslots += bin_cap(c);
    size_t slots_size = nslots * sizeof(void *);
    if (tc && tc->slots_size < slots_size) { /* option changed: resize */
        meta_free(tc->slots_mem, tc->slots_size);
        tc->slots_mem = NULL;
    }
    if (!tc) {
        tc = meta_alloc(sizeof *tc);
        if (!tc) { tls_state = TLS_NONE; return NULL; }
    }
    if (!tc->slots_mem) {
        tc->slots_mem = meta_alloc(slots_size);
        tc->slots_size = slots_size;
        if (!tc->slots_mem) {
            meta_free(tc, sizeof *tc);
            tls_state = TLS_NONE;
            return NULL;
        }
    }
    void **slot = tc->slots_mem;
    tc->bins[0] = (tm_tc_bin_t){0};
    for (unsigned c = 1; c <= TM_NCLASSES; c++) {
        tc->bins[c].count = 0;
        tc->bins[c].cap = bin_cap(c);
        tc->bins[c].slots = slot;
        slot += tc->bins[c].cap;
    }
    tc->key = tm_cookie_key;
    tc->busy = 0;
    tc->drain_req = 0;
    pthread_mutex_init(&tc->mu, NULL);
    tc->arena = arena_choose();
    if (!tc->arena) { tls_state = TLS_NONE; return NULL; }
    tc->thread = pthread_self();
    pthread_mutex_lock(&registry_lock);
    tc->arena->nthreads++;
    tc->state = TC_STATE_LIVE;
    tc->prev = NULL;
    tc->next = registry;
    if (registry) registry->prev = tc;
    registry = tc;
    registry_count++;
    pthread_mutex_unlock(&registry_lock);
    /* May allocate (keys past the first 32): we are BOOTING, so that
     * allocation goes straight to an arena. */
    if (tc_key_ok) pthread_setspecific(tc_key, tc);
    tm_tls_tc = tc;
    tls_state = TLS_LIVE;
    return tc;
}

/* The arena a thread without a cache uses. */
static tm_arena_t *uncached_arena(void) {
    tm_tcache_t *tc = tm_tls_tc;
    if (tc != &tm_tcache_sentinel) return tc->arena;
    return arena_get(0);
}

tm_arena_t *tcache_arena(void) {
    tm_tcache_t *tc = tm_tls_tc;
    if (tc == &tm_tcache_sentinel && tls_state == TLS_NONE) {
        tm_init();
        tc = tcache_create();
        if (!tc) return arena_get(0);
    }
    return uncached_arena();
}

/* The caller's cache, made if needed; NULL if the thread runs uncached. */
static tm_tcache_t *tcache_get_slow(tm_tcache_t *tc) {
    if (tc != &tm_tcache_sentinel) return tc;
    tm_init();
    if (tls_state == TLS_NONE) return tcache_create();
    return NULL;
}

/* A trimmer asked for this cache: empty it ourselves. Holds tc->mu. */
static void tcache_self_drain_locked(tm_tcache_t *tc) {
    if (__atomic_load_n(&tc->drain_req, __ATOMIC_ACQUIRE)) {
        tcache_drain_locked(tc);
        __atomic_store_n(&tc->drain_req, 0, __ATOMIC_RELEASE);
    }
}

void *tcache_malloc_slow(tm_tcache_t *tc, size_t size, unsigned cls) {
    (void)size;
    __atomic_store_n(&tc->busy, 0, __ATOMIC_RELEASE);
    tc = tcache_get_slow(tc);
    void *p = NULL;
    if (!tc) {
        arena_refill(uncached_arena(), cls, &p, 1);
    } else {
        pthread_mutex_lock(&tc->mu);
        tcache_self_drain_locked(tc);
        tm_tc_bin_t *b = &tc->bins[cls];
        if (b->cap == 0) /* caching off (tcache_scale:0, junk, zero) */
            arena_refill(tc->arena, cls, &p, 1);
        else {
            if (b->count == 0) b->count = arena_refill(tc->arena, cls, b->slots, b->cap / 2 ? b->cap / 2 : 1);
            if (b->count) p = b->slots[--b->count];
        }
        pthread_mutex_unlock(&tc->mu);
    }
    if (p) {
        *(uint64_t *)p = 0;
        if (unlikely(tm_opt.junk | tm_opt.zero))
            memset(p, tm_opt.zero ? 0 : 0xa5, tm_classes[cls].size);
    }
    return p;
}

void tcache_free_slow(tm_tcache_t *tc, void *p, unsigned cls) {
    __atomic_store_n(&tc->busy, 0, __ATOMIC_RELEASE);
    if (unlikely(tm_opt.junk)) memset(p, 0x5a, tm_classes[cls].size);
    tc = tcache_get_slow(tc);
    if (!tc) {
        arena_flush(cls, &p, 1);
        return;
    }
    pthread_mutex_lock(&tc->mu);
    tcache_self_drain_locked(tc);
    tm_tc_bin_t *b = &tc->bins[cls];
    if (b->count >= b->cap) {
        /* Flush the older half (the bottom of the stack). */
        uint32_t n = b->cap / 2 ? b->cap / 2 : b->count;
        arena_flush(cls, b->slots, n);
        memmove(b->slots, b->slots + n, (b->count - n) * sizeof(void *));
        b->count -= n;
    }
    if (b->cap) {
        *(uint64_t *)p = (uintptr_t)p ^ tm_cookie_key;
        b->slots[b->count++] = p;
    } else {
        arena_flush(cls, &p, 1);
    }
    pthread_mutex_unlock(&tc->mu);
}

size_t tcache_cached_bytes(void) {
    size_t bytes = 0;
    pthread_mutex_lock(&registry_lock);
    for (tm_tcache_t *tc = registry; tc; tc = tc->next)
        for (unsigned c = 1; c <= TM_NCLASSES; c++)
            bytes += (size_t)__atomic_load_n(&tc->bins[c].count, __ATOMIC_RELAXED) *
                     tm_classes[c].size;
    pthread_mutex_unlock(&registry_lock);
    return bytes;
}

/* In a fork child only the forking thread survives. Its registry and every
 * cache lock were held across fork (init.c); the other threads' caches are
 * drained into the arenas so their blocks are not lost, then recycled. */
void tcache_fork_child(void) {
    pthread_mutex_init(&registry_lock, NULL);
    tm_tcache_t *self = tm_tls_tc;
    for (tm_tcache_t *tc = registry, *next; tc; tc = next) {
        next = tc->next;
        pthread_mutex_init(&tc->mu, NULL);
        if (tc == self) continue;
        tcache_drain_locked(tc);
        if (tc->prev) tc->prev->next = tc->next;
        else registry = tc->next;
        if (tc->next) tc->next->prev = tc->prev;
        registry_count--;
        tc->arena->nthreads--;
        tc->state = TC_STATE_FREE;
        tc->busy = 0;
        tc->drain_req = 0;
        tc->next = recycled;
        recycled = tc;
    }
}
