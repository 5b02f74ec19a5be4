/*
 * init.c -- start-up and fork.
 *
 * Initialisation runs on the first slow-path call (or from the library
 * constructor, whichever comes first). It must not allocate before the
 * state malloc needs is ready: options (getenv), size classes, the arena
 * count, the cookie key, the transfer caches and the thread-cache key
 * (pthread_key_create, which does not allocate) come first, then
 * tm_initialized is set, and only then are the calls made that may allocate
 * (pthread_atfork, atexit); if they do, they re-enter malloc on an
 * initialised allocator. A thread that re-enters tm_init_slow while it is
 * initialising returns at once.
 *
 * Fork: the prepare handler takes every allocator lock in rank order (trim,
 * cache registry, each cache, arenas, huge, pagemap, metadata), so no other
 * thread is inside the allocator's locked state when the address space is
 * copied; the child re-initialises the locks and drains the caches of the
 * threads that do not exist in it.
 *
 * The handlers are registered at start-up, as soon as tm_initialized is
 * set: glibc runs prepare handlers in the reverse order of their
 * registration and parent/child handlers in that order, so registered
 * first, ours take the allocator's locks after every handler the program
 * and its libraries register later, and release them before theirs run:
 * those may allocate. Until 2026-12-05 they were registered only once the
 * process had a second thread (pthread_atfork faults in 128 KiB of libc a
 * single-threaded program never touches otherwise: a program that makes
 * no allocation of its own was resident 1284 KiB with it, 1156 without,
 * 1140 with glibc's malloc). A program that registered a handler which
 * allocates and then started a thread got ours after it, so its prepare
 * handler ran with every allocator lock held and its fork hung, as did a
 * child whose handler allocated; and where the first allocator lock after
 * the second thread came from inside another library's prepare handler,
 * glibc skipped the handlers registered during that fork
 * (tests/unit/fork_handlers.c has both). tm_lock still registers them if
 * they are not yet (a fork child of a registration in progress).
 *
 * Handlers registered before ours (by a library whose constructor runs
 * before ours: every library a preload does not depend on) run their
 * prepare after ours and their parent and child handlers before ours,
 * while this thread holds every allocator lock. Until 2026-12-07 an
 * allocation there waited for a lock the same thread held: fork() hung (an
 * outside tester; tests/fork/early.c). Now the forking thread is marked
 * (tm_tls.forking) from the end of our prepare to the start of our parent
 * or child handler, and its lock calls take nothing (internal.h): no other
 * thread can be inside the allocator then. The parent handler releases
 * only the locks the prepare handler took (fork_held), not those of a
 * cache, arena or transfer-cache set made meanwhile; _heapmin releases
 * nothing there. A fork from inside another library's parent or child
 * handler in that window is not handled (it waits for a cache lock the
 * outer fork holds), nor is a thread in getline while another calls
 * fflush(NULL) and a third forks (fork_prepare says why).
 *
 * While the process has one thread and our constructor has not run, the
 * registration waits for the constructor (tm_fork_register): the first
 * allocation may come from inside pthread_atfork, whose lock it would
 * wait for; the exit handler (stats_print) is registered by the
 * constructor for the same reason (atexit). With one thread no fork can
 * find another thread inside the allocator.
 * Left out on purpose: a thread's fast path takes no lock, so a thread
 * that never allocated before it forks while another's fast path runs gets
 * a child that keeps that other cache (leaked in the child, skipped by
 * _heapmin there if its busy flag was set: world.c); nothing is lost or
 * locked.
 */
#include "internal.h"

volatile int tm_initialized;
/* 0: the handlers are not registered; 2: they are; odd: a thread of the
 * process (tm_fork_ready >> 2) is registering them */
volatile int tm_fork_ready;
static __thread bool fork_registering __attribute__((tls_model("initial-exec")));
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_t init_owner;
static volatile int init_running;
static volatile int ctor_ran; /* tm_constructor has run: the handlers may be registered */

void pagemap_fork_prepare(void);
void pagemap_fork_parent(void);
void pagemap_fork_child(void);

/* Not taken here: glibc's lock of its list of open FILEs, which glibc's
 * fork takes after every prepare handler and before its own malloc's
 * locks (a thread can hold a FILE's lock and allocate, in getline, while
 * another holds the list and waits for that FILE, in fflush(NULL)). Taken
 * first here it fixed that case (an outside tester's three threads, one
 * forking, hung at the first few forks) but put the list lock before every
 * prepare handler registered ahead of ours: one that takes its library's
 * mutex, held by a thread that calls fflush(NULL) or fopen under it, then
 * hung every fork (a reviewer, 2026-12-07). The first is a limit jemalloc
 * and tcmalloc share; the second is the way pthread_atfork is meant to be
 * used. Left out on purpose (design.md, "Start-up and fork").
 *
 * From our prepare handler to our parent or child handler, cancellation is
 * off: the prepare handlers registered before ours run after it, and the
 * parent and child handlers registered before ours run before it, while
 * this thread holds every allocator lock; one of them that reaches a
 * cancellation point (a usleep, a pthread_cond_wait) with a cancellation
 * pending unwound the thread out of fork() with all of them held, and the
 * process's next fork, _heapmin or arena refill waited for good (an
 * outside tester, 2026-12-07; tests/fork/early.c). A pending cancellation
 * acts at the next cancellation point after fork() returns. */
