/*
 * world.c -- the world stop: draining other threads' caches without
 * costing their fast path anything.
 *
 * The owner, on its fast path:              the trimmer (_heapmin, _heapwalk):
 *   tls.busy = 1      (plain store)           for every cache tc of a group:
 *   tc = tls.tc       (plain load)              tc->drain_pending = 1
 *   ...pop or push on tc's bins...              owner's tls.tc = &sentinel
 *                                                 (both under tc->mu)
 *   tls.busy = 0      (release store)         heavy barrier (ONE membarrier per group)
 *                                             for every cache tc of the group:
 *                                               lock tc->mu
 *                                               if tc->drain_pending:
 *                                                 wait until owner's busy == 0
 *                                                 empty every bin; pending = 0
 *                                               owner's tls.tc = tc
 *                                               unlock tc->mu
 *
 * Why it is safe: membarrier(PRIVATE_EXPEDITED) puts a full barrier on
 * every running thread of the process between the trimmer's store of the
 * sentinel into the owner's tls.tc and its loads of the owner's busy flag.
 * So either the owner's load of tls.tc came after that barrier -- it gets
 * the sentinel, whose bins are empty with capacity 0, and falls into the
 * slow path, which clears busy and waits for tc->mu -- or it came before
 * it, in which case its store busy = 1 did too, and the trimmer sees busy
 * == 1 and waits. An owner seen with busy == 0 has published its last
 * fast-path change (release store, acquire load). The owner never blocks
 * with busy = 1: its slow paths clear busy first, then take tc->mu and
 * arena locks; and the trimmer holds no arena lock while it waits for busy,
 * so there is no cycle. A thread preempted with busy = 1 is waited for with
 * a bounded spin-then-yield; one still busy past the bound (stopped in a
 * debugger, say) is skipped with drain_pending left set and tls.tc on the
 * sentinel: it drains its own cache on its next call.
 *
 * The trimmer only copies a cache's blocks out under tc->mu (drain_one) and
 * gives them to the arenas after dropping it, so an owner that calls in
 * meanwhile waits for a memcpy, not for the arena locks.
 *
 * Groups. The live caches are stopped a group at a time, one barrier per
 * group; a group ends after the cache that brings its blocks to
 * GROUP_BLOCKS, or after GROUP_CACHES caches. An owner sits on the sentinel
 * from its stop until its own drain, so behind fewer than GROUP_BLOCKS
 * blocks of the caches before it. With one group for every cache (as
 * before), a thread still working during _heapmin sat on the sentinel
 * while the idle workers' big caches went back, drained its own cache on
 * its first call, and refilled against the trimmer's arena locks: 9 to 14
 * sleeps in one malloc (spike_trim's prober; worst call, medians of 7-15
 * runs, 560-630 us before, 270-400 us after, glibc's malloc_trim 240-320
 * us in the same runs). A barrier costs about 0.25 ms here, so the bound on
 * caches per group keeps a process with a thousand idle threads at ~16
 * barriers (measured: mean _heapmin with 1000 threads 19.8 ms before,
 * 22.6 ms after).
 *
 * The fast path pays two plain stores (busy) and nothing else: it loads
 * tls.tc anyway. A slow-path owner that finds drain_pending set empties its
 * own cache under tc->mu and restores tls.tc (tcache_settle_locked), and the
 * trimmer then finds nothing to do. The trimmer's first two stores are made
 * under tc->mu too: otherwise an owner's slow path could read drain_pending
 * as 0 just before them and restore tls.tc just after, leaving the owner on
 * its fast path while the trimmer empties its bins. Without membarrier (old kernels,
 * seccomp), the barrier is an mprotect of a private page, whose TLB
 * shootdown interrupts every CPU running the process; if even that fails,
 * every cache is left to drain itself on its owner's next call. Under
 * ThreadSanitizer both halves use seq_cst accesses instead, a plain Dekker
 * handshake the tool can check.
 */
#include "internal.h"

/* How long a trimmer waits for owners preempted on their fast path (busy
 * set): one window for a whole drain, not one per owner. An owner still
 * busy at its end is skipped: it sits on the sentinel with drain_pending
 * set and drains its own cache on its next call. Until 2026-12-05 each
 * busy owner had a 50 ms window of its own, waited for one after another
 * under the registry lock: with 64 threads in malloc/free loops on 2 CPUs
 * (an outside tester's program), many are preempted with busy set, and
 * one _heapmin took 0.6-2 s, thread start-up and exit and
 * trimalloc_stats_get waiting as long. Now the owners found busy are set
 * aside and visited again, all of them, between yields, until none is
 * left or the window ends: in that program, mean _heapmin 622 -> 116 ms
 * with a 50 ms window, 55 ms with 10 ms; the longest thread start-up and
 * exit 2060 -> 80 ms. 10 ms: an owner preempted inside malloc is running
 * code, so its next call, which empties its cache, comes soon anyway;
 * waiting longer for it only makes every thread that needs the registry
 * lock wait too. */
