/*
 * mallctl.c -- the few jemalloc mallctl() names that steer an allocator,
 * malloc_stats_print, and the *allocx calls (at the end), for programs
 * built against jemalloc that a preload hands to trimalloc. Only in
 * build/libtrimalloc_jemalloc.so (and as tm_mallctl, tm_malloc_stats_print,
 * tm_mallocx, ... in the prefixed build), never in
 * libtrimalloc.so: programs that find out whether jemalloc is loaded by
 * looking for a mallctl (MariaDB's guess_malloc_library, weak symbols) and
 * then trust what it answers would take plain trimalloc for jemalloc (a
 * reviewer's reduction of MariaDB's code read an unset "version" pointer
 * and crashed).
 *
 * Debian links redis-server with libjemalloc.so.2. Under a preload its
 * malloc/free are ours, but it still asks "jemalloc" for a background
 * purging thread at start-up (jemalloc-bg-thread yes), purges it after
 * FLUSHALL and on MEMORY PURGE, and reads its statistics for INFO. When
 * those calls reached a jemalloc that holds nothing, our pages stayed
 * resident for good (measured: 111 MB after 500 000 SETs and FLUSHALL, and
 * still 111 MB 13 s later and after MEMORY PURGE; native jemalloc 17 MB).
 *
 * Names answered here, with jemalloc's types and error numbers:
 *   epoch                 uint64_t rw  statistics here are live; counts writes
 *   background_thread     bool rw      option background_thread
 *   arenas.narenas        unsigned r   trimalloc's arenas
 *   arena.<i>.purge       --           _heapmin(), for i <= narenas or 4096
 *   arena.<i>.decay       --           the same
 *   thread.tcache.flush   --           the caller's cache goes back to the arenas
 *   stats.allocated       size_t r     trimalloc_stats_t.allocated
 *   stats.active          size_t r     .active
 *   stats.resident        size_t r     .resident
 *   stats.metadata        size_t r     .metadata
 *   stats.mapped          size_t r     .resident: jemalloc's mapped leaves out
 *   stats.retained        size_t r     .mapped - .resident, pages given back
 *                                      that stay mapped (or were never touched)
 * Every other name goes to the next mallctl in the process (the program's
 * own jemalloc, which then describes its own, unused, state): a program
 * that asserts on names such as arenas.nbins keeps working. With no other
 * mallctl, ENOENT, except "version": "0.0.0-0-trimalloc". The prefixed
 * build never forwards. arena.4097.purge (the destroyed arenas) does
 * nothing. mallctlnametomib and mallctlbymib give the same names by
 * number (below).
 */
#include "internal.h"

#if defined(TRIMALLOC_PREFIX) || defined(TRIMALLOC_JEMALLOC_CTL)

#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

typedef int (*mallctl_fn)(const char *, void *, size_t *, void *, size_t);

/* jemalloc's MALLCTL_ARENAS_ALL and MALLCTL_ARENAS_DESTROYED: "every arena"
 * and "the destroyed arenas" in an arena.<i> name */
#define CTL_ARENAS_ALL 4096u
#define CTL_ARENAS_DESTROYED 4097u
/* "version" when no jemalloc answers it: a string, for code that reads it
 * unchecked (MariaDB's guess_malloc_library), that no jemalloc has */
static const char ctl_version[] = "0.0.0-0-trimalloc";

static uint64_t ctl_epoch = 1;

/* The definition of `name` after ours in the lookup order, looked up once
 * into *slot (dlsym may allocate: it runs here, never during
 * initialisation; a failed lookup sets dlerror, so it is not repeated).
 * *looked says the lookup was made. The prefixed build has none. */
static void *next_fn(const char *name, void **slot, int *looked) {
#ifdef TRIMALLOC_PREFIX
    (void)name, (void)slot, (void)looked;
    return NULL;
#else
    if (!__atomic_load_n(looked, __ATOMIC_ACQUIRE)) {
        __atomic_store_n(slot, dlsym(RTLD_NEXT, name), __ATOMIC_RELAXED);
        __atomic_store_n(looked, 1, __ATOMIC_RELEASE);
    }
    return __atomic_load_n(slot, __ATOMIC_RELAXED);
#endif
}