static void fork_prepare(void) {
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &tm_tls.fork_cancel);
    heapmin_lock();
    tcache_registry_lock();
    for (tm_tcache_t *tc = tcache_registry_first(); tc; tc = tc->next) {
        pthread_mutex_lock(&tc->mu);
        tc->fork_held = true;
    }
    xfer_fork_prepare();
    arena_fork_prepare();
    huge_fork_prepare();
    pagemap_fork_prepare();
    meta_fork_prepare();
    tm_tls.forking = 1; /* until fork_parent or fork_child: every lock is ours */
}

static void fork_parent(void) {
    tm_tls.forking = 0;
    meta_fork_parent();
    pagemap_fork_parent();
    huge_fork_parent();
    arena_fork_parent();
    xfer_fork_parent();
    for (tm_tcache_t *tc = tcache_registry_first(); tc; tc = tc->next)
        if (tc->fork_held) { /* not one made during the fork */
            tc->fork_held = false;
            pthread_mutex_unlock(&tc->mu);
        }
    tcache_registry_unlock();
    heapmin_unlock();
    pthread_setcancelstate(tm_tls.fork_cancel, NULL);
}

static void fork_child(void) {
    tm_tls.forking = 0;
    __atomic_store_n(&tm_fork_ready, 2, __ATOMIC_RELAXED); /* they ran: they are registered */
    meta_fork_child();
    pagemap_fork_child();
    huge_fork_child();
    arena_fork_child();
    xfer_fork_child();
    tcache_fork_child();
    heapmin_fork_child();
    background_fork_child();
    pthread_setcancelstate(tm_tls.fork_cancel, NULL);
}

void tm_init_slow(void) {
    if (init_running && pthread_equal(init_owner, pthread_self())) return;
    pthread_mutex_lock(&init_lock);
    if (!tm_initialized) {
        init_owner = pthread_self();
        init_running = 1;
        options_init();
        if (tm_opt.junk || tm_opt.zero) tm_opt.tcache_scale_pct = 0; /* fills run on slow paths */
        size_class_init();
        unsigned n = (unsigned)tm_opt.narenas;
        if (n == 0) n = 2 * os_ncpus();
        if (n > TM_MAX_ARENAS) n = TM_MAX_ARENAS;
        if (n == 0) n = 1;
        tm_narenas = n;
        tcache_init();
        if (tm_opt.verbose) options_print_verbose(); /* cold code, called only then */
        __atomic_store_n(&tm_initialized, 1, __ATOMIC_RELEASE);
        tm_fork_register();
        init_running = 0;
    }
    pthread_mutex_unlock(&init_lock);
}

/* Register the fork handlers now, whether or not another thread exists
 * (tm_fork_check calls it when one does). Called with no allocator lock
 * held: pthread_atfork may allocate, which re-enters here and returns. One
 * thread registers; any other waits until it has. A fork child whose
 * parent forked in the middle of a registration has the handlers if the
 * fork came after them (fork_child then set 2), and otherwise registers
 * again itself. */
void tm_fork_register(void) {
    if (!tm_initialized) return; /* tm_init_slow registers once initialised */
    /* One thread, before our constructor: maybe inside pthread_atfork (the
     * allocation that grows glibc's handler list), whose lock the
     * registration would wait for -- a start-up that hung, with a library
     * constructor registering 49 handlers (an outside tester, 2026-12-07).
     * With one thread no fork can catch another inside the allocator;
     * tm_constructor registers them. */
    if (!__atomic_load_n(&ctor_ran, __ATOMIC_ACQUIRE) && tm_one_thread()) return;
    for (;;) {
        int s = __atomic_load_n(&tm_fork_ready, __ATOMIC_ACQUIRE);
        if (s == 2) return;
        if (s == 0) {
            int mine = (int)(os_getpid() << 2) | 1; /* pids are below 2^22 */
            if (!__atomic_compare_exchange_n(&tm_fork_ready, &s, mine, false, __ATOMIC_ACQ_REL,
                                             __ATOMIC_ACQUIRE))
                continue;
            fork_registering = true;
            pthread_atfork(fork_prepare, fork_parent, fork_child);
            fork_registering = false;
            __atomic_store_n(&tm_fork_ready, 2, __ATOMIC_RELEASE);
            return;
        }
        if (fork_registering) return; /* pthread_atfork allocating */
        if (s >> 2 != (int)os_getpid()) { /* a child: its parent's registration had not begun */
            __atomic_compare_exchange_n(&tm_fork_ready, &s, 0, false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED);
            continue;
        }
        os_yield();
    }
}

__attribute__((constructor(101))) static void tm_constructor(void) {
    int saved_errno = errno; /* 0 at program start, as C requires */
    tm_init();
    __atomic_store_n(&ctor_ran, 1, __ATOMIC_RELEASE);
    tm_fork_register(); /* if the initialisation put it off */
    /* Here, not in the initialisation: the first allocation may come from
     * inside atexit (glibc's 33rd exit handler needs a block, made under
     * its exit-handler lock), and an atexit there waited for that lock for
     * good -- a start-up that hung (an outside tester, 2026-12-07). */
    atexit(stats_print_at_exit); /* prints if stats_print is set by then */
    /* background_thread:1 from TRIMALLOC_CONF: started here, once the
     * initialisation is over, and never from a malloc or free (background.c) */
    if (__atomic_load_n(&tm_opt.background_thread, __ATOMIC_RELAXED) && !background_set(-1))
        tm_warn("background_thread: ", "the thread could not be created; the option is off");
    errno = saved_errno;
#ifndef TRIMALLOC_PREFIX
    tm_cxx_init(); /* which C++ operators serve: alloc.c */
#endif
}
