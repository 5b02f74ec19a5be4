/*
 * background.c -- the optional background thread (background_thread:1).
 *
 * The decay (chunk.c) runs on the GC ticks of thread caches, that is on
 * slow-path calls; a program whose every malloc and free hits its cache
 * never ticks, and keeps its free pages however long they stay free. With
 * this option a thread of the allocator's own calls arena_decay_tick() every
 * dirty_decay_ms / 8 (10 ms to 1 s), so they go back whatever the program
 * does. It gives back all that is due at once (no malloc waits for it),
 * stopping between purges for a thread that waits for the arena to settle
 * (chunk.c), and while it runs the GC ticks leave the decay to it
 * (tcache.c). Off by default, as in jemalloc: a thread the program did not create
 * shows in its thread list and wakes up once a second.
 *
 * It is started by trimalloc's constructor when TRIMALLOC_CONF turns it on
 * (once the initialisation is over: pthread_create calls malloc), or by
 * trimalloc_option_set turning it on, with every signal blocked, detached,
 * and named "trimalloc-bg". It makes no allocation and has no thread cache.
 * Turned off at run time, it exits at its next wake-up, unless the option
 * is on again by then.
 *
 * Never from inside malloc or free: libc calls free with its own locks
 * held, and pthread_create takes some of them. Until 2026-12-06 the first
 * GC tick that found the option on started the thread, and a tick in the
 * free() that pthread_join makes of a dead thread's TLS block, with glibc's
 * stack-cache lock held, hung in pthread_create waiting for that lock, and
 * every thread that created or joined a thread after it (an outside
 * tester, toggling the option while threads were created and joined: 3
 * hangs in 3 runs; tests/unit/decay.c, test_no_thread_from_a_tick).
 *
 * A fork child has no background thread: only the forking thread survives
 * a fork. There the option reads 0, as jemalloc's does, and a child that
 * sets it to 1 gets a thread of its own; none is started for it (after a
 * fork of a multi-threaded process the child may call only async-signal-
 * safe functions until it execs, and pthread_create is not one:
 * ThreadSanitizer stops such a child). Its free pages decay on its own GC
 * ticks meanwhile. Until 2026-12-07 a child could never have one, yet the
 * option read 1 after a fork and trimalloc_option_set("background_thread",
 * 1) returned 0 there: a daemon that forked to run in the background, and
 * turned the thread on, had none, and kept 100 MB it had freed (an outside
 * tester).
 */
#include "internal.h"

#include <signal.h>
#include <time.h>

/* 0: none; 1: one is running (or being started). Set by the starter's CAS,
 * cleared by the thread as it exits, by a failed start, or in a fork
 * child. */
static int bg_running;

/* The sleep between two ticks for a given dirty_decay_ms: an eighth of it,
 * 10 ms to 1 s, and 1 s when the decay is off (-1). A whole second is
 * {1, 0}: {0, 10^9} is no valid timespec, nanosleep refused it at once, and
 * the thread spun on the decay tick at the default 10 s (before
 * 2026-12-05). */
struct timespec background_interval(long decay_ms) {
    long ms = decay_ms < 0 ? 1000 : decay_ms / 8;
    if (ms < 10) ms = 10;
    if (ms > 1000) ms = 1000;
    return (struct timespec){ms / 1000, (ms % 1000) * 1000000L};
}

static void *background_main(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "trimalloc-bg"); /* as ps, top and gdb show it */
    for (;;) {
        while (__atomic_load_n(&tm_opt.background_thread, __ATOMIC_SEQ_CST)) {
            struct timespec ts = background_interval(__atomic_load_n(&tm_opt.dirty_decay_ms, __ATOMIC_RELAXED));
            nanosleep(&ts, NULL);
            world_drain_idle_caches(os_now_ns());
            tcache_orphans_tick();
            arena_decay_tick(SIZE_MAX); /* no caller of malloc waits for it */
        }
        int expect = 1;
        __atomic_compare_exchange_n(&bg_running, &expect, 0, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
        /* Turned on again after the loop read it, by a setter that found
         * this thread still running and so started none (both sides store,
         * then load the other's variable, sequentially consistent: one of
         * them sees the other's store): carry on, unless a new one started */
        if (!__atomic_load_n(&tm_opt.background_thread, __ATOMIC_SEQ_CST)) return NULL;
        expect = 0;
        if (!__atomic_compare_exchange_n(&bg_running, &expect, 1, false, __ATOMIC_SEQ_CST,
                                         __ATOMIC_RELAXED))
            return NULL;
    }
}

/* Serialises background_set: a setter whose start fails turns the option
 * off again, and without it a second setter could be told 0 for an option
 * the first one then turned off (a reviewer). Taken by no allocation. */
static pthread_mutex_t bg_set_lock = PTHREAD_MUTEX_INITIALIZER;

/* Start the thread if the option is on and none runs. False if
 * pthread_create failed (errno is set). */
static bool background_start(void) {
    if (!__atomic_load_n(&tm_opt.background_thread, __ATOMIC_SEQ_CST)) return true;
    int expect = 0;
    if (__atomic_load_n(&bg_running, __ATOMIC_SEQ_CST) ||
        !__atomic_compare_exchange_n(&bg_running, &expect, 1, false, __ATOMIC_SEQ_CST,
                                     __ATOMIC_RELAXED))
        return true; /* one runs */
    pthread_attr_t attr;
    sigset_t all, old;
    pthread_t t;
    int rc = pthread_attr_init(&attr);
    if (rc == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        tm_fork_register(); /* before the process has a second thread (init.c) */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old); /* the new thread inherits it */
        rc = pthread_create(&t, &attr, background_main, NULL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
    }
    if (rc != 0) {
        __atomic_store_n(&bg_running, 0, __ATOMIC_SEQ_CST);
        errno = rc;
        return false;
    }
    return true;
}

/* Set the option to value (value < 0: leave it, start the thread if it is
 * on: the constructor, for TRIMALLOC_CONF), and start the thread if it is
 * now on and none runs; if it cannot be, the option goes back to 0 and
 * this returns false with pthread_create's errno. Called only where the
 * caller holds no lock, of ours or of libc's: trimalloc's constructor and
 * trimalloc_option_set, never malloc or free. */
bool background_set(long value) {
    int saved_errno = errno; /* unchanged on success (options.md) */
    pthread_mutex_lock(&bg_set_lock);
    if (value >= 0) __atomic_store_n(&tm_opt.background_thread, value, __ATOMIC_SEQ_CST);
    bool ok = background_start();
    int e = ok ? saved_errno : errno;
    if (!ok) __atomic_store_n(&tm_opt.background_thread, 0, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&bg_set_lock);
    errno = e;
    return ok;
}

void background_fork_child(void) {
    bg_running = 0; /* the parent's did not come along */
    __atomic_store_n(&tm_opt.background_thread, 0, __ATOMIC_SEQ_CST);
    pthread_mutex_init(&bg_set_lock, NULL); /* a setter in another thread held it */
}

/* The thread runs and the option is on: turned off, the thread exits at
 * its next wake-up (up to a second later), and the GC ticks decay again at
 * once rather than leave it to a thread that is on its way out. */
bool background_running(void) {
    return __atomic_load_n(&bg_running, __ATOMIC_RELAXED) == 1 &&
           __atomic_load_n(&tm_opt.background_thread, __ATOMIC_RELAXED);
}