static mallctl_fn next_mallctl(void) {
    static void *next;
    static int looked;
    return (mallctl_fn)next_fn("mallctl", &next, &looked);
}

/* jemalloc's rules. A read stores the value in *oldp when *oldlenp is its
 * size; otherwise it stores what fits, sets *oldlenp to that, and fails
 * with EINVAL. A write must be exactly the value's size (EINVAL). A name
 * that cannot be written refuses newp or a newlen (EPERM); one that
 * cannot be read refuses oldp or oldlenp (EPERM). */
static int ctl_read(void *oldp, size_t *oldlenp, const void *v, size_t size) {
    if (!oldp || !oldlenp) return 0;
    if (*oldlenp != size) {
        size_t n = *oldlenp < size ? *oldlenp : size;
        memcpy(oldp, v, n);
        *oldlenp = n;
        return EINVAL;
    }
    memcpy(oldp, v, size);
    return 0;
}
static bool ctl_writes(const void *newp, size_t newlen) { return newp || newlen; }
static bool ctl_reads(const void *oldp, const size_t *oldlenp) { return oldp || oldlenp; }

/* stats.<what>: the value, or -1 for a name that is not one of ours */
static int ctl_stat(const char *what, void *oldp, size_t *oldlenp, void *newp, size_t newlen) {
    bool resident = !strcmp(what, "resident") || !strcmp(what, "mapped");
    if (!resident && strcmp(what, "allocated") && strcmp(what, "active") && strcmp(what, "metadata") &&
        strcmp(what, "retained"))
        return -1;
    if (ctl_writes(newp, newlen)) return EPERM;
    trimalloc_stats_t s;
    TM_API(trimalloc_stats_get)(&s);
    size_t v;
    if (resident) v = s.resident; /* jemalloc's mapped leaves out retained */
    else if (!strcmp(what, "allocated")) v = s.allocated;
    else if (!strcmp(what, "active")) v = s.active;
    else if (!strcmp(what, "metadata")) v = s.metadata;
    else v = s.mapped > s.resident ? s.mapped - s.resident : 0; /* retained */
    return ctl_read(oldp, oldlenp, &v, sizeof v);
}

/* An arena index jemalloc takes in arena.<i>: one below narenas, narenas
 * itself (the old spelling of "all"), MALLCTL_ARENAS_ALL and
 * MALLCTL_ARENAS_DESTROYED. The allocator must be initialised. */
static bool ctl_arena_index_ok(unsigned long index) {
    return index <= tm_narenas || index == CTL_ARENAS_ALL || index == CTL_ARENAS_DESTROYED;
}

/* "arena.<decimal>.purge" or ".decay": 1 with *index set, else 0 */
static bool is_arena_purge(const char *name, unsigned long *index) {
    if (strncmp(name, "arena.", 6)) return false;
    const char *p = name + 6;
    size_t digits = 0;
    unsigned long i = 0;
    while (p[digits] >= '0' && p[digits] <= '9') {
        if (digits == 9) return false; /* no index has ten digits */
        i = i * 10 + (unsigned long)(p[digits] - '0');
        digits++;
    }
    if (digits == 0 || (strcmp(p + digits, ".purge") && strcmp(p + digits, ".decay"))) return false;
    *index = i;
    return true;
}

