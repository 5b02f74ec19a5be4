/*
 * heapmin.c -- _heapmin() and glibc's malloc_trim(), one machinery:
 *   1. world stop: every thread cache (running, blocked, idle) is emptied
 *      into its arenas (world.c); exited threads emptied theirs at exit;
 *   2. each arena in turn: empty chunks are detached and unmapped, the free
 *      pages of the other chunks are madvised away, then the pages inside
 *      slabs that hold no live block, and the slab descriptors are packed
 *      so that the descriptor pages above them go back too -- the arena
 *      lock is held only while its lists change, never across the system
 *      calls;
 *   3. cached huge mappings are unmapped.
 * Concurrent calls are serialised by the trim lock (heapmin_lock), taken in
 * turn, which fork's prepare handler also takes.
 */
#include "internal.h"

/* The trim lock is taken in turn, first come first served: a ticket, and a
 * condition variable to wait for it. A plain mutex gives the lock back to
 * whoever gets there first, and a thread calling _heapmin back to back got
 * it again before a waiter woke: other threads' _heapmin calls waited 0.7-3
 * s, one from a key destructor 4.5 s, and fork() up to 1 s (an outside
 * tester, 2026-12-07; tests/unit/trim_lock.c). Now a waiter is behind at
 * most the callers that came before it. trim_mu guards the counters only,
 * for a few instructions; the wait is no cancellation point
 * (tests/unit/cancel.c). A trylock succeeds only if nobody holds the lock
 * or waits for it.
 *
 * A turn that is not taken for TURN_PASS_NS is passed over: its waiter is
 * not running (a signal handler keeps it, a stop-the-world collector that
 * suspends threads with signals, a debugger), and with turns alone every
 * later _heapmin, malloc_trim, _heapchk, _heapwalk, _heapset and fork()
 * waited until it ran again, where a plain mutex's waiter holds up nobody
 * (an outside tester's thread parked 3 s: every such call waited 3 s;
 * glibc's fork and malloc_trim 0-2 ms). The waiter passed over queues
 * again when it runs: a waiter that runs takes its turn as soon as it is
 * woken, and one the scheduler keeps from its CPU for more than 50 ms
 * only comes later than its turn. A holder that does not run holds up the
 * others, as under a mutex. */
#define TURN_PASS_NS (50ull * 1000 * 1000)
static pthread_mutex_t trim_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t trim_turn = PTHREAD_COND_INITIALIZER;
static unsigned long trim_next, trim_serving; /* tickets, under trim_mu */
static bool trim_taken;          /* the serving ticket's turn was taken (held) */
static uint64_t trim_turn_ns;    /* os_now_ns() when the serving ticket's turn came */
unsigned long heapmin_turns_passed; /* turns passed over (tests) */

/* The forking thread holds the trim lock already (fork_prepare): in a fork
 * handler, heapmin_lock and heapmin_unlock do nothing, and a trylock fails
 * (no trim then). */
void heapmin_lock(void) {
    if (tm_tls.forking) return;
    tm_lock(&trim_mu);
    unsigned long me = trim_next++;
    if (trim_serving != me) {
        int cancel;
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
        while (trim_serving != me) {
            if (trim_serving > me) { /* passed over while it did not run */
                me = trim_next++;
                continue;
            }
            struct timespec until = os_realtime_after_ms((long)(TURN_PASS_NS / 1000000));
            pthread_cond_timedwait(&trim_turn, &trim_mu, &until);
            uint64_t now = os_now_ns();
            if (trim_serving != me && !trim_taken && now - trim_turn_ns >= TURN_PASS_NS) {
                trim_serving++; /* its waiter did not come for it */
                trim_turn_ns = now;
                __atomic_fetch_add(&heapmin_turns_passed, 1, __ATOMIC_RELAXED);
                pthread_cond_broadcast(&trim_turn);
            }
        }
        pthread_setcancelstate(cancel, NULL);
    }
    trim_taken = true;
    tm_unlock(&trim_mu);
}

void heapmin_unlock(void) {
    if (tm_tls.forking) return;
    tm_lock(&trim_mu);
    trim_taken = false;
    bool waiters = ++trim_serving != trim_next;
    if (waiters) trim_turn_ns = os_now_ns();
    tm_unlock(&trim_mu);
    if (waiters) pthread_cond_broadcast(&trim_turn);
}

