/*
 * next_mallctl.c -- a stand-in for a jemalloc that a program links after
 * trimalloc (as Debian's redis-server links libjemalloc.so.2): a mallctl of
 * its own, for api_mallctl_next (tests/api/mallctl.c). It answers two
 * names trimalloc leaves to the next mallctl, and would give itself away on
 * the names trimalloc answers.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>

#define NEXT_BOGUS ((size_t)0xdeadbeef)

int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen)
{
    (void)newp;
    (void)newlen;
    static const char *version = "next-mallctl-test";
    if (!strcmp(name, "version") && oldp && oldlenp && *oldlenp == sizeof version) {
        memcpy(oldp, &version, sizeof version);
        return 0;
    }
    if (!strcmp(name, "arenas.nbins") && oldp && oldlenp && *oldlenp == sizeof(unsigned)) {
        unsigned n = 42;
        memcpy(oldp, &n, sizeof n);
        return 0;
    }
    static const char *const stats[] = {"stats.allocated", "stats.active", "stats.resident",
                                        "stats.mapped", "stats.metadata", "stats.retained"};
    int is_stat = 0;
    for (size_t i = 0; i < sizeof stats / sizeof stats[0]; i++)
        is_stat |= !strcmp(name, stats[i]);
    if (is_stat && oldp && oldlenp && *oldlenp == sizeof(size_t)) {
        size_t v = NEXT_BOGUS;
        memcpy(oldp, &v, sizeof v);
        return 0;
    }
    if (!strcmp(name, "epoch") || !strncmp(name, "arena.", 6) || !strcmp(name, "background_thread") ||
        !strcmp(name, "thread.tcache.flush"))
        return EFAULT; /* never reached while trimalloc answers these */
    return ENOENT;
}

/* Its MIB pair: "arenas.nbins" is {1, 7} here (jemalloc-like small
 * numbers); trimalloc's own names would give it away (EFAULT). */
int mallctlnametomib(const char *name, size_t *mibp, size_t *miblenp)
{
    if (!strcmp(name, "arenas.nbins") && *miblenp >= 2) {
        mibp[0] = 1;
        mibp[1] = 7;
        *miblenp = 2;
        return 0;
    }
    if (!strcmp(name, "version") && *miblenp >= 1) {
        mibp[0] = 0;
        *miblenp = 1;
        return 0;
    }
    static const char *const ours[] = {"stats.allocated", "stats.active", "stats.resident",
                                       "stats.mapped",    "stats.metadata", "stats.retained",
                                       "epoch",           "background_thread", "thread.tcache.flush",
                                       "arenas.narenas",  "arena.0.purge",  "arena.4096.decay"};
    for (size_t i = 0; i < sizeof ours / sizeof ours[0]; i++)
        if (!strcmp(name, ours[i]))
            return EFAULT;
    return ENOENT;
}

int mallctlbymib(const size_t *mib, size_t miblen, void *oldp, size_t *oldlenp, void *newp, size_t newlen)
{
    if (miblen == 2 && mib[0] == 1 && mib[1] == 7)
        return mallctl("arenas.nbins", oldp, oldlenp, newp, newlen);
    if (miblen == 1 && mib[0] == 0)
        return mallctl("version", oldp, oldlenp, newp, newlen);
    return ENOENT;
}