static int ctl_answer(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen,
                      bool *answered) {
    unsigned long index;
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
        bool old = TM_OPT_NOW(background_thread) != 0;
        if (newp && newlen != sizeof(bool)) return EINVAL;
        int r = ctl_read(oldp, oldlenp, &old, sizeof old);
        if (r) return r;
        if (newp && TM_API(trimalloc_option_set)("background_thread", *(bool *)newp ? 1 : 0))
            return EFAULT;
        return 0;
    }
    if (!strcmp(name, "arenas.narenas")) {
        if (ctl_writes(newp, newlen)) return EPERM;
        unsigned n = tm_narenas;
        return ctl_read(oldp, oldlenp, &n, sizeof n);
    }
    if (is_arena_purge(name, &index)) {
        if (!ctl_arena_index_ok(index)) return ENOENT; /* each other one does it all here */
        if (ctl_reads(oldp, oldlenp) || ctl_writes(newp, newlen)) return EPERM;
        if (index != CTL_ARENAS_DESTROYED) /* trimalloc destroys no arena */
            TM_API(_heapmin)();            /* -1 only where the kernel refused every release */
        return 0;
    }
    if (!strcmp(name, "thread.tcache.flush")) {
        /* no cache (tcache_scale:0, junk, zero), as jemalloc with tcache:false (checked first there too) */
        if (TM_OPT_NOW(tcache_scale_pct) == 0) return EFAULT;
        if (ctl_reads(oldp, oldlenp) || ctl_writes(newp, newlen)) return EPERM;
        tcache_flush_own();
        return 0;
    }
    if (!strncmp(name, "stats.", 6)) {
        int r = ctl_stat(name + 6, oldp, oldlenp, newp, newlen);
        if (r >= 0) return r;
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
        if (next) {
            r = next(name, oldp, oldlenp, newp, newlen);
        } else if (!strcmp(name, "version")) {
            const char *v = ctl_version;
            r = ctl_writes(newp, newlen) ? EPERM : ctl_read(oldp, oldlenp, &v, sizeof v);
        } else {
            r = ENOENT;
        }
    }
    errno = saved;
    return r;
}

/* ---- mallctlnametomib and mallctlbymib ------------------------------------
 * jemalloc's "management information base": a name looked up once into an
 * array of numbers (a MIB), then read or written many times by number.
 * Until 2026-12-07 a program linked with jemalloc that used the pair under
 * this preload reached its own jemalloc and read that allocator's unused
 * state. Each name mallctl answers here now gets a MIB of ours: one number
 * per part of the name, the index of the word in ctl_words[] or, where
 * ctl_names[] has '#', the number itself; the first plus CTL_MIB_TAG, which
 * no jemalloc MIB starts with (jemalloc's first number indexes the top of
 * its tree, a few dozen names). mallctlbymib spells such a MIB back into
 * its name and asks mallctl; every other MIB, like every other name, goes
 * to the next pair in the process (the program's jemalloc), else ENOENT.
 * As in jemalloc, a *miblenp shorter than the name gives a partial MIB that
 * the program completes itself (by mallctlbymib it is no name: ENOENT). */
#define CTL_MIB_TAG ((size_t)0x746d0000u) /* "tm", in the low 32 bits */
#define CTL_MIB_PARTS 3                    /* the most parts a name of ours has */

static const char *const ctl_words[] = {
    "epoch", "background_thread", "arenas",    "narenas",   "arena",    "purge",
    "decay", "thread",            "tcache",    "flush",     "stats",    "allocated",
    "active", "resident",         "metadata",  "mapped",    "retained", "version",
};
#define CTL_NWORDS (sizeof ctl_words / sizeof ctl_words[0])

/* The names ctl_answer (and, with no other mallctl, "version") answers;
 * '#' is a decimal number (an arena index). */
static const char *const ctl_names[] = {
    "epoch",           "background_thread", "arenas.narenas", "arena.#.purge",  "arena.#.decay",
    "thread.tcache.flush", "stats.allocated", "stats.active", "stats.resident", "stats.metadata",
    "stats.mapped",    "stats.retained",    "version",
};
#define CTL_NNAMES (sizeof ctl_names / sizeof ctl_names[0])

typedef int (*nametomib_fn)(const char *, size_t *, size_t *);
typedef int (*bymib_fn)(const size_t *, size_t, void *, size_t *, void *, size_t);

