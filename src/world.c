/*
 * world.c -- the world stop: draining other threads' caches without
 * costing their fast path anything.
 *
 * The owner of a cache, on its fast path:      the trimmer:
 *   busy = 1            (plain store)            for every cache: drain_req = 1
 *   if (drain_req) -> slow path                  heavy barrier (one membarrier)
 *   ...pop or push a block...                    for every cache:
 *   busy = 0            (release store)            lock tc->mu
 *                                                  if drain_req still set:
 *                                                    wait until busy == 0
 *                                                    empty every bin
 *                                                    drain_req = 0
 *                                                  unlock tc->mu
 *
 * Why it is safe: membarrier(PRIVATE_EXPEDITED) puts a full barrier on
 * every running thread of the process between the trimmer's store of
 * drain_req and its loads of busy. So either the owner's load of drain_req
 * came after that barrier -- it sees 1 and takes the slow path, which
 * clears busy and waits for tc->mu -- or it came before it, in which case
 * its store busy = 1 did too, and the trimmer sees busy == 1 and waits.
 * An owner seen with busy == 0 has published its last fast-path change
 * (release store, acquire load). The owner never blocks with busy = 1: its
 * slow paths clear busy first, then take tc->mu and arena locks. The
 * trimmer holds no arena lock while it waits for busy, so there is no
 * cycle. A thread preempted with busy = 1 is waited for with a bounded
 * spin-then-yield; one that stays busy past the bound (stopped by a
 * debugger, say) is skipped with drain_req left set: it drains its own
 * cache on its next call.
 *
 * A slow-path owner that finds drain_req set empties its own cache under
 * tc->mu and clears the flag; the trimmer then finds nothing to do.
 * Without membarrier (old kernels, seccomp), the barrier is an mprotect
 * of a private page, whose TLB shootdown interrupts every CPU running the
 * process. Under ThreadSanitizer both halves use seq_cst accesses instead,
 * a plain Dekker handshake the tool can check.
 */
#include "internal.h"

#define SPIN_LIMIT 1000
#define WAIT_LIMIT_NS (50ull * 1000 * 1000)

static bool wait_not_busy(tm_tcache_t *tc) {
    uint64_t start = 0;
    for (unsigned i = 0;; i++) {
        if (!__atomic_load_n(&tc->busy, TM_TSAN ? __ATOMIC_SEQ_CST : __ATOMIC_ACQUIRE))
            return true;
        if (i < SPIN_LIMIT) {
            __builtin_ia32_pause();
            continue;
        }
        uint64_t now = os_now_ns();
        if (!start) start = now;
        else if (now - start > WAIT_LIMIT_NS) return false;
        os_yield();
    }
}

uint64_t world_drain_all_caches(void) {
    uint64_t max_hold = 0;
    tcache_registry_lock();
    for (tm_tcache_t *tc = tcache_registry_first(); tc; tc = tc->next)
        __atomic_store_n(&tc->drain_req, 1, TM_TSAN ? __ATOMIC_SEQ_CST : __ATOMIC_RELAXED);
    if (os_heavy_barrier() == 0 || TM_TSAN) {
        for (tm_tcache_t *tc = tcache_registry_first(); tc; tc = tc->next) {
            uint64_t t0 = os_now_ns();
            pthread_mutex_lock(&tc->mu);
            if (__atomic_load_n(&tc->drain_req, __ATOMIC_ACQUIRE) && wait_not_busy(tc)) {
                tcache_drain_locked(tc);
                __atomic_store_n(&tc->drain_req, 0, __ATOMIC_RELEASE);
            }
            pthread_mutex_unlock(&tc->mu);
            uint64_t hold = os_now_ns() - t0;
            if (hold > max_hold) max_hold = hold;
        }
    }
    /* else: no barrier is available; every cache keeps drain_req set and
     * empties itself on its owner's next allocator call. */
    tcache_registry_unlock();
    return max_hold;
}