#define SPIN_FIRST 100                    /* pauses before setting an owner aside */
#define WAIT_LIMIT_NS (10ull * 1000 * 1000) /* the window, per drain */
unsigned long world_wait_windows;          /* windows opened (tests) */
unsigned long world_busy_skipped;          /* owners given up at a window's end (tests) */

static bool owner_busy(tm_tls_t *t) {
    return __atomic_load_n(&t->busy, TM_TSAN ? __ATOMIC_SEQ_CST : __ATOMIC_ACQUIRE) != 0;
}

/* One step of a spin-wait: the CPU's hint where it has one (x86 PAUSE,
 * arm64 YIELD), else only a compiler barrier. Until 2026-12-07 PAUSE
 * unconditionally, which no other architecture's compiler knows (a
 * reviewer). */
static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

static bool owner_busy_spin(tm_tls_t *t, unsigned spins) {
    for (unsigned i = 0;; i++) {
        if (!owner_busy(t)) return false;
        if (i >= spins) return true;
        cpu_relax();
    }
}

/* The trimmer's buffer for one cache's blocks (tcache_take_locked), made
 * on first use and kept; its users hold the trim lock. Its pages go back
 * after each trim; take_faulted counts the slots faulted in since. */
static void **take_buf;
static size_t take_cap, take_faulted;

static bool take_buf_ready(void) {
    size_t need = tcache_slots_max();
    if (take_cap < need) {
        if (take_buf) meta_free(take_buf, take_cap * sizeof(void *));
        take_buf = meta_alloc(need * sizeof(void *));
        take_cap = take_buf ? need : 0;
    }
    take_faulted = 0;
    return take_buf != NULL;
}

/* Fault in the buffer's pages for its first `slots` slots, before a
 * cache's lock is taken, not during the copies its owner waits for. Only
 * as many as the caches of a group hold: until 2026-12-07 the whole buffer
 * (80 KiB) at every trim, 20 page faults and a madvise for a process whose
 * caches were empty (an outside tester, by strace). */
static void take_buf_fault(size_t slots) {
    const size_t per_page = TM_PAGE / sizeof(void *);
    if (slots > take_cap) slots = take_cap;
    for (size_t i = take_faulted; i < slots; i += per_page) __atomic_store_n(&take_buf[i], NULL, __ATOMIC_RELAXED);
    if (slots <= take_faulted) return;
    take_faulted = (slots + per_page - 1) / per_page * per_page;
    if (take_faulted > take_cap) take_faulted = take_cap;
}

/* Empty the owner's bins and unlock tc->mu; with a buffer, the blocks are
 * only copied out under tc->mu and given to the arenas after it is
 * dropped. Returns when tc->mu was dropped. */
static uint64_t drain_one(tm_tcache_t *tc, bool buffered) {
    /* Emptied here, not by its owner: out of the count tcache_total_mb is
     * shared by until its owner's next refill or overflow. Marked only
     * now, not when it was stopped: a cache whose owner stayed busy, or
     * that no barrier let us visit, still holds its blocks (until
     * 2026-12-06 such caches left the count too, and the others' shares
     * grew past the bound by what they held; an outside reviewer). */
    if (__atomic_load_n(&tc->drain_pending, __ATOMIC_RELAXED)) tcache_mark_drained_locked(tc);
    if (!buffered) {
        tcache_settle_locked(tc);
        tm_unlock(&tc->mu);
        return os_now_ns();
    }
    uint32_t counts[TM_NCLASSES + 1];
    void *remote[TM_RL_MAX];
    size_t n = 0;
    unsigned nremote = 0;
    if (__atomic_load_n(&tc->drain_pending, __ATOMIC_RELAXED)) {
        n = tcache_take_locked(tc, take_buf, counts);
        nremote = tcache_take_remote_locked(tc, remote);
        __atomic_store_n(&tc->drain_pending, 0, __ATOMIC_RELAXED);
    }
    tcache_settle_locked(tc); /* nothing pending: only restores tls.tc */
    tm_unlock(&tc->mu);
    uint64_t unlocked = os_now_ns();
    tcache_release_grown_slots(tc);
    void **at = take_buf;
    for (unsigned c = 1; n && c <= TM_NCLASSES; c++) {
        if (counts[c]) arena_flush(c, at, counts[c]);
        at += counts[c];
    }
    if (nremote) arena_free_large_batch(remote, nremote);
    return unlocked;
}