/* The index in ctl_words[] of the len bytes at s, -1 if none. */
static int ctl_word(const char *s, size_t len) {
    for (unsigned w = 0; w < CTL_NWORDS; w++)
        if (strlen(ctl_words[w]) == len && !memcmp(ctl_words[w], s, len)) return (int)w;
    return -1;
}

/* Split name into at most CTL_MIB_PARTS numbers (words' indices, or the
 * number where pattern has '#') if it matches pattern; how many, 0 if it
 * does not match. */
static size_t ctl_name_to_mib(const char *pattern, const char *name, size_t mib[CTL_MIB_PARTS]) {
    size_t n = 0;
    for (;;) {
        size_t plen = strcspn(pattern, "."), nlen = strcspn(name, ".");
        if (n == CTL_MIB_PARTS || nlen == 0) return 0;
        if (plen == 1 && *pattern == '#') { /* 1 to 9 digits, as is_arena_purge */
            size_t v = 0;
            if (nlen > 9) return 0;
            for (size_t i = 0; i < nlen; i++) {
                if (name[i] < '0' || name[i] > '9') return 0;
                v = v * 10 + (size_t)(name[i] - '0');
            }
            mib[n++] = v;
        } else {
            if (plen != nlen || memcmp(pattern, name, nlen)) return 0;
            mib[n++] = (size_t)ctl_word(name, nlen);
        }
        pattern += plen;
        name += nlen;
        if (!*pattern || !*name) return *pattern || *name ? 0 : n;
        pattern++, name++;
    }
}

/* Spell mib (miblen numbers, the first tagged) as the name of ours it
 * stands for into buf; false if it stands for none. */
static bool ctl_mib_to_name(const size_t *mib, size_t miblen, char *buf, size_t size) {
    if (!miblen || miblen > CTL_MIB_PARTS) return false;
    for (unsigned t = 0; t < CTL_NNAMES; t++) {
        const char *pattern = ctl_names[t];
        size_t at = 0, i = 0;
        for (; i < miblen && *pattern; i++) {
            size_t plen = strcspn(pattern, "."), v = i ? mib[i] : mib[i] - CTL_MIB_TAG;
            char part[24];
            if (plen == 1 && *pattern == '#') {
                if (v > 999999999) break; /* more digits than an index of ours */
                snprintf(part, sizeof part, "%zu", v);
            } else if (v < CTL_NWORDS && strlen(ctl_words[v]) == plen &&
                       !memcmp(ctl_words[v], pattern, plen)) {
                snprintf(part, sizeof part, "%s", ctl_words[v]);
            } else {
                break;
            }
            int w = snprintf(buf + at, size - at, "%s%s", i ? "." : "", part);
            if (w < 0 || (size_t)w >= size - at) return false;
            at += (size_t)w;
            pattern += plen;
            if (*pattern) pattern++;
        }
        if (i == miblen && !*pattern) return true;
    }
    return false;
}

TM_EXPORT int TM_API(mallctlnametomib)(const char *name, size_t *mibp, size_t *miblenp) {
    static void *next;
    static int looked;
    if (!name || !mibp || !miblenp) return EINVAL;
    int saved = errno, r = ENOENT;
    size_t mib[CTL_MIB_PARTS], n = 0;
    for (unsigned t = 0; t < CTL_NNAMES && !n; t++) n = ctl_name_to_mib(ctl_names[t], name, mib);
    nametomib_fn other = (nametomib_fn)next_fn("mallctlnametomib", &next, &looked);
    tm_init(); /* tm_narenas */
    if (n == 3 && mib[0] == (size_t)ctl_word("arena", 5) && !ctl_arena_index_ok(mib[1])) {
        r = ENOENT; /* no such arena: jemalloc says so at the lookup too */
    } else if (n && !(other && next_mallctl() && !strcmp(name, "version"))) {
        mib[0] += CTL_MIB_TAG;
        if (*miblenp < n) n = *miblenp;
        memcpy(mibp, mib, n * sizeof *mib);
        *miblenp = n;
        r = 0;
    } else if (other) {
        r = other(name, mibp, miblenp);
    }
    errno = saved;
    return r;
}