bool heapmin_trylock(void) {
    if (tm_tls.forking || tm_trylock(&trim_mu) != 0) return false;
    bool free_now = trim_serving == trim_next;
    if (free_now) {
        trim_next++;
        trim_taken = true;
    }
    tm_unlock(&trim_mu);
    return free_now;
}

/* Tickets taken and not yet served, but the holder's (tests) */
unsigned long heapmin_waiters(void) {
    tm_lock(&trim_mu);
    unsigned long n = trim_next - trim_serving - (trim_taken ? 1 : 0);
    tm_unlock(&trim_mu);
    return n;
}

/* the forking thread held it (fork_prepare); no other thread came along */
void heapmin_fork_child(void) {
    pthread_mutex_init(&trim_mu, NULL);
    pthread_cond_init(&trim_turn, NULL);
    trim_next = trim_serving = 0;
    trim_taken = false;
}

/* Returns bytes released; *failures counts release calls the OS refused.
 * Nothing from a fork handler (tm_tls.forking): the other threads wait on
 * locks the forking thread holds, and the world stop is not made for that;
 * the call releases nothing and succeeds. */
static size_t trim_all(unsigned *failures) {
    tm_init();
    if (tm_tls.forking) return 0;
    heapmin_lock();
    os_purge_vectors_on();
    uint64_t pause = world_drain_all_caches();
    size_t released = 0;
    for (unsigned i = 0; i < TM_MAX_ARENAS; i++) {
        tm_arena_t *a = __atomic_load_n(&tm_arenas[i], __ATOMIC_ACQUIRE);
        if (a) {
            released += arena_purge(a, true, failures);
            released += arena_purge_slab_pages(a, failures);
            arena_compact_slabs(a); /* descriptor pages: not counted as released */
        }
    }
    released += huge_release_cache(failures);
    tcache_release_recycled(); /* address space, not counted as released */
    os_purge_vectors_off();
    __atomic_add_fetch(&tm_gstats.heapmin_calls, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&tm_gstats.heapmin_bytes, released, __ATOMIC_RELAXED);
    /* atomic: statistics read them without the trim lock. The maximum
     * first, and the last with release (stats_fill reads it first, with
     * acquire), so a reader never sees last above max (until 2026-12-06
     * the other order left a window; an outside reviewer). */
    if (pause > tm_gstats.heapmin_max_pause_ns)
        __atomic_store_n(&tm_gstats.heapmin_max_pause_ns, pause, __ATOMIC_RELAXED);
    __atomic_store_n(&tm_gstats.heapmin_last_pause_ns, pause, __ATOMIC_RELEASE);
    heapmin_unlock();
    return released;
}

/* A mapping failed (address space exhausted, a ulimit -v): give back what
 * needs no world stop -- cached huge mappings and empty chunks -- so the
 * caller can retry once. Only if no trim is running (the walkers rely on
 * chunks staying mapped under the trim lock), and never waiting for it:
 * the caller may hold its cache's lock, which a trimmer takes. */
bool heapmin_release_for_retry(void) {
    if (!heapmin_trylock()) return false;
    size_t released = huge_release_cache(NULL);
    for (unsigned i = 0; i < TM_MAX_ARENAS; i++) {
        tm_arena_t *a = __atomic_load_n(&tm_arenas[i], __ATOMIC_ACQUIRE);
        if (a) released += arena_purge(a, false, NULL); /* the caller may be in a section */
    }
    heapmin_unlock();
    return released > 0;
}

TM_EXPORT int TM_API(_heapmin)(void) {
    int saved = errno;
    unsigned failures = 0;
    size_t released = trim_all(&failures);
    if (failures && !released) { /* the OS refused every release */
        errno = ENOSYS;
        return -1;
    }
    errno = saved;
    return 0;
}

/* glibc: returns 1 if any memory was released to the system, else 0. The
 * pad argument (bytes to leave at the top of the main heap) has no
 * equivalent here; trimalloc keeps no untrimmed top. */
TM_EXPORT int TM_API(malloc_trim)(size_t pad) {
    (void)pad;
    int saved = errno;
    unsigned failures = 0;
    size_t r = trim_all(&failures);
    errno = saved;
    return r > 0;
}