/* Stop groups: a group ends after the cache that brings its blocks to
 * GROUP_BLOCKS, or after GROUP_CACHES caches. */
#define GROUP_BLOCKS 1024
#define GROUP_CACHES 64

/* Point tc's owner at the sentinel; returns the blocks tc holds. */
static size_t stop_one(tm_tcache_t *tc) {
    /* Under tc->mu, so an owner's slow path cannot read drain_pending
     * before these stores and restore tls.tc after them. */
    tm_lock(&tc->mu);
    __atomic_store_n(&tc->drain_pending, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&tc->owner_tls->tc, &tm_tcache_sentinel,
                     TM_TSAN ? __ATOMIC_SEQ_CST : __ATOMIC_RELAXED);
    size_t n = tcache_blocks_locked(tc);
    tm_unlock(&tc->mu);
    return n;
}

/* Visit cache g of a stopped group: lock g->mu and drain it, unless its
 * owner is still on its fast path after `spins` pauses. True if done
 * (drained, or its owner drained it itself); *max_hold then covers the
 * time g->mu was held, and *drained counts it. */
static bool visit_one(tm_tcache_t *g, bool buffered, unsigned spins, uint64_t *max_hold,
                      unsigned *drained) {
    uint64_t t0 = os_now_ns(), t1;
    tm_lock(&g->mu);
    if (__atomic_load_n(&g->drain_pending, __ATOMIC_RELAXED) && owner_busy_spin(g->owner_tls, spins)) {
        tm_unlock(&g->mu);
        return false;
    }
    t1 = drain_one(g, buffered); /* unlocks g->mu */
    if (t1 - t0 > *max_hold) *max_hold = t1 - t0;
    (*drained)++;
    return true;
}

/* Stop and drain every live cache that pick() selects (every one without
 * pick), a group at a time. Caller holds the trim lock. Returns the
 * longest a drain held an owner's tc->mu; *drained counts the caches
 * emptied, by it or by their owners once stopped (until 2026-12-06 those
 * stopped, which the idle_drains statistic then counted again at every
 * window for caches no barrier let it visit; an outside reviewer). */
static uint64_t drain_where(bool (*pick)(tm_tcache_t *, uint64_t), uint64_t now, bool buffered,
                            unsigned *drained) {
    uint64_t max_hold = 0, deadline = 0;
    bool barrier_ok = true;
    tm_tcache_t *aside[GROUP_CACHES], *group[GROUP_CACHES];
    tcache_registry_lock();
    for (tm_tcache_t *tc = tcache_registry_first(); tc != NULL;) {
        size_t blocks = 0, most = 0;
        unsigned stopped = 0;
        for (unsigned n = 0; tc && n < GROUP_CACHES && blocks < GROUP_BLOCKS; n++, tc = tc->next)
            if (!pick || pick(tc, now)) {
                size_t k = stop_one(tc);
                blocks += k;
                most = k > most ? k : most;
                group[stopped++] = tc;
            }
        if (!stopped) continue; /* nothing to wait for: no barrier */
        /* an owner still on its fast path may push one block more */
        if (buffered && most) take_buf_fault(most + 1);
        if (barrier_ok) barrier_ok = os_heavy_barrier() == 0 || TM_TSAN;
        if (!barrier_ok) continue; /* the group's owners drain their own caches */
        unsigned naside = 0;
        for (unsigned i = 0; i < stopped; i++) {
            tm_tcache_t *g = group[i];
            /* Nothing pending any more: its owner, stopped, emptied it
             * itself at its next call (tcache_settle_locked), under tc->mu
             * -- emptied all the same. (Until 2026-12-06 such a cache was
             * not counted: on a quiet machine a thread in a steady loop
             * always got there before the barrier returned, and
             * idle_caches' steady-thread test saw no drain in 60 s.) The
             * registry lock, held, keeps it registered. */
            if (!__atomic_load_n(&g->drain_pending, __ATOMIC_RELAXED)) {
                (*drained)++;
                continue;
            }
            if (!visit_one(g, buffered, SPIN_FIRST, &max_hold, drained)) aside[naside++] = g;
        }
        /* the owners found busy, again and again, while the window lasts
         * (they stay in the registry: their exit needs the registry lock) */
        while (naside) {
            uint64_t t = os_now_ns();
            if (!deadline) {
                deadline = t + WAIT_LIMIT_NS;
                __atomic_fetch_add(&world_wait_windows, 1, __ATOMIC_RELAXED);
            }
            if (t > deadline) {
                __atomic_fetch_add(&world_busy_skipped, naside, __ATOMIC_RELAXED);
                break;
            }
            os_yield();
            unsigned left = 0;
            for (unsigned i = 0; i < naside; i++)
                if (!visit_one(aside[i], buffered, 0, &max_hold, drained)) aside[left++] = aside[i];
            naside = left;
        }
    }
    tcache_registry_unlock();
    return max_hold;
}

