/*
 * options.c -- runtime options: one table, read once from TRIMALLOC_CONF
 * ("key:value,key:value", the form jemalloc's MALLOC_CONF users know), and
 * readable/settable from C with trimalloc_option_get/set. docs/options.md
 * is checked against this table by a test.
 */
#include "internal.h"

#include <sys/auxv.h>

#include <limits.h>
#include <stdlib.h>
#include <unistd.h> /* environ */

tm_opts_t tm_opt;

/* X(name, field, default, min, max, settable after start, meaning) */
#define TM_OPTIONS(X)                                                                        \
    X("narenas", narenas, 0, 0, TM_MAX_ARENAS, 0,                                            \
      "number of arenas; 0 = 2 x the CPUs this process may run on (at most 256)")             \
    X("tcache_scale", tcache_scale_pct, 100, 0, 1000, 0,                                     \
      "thread-cache capacity in percent of the default (0 disables caching)")                 \
    X("tcache_total_mb", tcache_total_mb, 64, 0, 1 << 20, 1,                                 \
      "MiB the caches of all threads may hold together, shared by the live threads (0 = no common bound)") \
    X("huge_threshold", huge_threshold, 2 << 20, 64 << 10, 4 << 20, 1,                      \
      "bytes above which a block gets its own mapping (64 KiB..4 MiB)")                      \
    X("junk", junk, 0, 0, 1, 0,                                                             \
      "fill new blocks with 0xa5 and freed blocks with 0x5a (turns thread caches off)")      \
    X("zero", zero, 0, 0, 1, 0, "return zeroed memory from every allocation (caches off)")   \
    X("guard", guard, 0, 0, 1, 1, "put an inaccessible guard page after every huge block")    \
    X("abort_on_error", abort_on_error, 1, 0, 1, 1,                                          \
      "abort on a bad pointer or double free (0 = warn and ignore the call)")                \
    X("stats_print", stats_print, 0, 0, 1, 1, "print statistics to stderr at exit")           \
    X("verbose", verbose, 0, 0, 1, 0, "print the options in force at start-up")              \
    X("huge_cache_mb", huge_cache_mb, 64, 0, 1 << 20, 1,                                     \
      "MiB of freed huge mappings kept for reuse (0 = unmap at once)")                       \
    X("decay_ms", decay_ms, 5000, 0, 3600000, 1,                                             \
      "milliseconds a cached free huge mapping is kept before it is unmapped")               \
    X("dirty_decay_ms", dirty_decay_ms, 10000, -1, 3600000, 1,                               \
      "milliseconds a free page of an arena stays resident before it is given back (-1 = never)") \
    X("background_thread", background_thread, 0, 0, 1, 1,                                   \
      "a thread of the allocator's own gives back decayed pages, whatever the program does") \
    X("thp", thp, 0, 0, 2, 1,                                                                \
      "transparent huge pages for arena chunks: 0 = never, 1 = as the kernel's setting says, 2 = asked for")

typedef struct opt_desc {
    const char *name;
    size_t offset;
    long def, min, max;
    int settable;
    const char *meaning;
} opt_desc_t;

static const opt_desc_t opt_table[] = {
#define X(n, f, d, lo, hi, s, m) {n, offsetof(tm_opts_t, f), d, lo, hi, s, m},
    TM_OPTIONS(X)
#undef X
};
#define NOPTS (sizeof opt_table / sizeof opt_table[0])

static long *opt_field(const opt_desc_t *d) { return (long *)((char *)&tm_opt + d->offset); }

static const opt_desc_t *opt_find(const char *name, size_t len) {
    for (size_t i = 0; i < NOPTS; i++)
        if (strlen(opt_table[i].name) == len && !memcmp(opt_table[i].name, name, len))
            return &opt_table[i];
    return NULL;
}

/* Any number of digits (overflow is caught digit by digit): until
 * 2026-12-06 a value of more than 20 characters, such as 7 written with 20
 * leading zeros, was refused (an outside tester). */
static bool parse_long(const char *s, size_t len, long *out) {
    if (len == 0) return false;
    long v = 0;
    bool neg = false;
    size_t i = 0;
    if (s[0] == '-') { neg = true; i = 1; }
    if (i == len) return false;
    for (; i < len; i++) {
        char c = s[i];
        int shift = -1;
        if (c >= '0' && c <= '9') {
            if (v > (LONG_MAX - (c - '0')) / 10) return false; /* overflow */
            v = v * 10 + (c - '0');
            continue;
        }
        if (i == len - 1 && (c == 'k' || c == 'K')) shift = 10;
        else if (i == len - 1 && (c == 'm' || c == 'M')) shift = 20;
        else if (i == len - 1 && (c == 'g' || c == 'G')) shift = 30;
        if (shift >= 0) {
            if (i == (size_t)neg || v > (LONG_MAX >> shift)) return false;
            v <<= shift;
        }
        else if (len == 4 && !memcmp(s, "true", 4)) { *out = 1; return true; }
        else if (len == 5 && !memcmp(s, "false", 5)) { *out = 0; return true; }
        else return false;
    }
    *out = neg ? -v : v;
    return true;
}

