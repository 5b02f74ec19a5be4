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
 */
#include "internal.h"

volatile int tm_initialized;
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_t init_owner;
static volatile int init_running;

void pagemap_fork_prepare(void);
void pagemap_fork_parent(void);
void pagemap_fork_child(void);

static void fork_prepare(void) {
    heapmin_lock();
    tcache_registry_lock();
    for (tm_tcache_t *tc = tcache_registry_first(); tc; tc = tc->next)
        pthread_mutex_lock(&tc->mu);
    xfer_fork_prepare();
    arena_fork_prepare();
    huge_fork_prepare();
    pagemap_fork_prepare();
    meta_fork_prepare();
}

static void fork_parent(void) {
    meta_fork_parent();
    pagemap_fork_parent();
    huge_fork_parent();
    arena_fork_parent();
    xfer_fork_parent();
    for (tm_tcache_t *tc = tcache_registry_first(); tc; tc = tc->next)
        pthread_mutex_unlock(&tc->mu);
    tcache_registry_unlock();
    heapmin_unlock();
}

static void fork_child(void) {
    meta_fork_child();
    pagemap_fork_child();
    huge_fork_child();
    arena_fork_child();
    xfer_fork_child();
    tcache_fork_child();
    heapmin_fork_child();
    background_fork_child();
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
        __atomic_store_n(&tm_initialized, 1, __ATOMIC_RELEASE);
        pthread_atfork(fork_prepare, fork_parent, fork_child);
        atexit(stats_print_at_exit); /* prints if stats_print is set by then */
        init_running = 0;
    }
    pthread_mutex_unlock(&init_lock);
}

__attribute__((constructor(101))) static void tm_constructor(void) { tm_init(); }
