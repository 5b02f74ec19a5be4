/*
 * mallctl.c -- the few jemalloc mallctl() names that steer an allocator, for
 * programs built against jemalloc that LD_PRELOAD hands to trimalloc.
 *
 * Debian links redis-server with libjemalloc.so.2. Under a preload its
 * malloc/free are ours, but it still asks "jemalloc" for a background
 * purging thread at start-up (jemalloc-bg-thread yes), purges it on MEMORY
 * PURGE, and reads its statistics for INFO. Without this file those calls
 * reached a jemalloc that holds nothing: after FLUSHALL our pages stayed
 * resident for good (measured: 111 MB after 500 000 SETs and FLUSHALL, and
 * still 111 MB 13 s later and after MEMORY PURGE; native jemalloc 17 MB).
 *
 * Names answered here (jemalloc's types and error codes):
 *   epoch                      uint64_t rw  statistics here are live; counts writes
 *   background_thread          bool rw      option background_thread
 *   arena.<i>.purge            --           _heapmin(), for any index i
 *   arena.<i>.decay            --           the same
 *   thread.tcache.flush        --           the caller's cache goes back to the arenas
 *   stats.allocated            size_t r     trimalloc_stats_t.allocated
 *   stats.active               size_t r     .active
 *   stats.resident             size_t r     .resident
 *   stats.mapped               size_t r     .mapped
 *   stats.metadata             size_t r     .metadata
 *   stats.retained             size_t r     mapped minus resident: given back, still mapped
 * Every other name goes to the next mallctl in the process (the program's
 * own jemalloc, which then describes its own, unused, state): a program
 * that asserts on names such as arenas.nbins keeps working as it did
 * before this file. With no other mallctl, ENOENT. The prefixed build
 * (tm_mallctl) never forwards. malloc_stats_print writes trimalloc's
 * report.
 */
#include "internal.h"

#include <dlfcn.h>
#include <stdbool.h>
#include <string.h>

typedef int (*mallctl_fn)(const char *, void *, size_t *, void *, size_t);

static uint64_t ctl_epoch = 1;

/* The mallctl after ours in the lookup order, kept once found; looked up
 * again while there is none, since a jemalloc may be dlopen'ed later.
 * (dlsym may allocate: it runs here, never during initialisation.) */
static mallctl_fn next_mallctl(void) {
#ifdef TRIMALLOC_PREFIX
    return NULL;
#else
    static mallctl_fn next;
    mallctl_fn f = __atomic_load_n(&next, __ATOMIC_ACQUIRE);
    if (!f) {
        f = (mallctl_fn)dlsym(RTLD_NEXT, "mallctl");
        if (f) __atomic_store_n(&next, f, __ATOMIC_RELEASE);
    }
    return f;
#endif
}

/* jemalloc's rules: a value read goes to *oldp only if *oldlenp is its size
 * (otherwise as many bytes as fit, and EINVAL); a value written must be
 * exactly its size (EINVAL). */
static int ctl_read(void *oldp, size_t *oldlenp, const void *v, size_t size) {
    if (!oldp || !oldlenp) return 0;
    if (*oldlenp != size) {
        memcpy(oldp, v, *oldlenp < size ? *oldlenp : size);
        return EINVAL;
    }
    memcpy(oldp, v, size);
    return 0;
}

static int ctl_stat(const char *what, void *oldp, size_t *oldlenp, void *newp) {
    if (newp) return EPERM;
    trimalloc_stats_t s;
    TM_API(trimalloc_stats_get)(&s);
    size_t v;
    if (!strcmp(what, "allocated")) v = s.allocated;
    else if (!strcmp(what, "active")) v = s.active;
    else if (!strcmp(what, "resident")) v = s.resident;
    else if (!strcmp(what, "mapped")) v = s.mapped;
    else if (!strcmp(what, "metadata")) v = s.metadata;
    else v = s.mapped > s.resident ? s.mapped - s.resident : 0; /* retained */
    return ctl_read(oldp, oldlenp, &v, sizeof v);
}

/* "arena.<decimal>.purge" or ".decay" */
static bool is_arena_purge(const char *name) {
    if (strncmp(name, "arena.", 6)) return false;
    const char *p = name + 6;
    size_t digits = 0;
    while (p[digits] >= '0' && p[digits] <= '9') digits++;
    if (digits == 0 || digits > 10) return false;
    return !strcmp(p + digits, ".purge") || !strcmp(p + digits, ".decay");
}

/* A name that reads or writes nothing: neither oldp/oldlenp nor newp. */
static int ctl_void(void *oldp, size_t *oldlenp, void *newp) {
    return oldp || oldlenp || newp ? EPERM : 0;
}

static int ctl_answer(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen,
                      bool *answered) {
    *answered = true;
    if (!strcmp(name, "epoch")) {
        if (newp) {
            if (newlen != sizeof(uint64_t)) return EINVAL;
            __atomic_add_fetch(&ctl_epoch, 1, __ATOMIC_RELAXED);
        }
        uint64_t e = __atomic_load_n(&ctl_epoch, __ATOMIC_RELAXED);
        return ctl_read(oldp, oldlenp, &e, sizeof e);
    }
    if (!strcmp(name, "background_thread")) {
        long cur = 0;
        TM_API(trimalloc_option_get)("background_thread", &cur);
        bool old = cur != 0;
        if (newp && newlen != sizeof(bool)) return EINVAL;
        int r = ctl_read(oldp, oldlenp, &old, sizeof old);
        if (r) return r;
        if (newp && TM_API(trimalloc_option_set)("background_thread", *(bool *)newp ? 1 : 0))
            return EFAULT;
        return 0;
    }
    if (is_arena_purge(name)) {
        int r = ctl_void(oldp, oldlenp, newp);
        if (r) return r;
        TM_API(_heapmin)(); /* -1 only where the kernel refused every release */
        return 0;
    }
    if (!strcmp(name, "thread.tcache.flush")) {
        int r = ctl_void(oldp, oldlenp, newp);
        if (r) return r;
        tcache_flush_own();
        return 0;
    }
    if (!strncmp(name, "stats.", 6)) {
        const char *what = name + 6;
        if (!strcmp(what, "allocated") || !strcmp(what, "active") || !strcmp(what, "resident") ||
            !strcmp(what, "mapped") || !strcmp(what, "metadata") || !strcmp(what, "retained"))
            return ctl_stat(what, oldp, oldlenp, newp);
    }
    *answered = false;
    return ENOENT;
}

TM_EXPORT int TM_API(mallctl)(const char *name, void *oldp, size_t *oldlenp, void *newp,
                              size_t newlen) {
    if (!name) return EINVAL;
    int saved = errno;
    tm_init();
    bool answered;
    int r = ctl_answer(name, oldp, oldlenp, newp, newlen, &answered);
    if (!answered) {
        mallctl_fn next = next_mallctl();
        r = next ? next(name, oldp, oldlenp, newp, newlen) : ENOENT;
    }
    errno = saved;
    return r;
}

/* jemalloc's report call, for the same programs (redis's MEMORY
 * MALLOC-STATS): trimalloc's report (trimalloc_stats_print's), in pieces
 * to write_cb, or to stderr without one. Of jemalloc's opts only 'J' (JSON)
 * means something here; the others leave out sections trimalloc's report
 * does not have. */
TM_EXPORT void TM_API(malloc_stats_print)(void (*write_cb)(void *, const char *), void *cbopaque,
                                          const char *opts) {
    int saved = errno;
    stats_sink_t o = {2, write_cb, cbopaque};
    stats_print_to(&o, opts && strchr(opts, 'J') != NULL);
    errno = saved;
}