uint64_t world_drain_all_caches(void) {
    bool buffered = take_buf_ready();
    unsigned drained = 0;
    uint64_t max_hold = drain_where(NULL, 0, buffered, &drained);
    xfer_drain_all();
    /* the buffer is only ours (trim lock): its pages go back until next time */
    if (buffered && take_faulted) os_purge_inside(take_buf, take_buf + take_faulted); /* metadata: not counted */
    return max_hold;
}

/* ---- idle caches (background_thread:1) ------------------------------------
 * A thread that sleeps keeps the blocks in its cache, and with them their
 * slabs' pages, until it calls again, exits or someone calls _heapmin: the
 * decay cannot give back pages that hold cached blocks. With the background
 * thread on, every wake-up also looks at each live cache, under its tc->mu,
 * for a digest of its bins' tops: a cache that holds blocks and whose
 * digest has not changed for a whole window (dirty_decay_ms, at least 1 s;
 * never with -1) is stopped and drained as _heapmin drains it, and its
 * pages then decay with the arena's; the transfer caches get a garbage-
 * collection visit every half window too (those that did not move since
 * the last one go back). A thread that does nothing but
 * malloc/free pairs of the same sizes also keeps its digest and is drained
 * once a window: its next calls refill, a few microseconds once every ten
 * seconds at the default. Unbuffered (drain_one): the owner is idle, and a
 * scan that drains nothing touches no buffer and makes no barrier. The
 * trim lock is only tried: a _heapmin, _heapchk or _heapwalk under way
 * drains every cache anyway. */
static uint64_t idle_window_ns, idle_xfer_gc_ns;

/* The digest reflects how many blocks each bin holds (the tops point into
 * the cache's own slots), so a record is only trusted from scans that
 * followed each other: one the scans missed for half a window (scans
 * paused by dirty_decay_ms:-1 or background_thread:0, or a loaded
 * machine) starts again, and so does a cache made or reused for a new
 * thread (idle_seen 0, tcache.c). Until 2026-12-05 neither did, and an
 * outside tester saw caches drained 0.3-0.55 s after they last moved: a
 * pool's new worker, whose recycled cache came back to its predecessor's
 * counts, and a thread whose record predated a pause.
 *
 * An owner found on its fast path (busy set) is not idle, whatever its
 * digest says: it is running, or stopped there for longer than a window
 * (a signal handler that waits, a debugger). It is left alone until a scan
 * finds it off its fast path. Until 2026-12-07 such a cache was stopped,
 * and the scan waited the whole WAIT_LIMIT_NS window for its owner under
 * the registry lock, which every thread's start and exit need (a
 * reviewer; tests/unit/world_wait.c). */
static bool idle_pick(tm_tcache_t *tc, uint64_t now) {
    tm_lock(&tc->mu);
    uint32_t queued = __atomic_load_n(&tc->rl_n, __ATOMIC_RELAXED); /* the owner's lockless push */
    uint64_t sig = queued;
    for (unsigned c = 1; c <= TM_NCLASSES; c++)
        sig = sig * 0x9e3779b97f4a7c15ull +
              (uint64_t)(uintptr_t)__atomic_load_n(&tc->bins[c].top, __ATOMIC_RELAXED);
    bool holds = queued || tcache_blocks_locked(tc), pick = false;
    bool stale = !tc->idle_seen || now - tc->idle_seen > idle_window_ns / 2;
    tc->idle_seen = now;
    if (stale || sig != tc->idle_sig || !holds) {
        tc->idle_sig = sig;
        tc->idle_since = now;
    } else if (now - tc->idle_since >= idle_window_ns && !owner_busy(tc->owner_tls)) {
        pick = true;
        tc->idle_since = now;
    }
    tm_unlock(&tc->mu);
    return pick;
}

unsigned world_drain_idle_caches(uint64_t now) {
    long ms = __atomic_load_n(&tm_opt.dirty_decay_ms, __ATOMIC_RELAXED);
    if (ms < 0 || !heapmin_trylock()) return 0;
    idle_window_ns = (uint64_t)(ms < 1000 ? 1000 : ms) * 1000000ull;
    unsigned drained = 0;
    (void)drain_where(idle_pick, now, false, &drained);
    if (drained) __atomic_fetch_add(&tm_gstats.idle_drains, drained, __ATOMIC_RELAXED);
    if (now - idle_xfer_gc_ns >= idle_window_ns / 2) {
        idle_xfer_gc_ns = now;
        xfer_gc_all();
    }
    heapmin_unlock();
    return drained;
}