TM_EXPORT int TM_API(mallctlbymib)(const size_t *mib, size_t miblen, void *oldp, size_t *oldlenp,
                                   void *newp, size_t newlen) {
    static void *next;
    static int looked;
    if (!mib) return EINVAL;
    if (miblen && (mib[0] & ~(size_t)0xff) == CTL_MIB_TAG) {
        char name[64];
        if (!ctl_mib_to_name(mib, miblen, name, sizeof name)) return ENOENT;
        return TM_API(mallctl)(name, oldp, oldlenp, newp, newlen);
    }
    int saved = errno, r = ENOENT;
    bymib_fn other = (bymib_fn)next_fn("mallctlbymib", &next, &looked);
    if (other) r = other(mib, miblen, oldp, oldlenp, newp, newlen);
    errno = saved;
    return r;
}

/* jemalloc's report call (redis's MEMORY MALLOC-STATS): trimalloc's report
 * (trimalloc_stats_print's), in pieces to write_cb, or to stderr without
 * one. Of jemalloc's opts only 'J' (JSON) means something here; the others
 * leave out sections trimalloc's report does not have. */
TM_EXPORT void TM_API(malloc_stats_print)(void (*write_cb)(void *, const char *), void *cbopaque,
                                          const char *opts) {
    int saved = errno;
    stats_sink_t o = {2, write_cb, cbopaque};
    stats_print_to(&o, opts && strchr(opts, 'J') != NULL);
    errno = saved;
}

/* ---- jemalloc's *allocx calls ---------------------------------------------
 * A program built against jemalloc may allocate with mallocx and free with
 * free, or the other way round; under a preload that only replaced malloc
 * and free, its mallocx reached the jemalloc it links (which the preload
 * does not unload), and the free of that block here was an invalid pointer
 * (abort; found 2026-12-07 with a program that calls mallocx, rallocx and
 * free). So they are trimalloc's too, with jemalloc's flags: the low six
 * bits are log2 of the alignment (0: none), 0x40 asks for zeroed memory;
 * the tcache and arena bits are ignored (trimalloc picks both itself).
 * A size of 0 (undefined in jemalloc) is taken as 1. */
#define ALLOCX_LG_ALIGN_MASK 0x3f
#define ALLOCX_ZERO 0x40

/* The alignment flags ask for, 0 for none; SIZE_MAX if it is not one
 * trimalloc can give (2^63 and up). */
static size_t allocx_align(int flags) {
    unsigned lg = (unsigned)flags & ALLOCX_LG_ALIGN_MASK;
    if (!lg) return 0;
    return lg < 8 * sizeof(size_t) - 1 ? (size_t)1 << lg : SIZE_MAX;
}

TM_EXPORT void *TM_API(mallocx)(size_t size, int flags) {
    size_t align = allocx_align(flags);
    if (align == SIZE_MAX) {
        errno = ENOMEM;
        return NULL;
    }
    return tm_alloc_aligned(align, size ? size : 1, (flags & ALLOCX_ZERO) != 0);
}

/* The usable size of p (0 and reported if p is not a live block), with
 * errno as it was. */
static size_t allocx_usable(void *p, const char *call) {
    int saved = errno;
    size_t n = tm_usable_size(p, call);
    errno = saved;
    return n;
}

/* Zero what p gained past old bytes, if flags ask for it. */
static void allocx_zero_tail(void *p, size_t old, int flags, const char *call) {
    if (!(flags & ALLOCX_ZERO)) return;
    size_t now = allocx_usable(p, call);
    if (now > old) memset((char *)p + old, 0, now - old);
}

/* realloc with jemalloc's flags. An alignment realloc would not keep is
 * kept in place if the block can be resized there, else it is a new block
 * and a copy. NULL (p untouched, errno ENOMEM) if there is no memory. */