/* getenv(name), read from environ directly: libc's getenv sits on a page
 * of libc a small program may never execute otherwise (os.c says why that
 * costs memory). */
static const char *options_getenv(const char *name) {
    for (char **e = environ; e && *e; e++) {
        const char *v = *e, *n = name;
        while (*n && *v == *n) v++, n++;
        if (!*n && *v == '=') return v + 1;
    }
    return NULL;
}

void options_init(void) {
    for (size_t i = 0; i < NOPTS; i++) *opt_field(&opt_table[i]) = opt_table[i].def;
    /* Not in a set-user-ID or set-group-ID program (found by a tester:
     * abort_on_error:0 turned its double-free abort into a warning). */
    if (getauxval(AT_SECURE)) return;
    const char *conf = options_getenv("TRIMALLOC_CONF");
    if (!conf) return;
    char what[160];
    for (const char *p = conf; *p;) {
        const char *end = p;
        while (*end && *end != ',') end++;
        const char *colon = p;
        while (colon < end && *colon != ':') colon++;
        size_t klen = (size_t)(colon - p);
        const opt_desc_t *d = opt_find(p, klen);
        long v;
        if (klen == 0 && colon == end) {
            /* an empty entry ("a:1,,b:2"): nothing to say */
        } else if (!d) {
            tm_snprintf(what, sizeof what, "%s", "");
            size_t n = klen < sizeof what - 1 ? klen : sizeof what - 1;
            memcpy(what, p, n);
            what[n] = 0;
            tm_warn("TRIMALLOC_CONF: unknown option ignored: ", what);
        } else if (colon == end || !parse_long(colon + 1, (size_t)(end - colon - 1), &v) ||
                   v < d->min || v > d->max) {
            tm_warn("TRIMALLOC_CONF: bad value ignored for ", d->name);
        } else {
            *opt_field(d) = v;
        }
        p = *end ? end + 1 : end;
    }
}

/* verbose:1 -- every option as the process got it, once start-up has
 * settled the ones it derives (narenas from the CPUs, tcache_scale 0 under
 * junk or zero), as trimalloc_option_get reads them: called at the end of
 * tm_init_slow (until 2026-12-06 it printed what TRIMALLOC_CONF had said,
 * narenas = 0 and tcache_scale = 100 with junk:1, against options.md's
 * "what a program actually got"; an outside tester). */
void options_print_verbose(void) {
    for (size_t i = 0; i < NOPTS; i++) {
        char buf[128];
        long v = opt_table[i].offset == offsetof(tm_opts_t, narenas) ? (long)tm_narenas
                                                                      : *opt_field(&opt_table[i]);
        int n = tm_snprintf(buf, sizeof buf, "trimalloc: option %s = %ld\n", opt_table[i].name, v);
        tm_write_fd(2, buf, (size_t)n);
    }
}

TM_EXPORT int TM_API(trimalloc_option_get)(const char *name, long *value) {
    tm_init();
    const opt_desc_t *d = name ? opt_find(name, strlen(name)) : NULL;
    if (!d || !value) {
        errno = EINVAL;
        return -1;
    }
    /* atomic: a setter may store it meanwhile (until 2026-12-06 a plain
     * load, a data race under ThreadSanitizer; an outside tester) */
    *value = __atomic_load_n(opt_field(d), __ATOMIC_RELAXED);
    if (d->offset == offsetof(tm_opts_t, narenas)) *value = tm_narenas;
    return 0;
}

TM_EXPORT int TM_API(trimalloc_option_set)(const char *name, long value) {
    tm_init();
    const opt_desc_t *d = name ? opt_find(name, strlen(name)) : NULL;
    if (!d || value < d->min || value > d->max) {
        errno = EINVAL;
        return -1;
    }
    if (!d->settable) {
        errno = EBUSY;
        return -1;
    }
    /* the background thread starts here (background.c), not at a tick */
    if (d->offset == offsetof(tm_opts_t, background_thread))
        return background_set(value) ? 0 : -1;
    __atomic_store_n(opt_field(d), value, __ATOMIC_RELAXED);
    return 0;
}

/* For the documentation check: write the table as Markdown rows. */
TM_EXPORT void TM_API(trimalloc_options_markdown)(int fd) {
    for (size_t i = 0; i < NOPTS; i++) {
        char buf[512];
        int n = tm_snprintf(buf, sizeof buf, "| `%s` | %ld | %ld..%ld | %s | %s |\n",
                            opt_table[i].name, opt_table[i].def, opt_table[i].min,
                            opt_table[i].max, opt_table[i].settable ? "yes" : "start-up only",
                            opt_table[i].meaning);
        tm_write_fd(fd, buf, (size_t)n);
    }
}