TM_EXPORT void *TM_API(rallocx)(void *p, size_t size, int flags) {
    size_t align = allocx_align(flags);
    if (!size) size = 1;
    int saved = errno;
    size_t old = allocx_usable(p, "rallocx");
    if (!old || align == SIZE_MAX) {
        errno = old ? ENOMEM : EINVAL;
        return NULL;
    }
    void *q;
    bool zero_tail = false; /* the kernel's new pages past old (mremap) */
    if (align <= TM_ALIGN) {
        q = tm_realloc_impl(p, size, &zero_tail);
    } else if (!((uintptr_t)p & (align - 1)) && TM_API(_expand)(p, size)) {
        q = p;
    } else if ((q = tm_alloc_aligned(align, size, false))) {
        memcpy(q, p, old < size ? old : size);
        TM_API(free)(p);
    }
    if (!q) return NULL;
    errno = saved;
    if (!zero_tail) allocx_zero_tail(q, old, flags, "rallocx");
    return q;
}

/* Resize p in place, as jemalloc does: to at least size bytes, and up to
 * size + extra if it can (extra past what any block can have counts as
 * "as much as possible"); a block that holds between size and size +
 * extra bytes is never shrunk, one larger than size + extra is shrunk to
 * that. Returns the usable size p has then. (The first version, 2026-12-07,
 * shrank a block already big enough to size when it could not grow, and
 * let size + extra wrap around: a reviewer, against real jemalloc.) */
TM_EXPORT size_t TM_API(xallocx)(void *p, size_t size, size_t extra, int flags) {
    size_t old = allocx_usable(p, "xallocx");
    if (!old) return 0;
    size_t align = allocx_align(flags);
    if (align > TM_ALIGN && ((uintptr_t)p & (align - 1))) return old;
    if (!size) size = 1;
    if (size > PTRDIFF_MAX) return old;
    size_t want = extra > PTRDIFF_MAX - size ? PTRDIFF_MAX : size + extra;
    int saved = errno;
    if (old > want) {
        TM_API(_expand)(p, want); /* a shrink: in place, or the block as it is */
    } else if (old < want && !TM_API(_expand)(p, want) && old < size) {
        TM_API(_expand)(p, size);
    }
    errno = saved;
    allocx_zero_tail(p, old, flags, "xallocx");
    return allocx_usable(p, "xallocx");
}

TM_EXPORT size_t TM_API(sallocx)(const void *p, int flags) {
    (void)flags;
    return allocx_usable((void *)p, "sallocx");
}

TM_EXPORT void TM_API(dallocx)(void *p, int flags) {
    (void)flags;
    TM_API(free)(p);
}

TM_EXPORT void TM_API(sdallocx)(void *p, size_t size, int flags) {
    (void)size;
    (void)flags;
    TM_API(free)(p);
}

/* The usable size mallocx(size, flags) gives, by the rules of
 * tm_alloc_aligned (alloc.c): a size class where one fits the size and
 * the alignment, else whole pages; 0 where no block can have that size
 * or alignment (whole pages past PTRDIFF_MAX, an alignment of 2^63 or
 * more). A block can hold more (sallocx): a huge one that reuses a freed
 * mapping keeps the mapping's tail, up to its own size again (huge.c). */
TM_EXPORT size_t TM_API(nallocx)(size_t size, int flags) {
    size_t align = allocx_align(flags);
    if (!size) size = 1;
    if (size > (size_t)PTRDIFF_MAX - TM_PAGE_MASK || align == SIZE_MAX) return 0;
    tm_init(); /* the class table */
    unsigned cls = align <= TM_PAGE ? tm_class_aligned(size, align > TM_ALIGN ? align : TM_ALIGN) : 0;
    return cls ? tm_classes[cls].size : (size + TM_PAGE_MASK) & ~TM_PAGE_MASK;
}

#endif /* TRIMALLOC_PREFIX || TRIMALLOC_JEMALLOC_CTL */
