/*
 * options_doc.c -- docs/options.md against the options table in
 * src/options.c, and TRIMALLOC_CONF as a user meets it.
 *
 *   options_doc DOC PROBE   run every check (ctest does this)
 *   options_doc --print     print the table, header included, ready to
 *                           paste between the markers in docs/options.md
 *
 * 1. The table: trimalloc_options_markdown() writes one Markdown row per
 *    option, from the same X-macro the parser uses. Every row must appear
 *    verbatim, as a whole line, between the lines
 *    "<!-- options-table:begin -->" and "<!-- options-table:end -->" of
 *    DOC, and every option row there must be one of them: a new, renamed,
 *    removed or re-described option fails this test until the doc follows.
 * 2. TRIMALLOC_CONF: PROBE (conf_probe.c) is run with several settings of
 *    the variable; its stderr must hold exactly the expected warnings (one
 *    per bad entry, naming it) and its option values the expected ones.
 * 3. The C API: trimalloc_option_get/set, their return values and errno.
 *
 * Plain C; prints one line per failed check and exits 1 if any failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <trimalloc.h>

/* Exported by the library (drop-in build) for this check; not in the header. */
void trimalloc_options_markdown(int fd);

#define BEGIN_MARK "<!-- options-table:begin -->"
#define END_MARK "<!-- options-table:end -->"
#define TABLE_HEADER                                                       \
    "| option | default | range | set at run time | meaning |\n"          \
    "|---|---:|---|---|---|\n"

#include "check.h"

/* ---- helpers ------------------------------------------------------------ */

/* The whole of a file descriptor, NUL-terminated (from offset 0). */
static char *slurp_fd(int fd)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    lseek(fd, 0, SEEK_SET);
    for (;;) {
        if (len + 1024 > cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = 0;
    return buf;
}

static char *slurp_path(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *s = slurp_fd(fileno(f));
    fclose(f);
    return s;
}

/* Split text into lines in place; returns the count, lines in *out. */
static size_t split_lines(char *text, char ***out)
{
    size_t n = 0, cap = 64;
    char **v = malloc(cap * sizeof *v);
    for (char *p = text; v && *p;) {
        char *nl = strchr(p, '\n');
        if (nl)
            *nl = 0;
        if (n == cap) {
            char **nv = realloc(v, (cap *= 2) * sizeof *v);
            if (!nv)
                break;
            v = nv;
        }
        v[n++] = p;
        if (!nl)
            break;
        p = nl + 1;
    }
    *out = v;
    return v ? n : 0;
}

static char *generated_table(void)
{
    FILE *tmp = tmpfile();
    if (!tmp)
        return NULL;
    trimalloc_options_markdown(fileno(tmp));
    char *s = slurp_fd(fileno(tmp));
    fclose(tmp);
    return s;
}

/* ---- 1. the table in the doc ------------------------------------------------ */

static void check_doc_table(const char *doc_path)
{
    char *gen = generated_table(), *doc = slurp_path(doc_path);
    if (!gen || !doc) {
        fail("cannot read %s", gen ? doc_path : "the generated table");
        return;
    }
    char **rows, **lines;
    size_t nrows = split_lines(gen, &rows), nlines = split_lines(doc, &lines);
    if (nrows < 5)
        fail("trimalloc_options_markdown wrote only %zu rows", nrows);

    size_t begin = nlines, end = nlines;
    for (size_t i = 0; i < nlines; i++) {
        if (!strcmp(lines[i], BEGIN_MARK) && begin == nlines)
            begin = i;
        else if (!strcmp(lines[i], END_MARK) && begin != nlines && end == nlines)
            end = i;
    }
    if (begin == nlines || end == nlines) {
        fail("%s: no '%s' ... '%s' block", doc_path, BEGIN_MARK, END_MARK);
        return;
    }
    for (size_t r = 0; r < nrows; r++) {
        int found = 0;
        for (size_t i = begin + 1; i < end && !found; i++)
            found = !strcmp(lines[i], rows[r]);
        if (!found)
            fail("%s lacks the row (or it differs):\n  %s", doc_path, rows[r]);
    }
    for (size_t i = begin + 1; i < end; i++) {
        if (strncmp(lines[i], "| `", 3))
            continue;
        int known = 0;
        for (size_t r = 0; r < nrows && !known; r++)
            known = !strcmp(lines[i], rows[r]);
        if (!known)
            fail("%s:%zu: option row not in the library's table:\n  %s", doc_path, i + 1,
                 lines[i]);
    }
    printf("table: %zu generated rows checked against %s\n", nrows, doc_path);
    free(rows);
    free(lines);
    free(gen);
    free(doc);
}

/* ---- 2. TRIMALLOC_CONF through a child process --------------------------------- */

typedef struct probe_result {
    char *out, *err;
    int status;
} probe_result_t;

/* Run probe with TRIMALLOC_CONF=conf (unset if NULL) and the option names
 * as arguments; capture stdout and stderr. */
static probe_result_t run_probe(const char *probe, const char *conf, char *const names[])
{
    probe_result_t r = {0};
    FILE *o = tmpfile(), *e = tmpfile();
    if (!o || !e) {
        fail("tmpfile: %s", strerror(errno));
        return r;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fileno(o), 1);
        dup2(fileno(e), 2);
        if (conf)
            setenv("TRIMALLOC_CONF", conf, 1);
        else
            unsetenv("TRIMALLOC_CONF");
        size_t n = 0;
        while (names[n])
            n++;
        char **argv = calloc(n + 2, sizeof *argv);
        argv[0] = (char *)probe;
        memcpy(argv + 1, names, n * sizeof *argv);
        execv(probe, argv);
        _exit(127);
    }
    if (pid < 0 || waitpid(pid, &r.status, 0) != pid)
        fail("cannot run %s: %s", probe, strerror(errno));
    r.out = slurp_fd(fileno(o));
    r.err = slurp_fd(fileno(e));
    fclose(o);
    fclose(e);
    return r;
}

static size_t count_lines_with(const char *text, const char *needle)
{
    size_t n = 0;
    for (const char *p = text; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (memmem(p, len, needle, strlen(needle)))
            n++;
        p += len + (nl != NULL);
    }
    return n;
}

/* The value the probe printed for name, or LONG_MIN. */
static long probe_value(const probe_result_t *r, const char *name)
{
    char key[64];
    snprintf(key, sizeof key, "%s=", name);
    for (const char *p = r->out; p && (p = strstr(p, key)); p++)
        if (p == r->out || p[-1] == '\n') {
            char *end;
            long v = strtol(p + strlen(key), &end, 10);
            return *end == '\n' || *end == 0 ? v : -999999;
        }
    return -999999;
}

struct expect {
    const char *name;
    long value;
};

/* Run the probe with conf; expect exactly nwarn warning lines, each word
 * in mentions[] on exactly one stderr line, and the given values. */
static void check_conf(const char *probe, const char *conf, size_t nwarn,
                       const char *const mentions[], const struct expect *want)
{
    char *names[16];
    size_t n = 0;
    for (; want[n].name && n < 15; n++)
        names[n] = (char *)want[n].name;
    names[n] = NULL;
    probe_result_t r = run_probe(probe, conf, names);
    const char *shown = conf ? conf : "(unset)";
    if (!WIFEXITED(r.status) || WEXITSTATUS(r.status) != 0)
        fail("TRIMALLOC_CONF=%s: probe exited with status %d", shown, r.status);
    size_t got = count_lines_with(r.err, "trimalloc: warning");
    if (got != nwarn)
        fail("TRIMALLOC_CONF=%s: %zu warning lines, expected %zu; stderr:\n%s", shown, got,
             nwarn, r.err ? r.err : "");
    for (size_t i = 0; mentions && mentions[i]; i++) {
        size_t m = count_lines_with(r.err, mentions[i]);
        if (m != 1)
            fail("TRIMALLOC_CONF=%s: %zu stderr lines name '%s', expected 1; stderr:\n%s", shown,
                 m, mentions[i], r.err ? r.err : "");
    }
    for (size_t i = 0; want[i].name; i++) {
        long v = probe_value(&r, want[i].name);
        if (want[i].value == -1 ? v <= 0 : v != want[i].value)
            fail("TRIMALLOC_CONF=%s: %s is %ld, expected %ld; stdout:\n%s", shown, want[i].name,
                 v, want[i].value, r.out ? r.out : "");
    }
    printf("conf: TRIMALLOC_CONF=%s: %zu warning(s) as expected\n", shown, got);
    free(r.out);
    free(r.err);
}

static void check_conf_env(const char *probe)
{
    /* The case from the brief: one unknown key, one bad value. */
    check_conf(probe, "narenas:3,bogus:1,tcache_scale:abc", 2,
               (const char *const[]){"bogus", "tcache_scale", NULL},
               (const struct expect[]){{"narenas", 3}, {"tcache_scale", 100}, {NULL, 0}});
    /* Suffixes and booleans, no warnings; a trailing comma is fine. */
    check_conf(probe, "huge_threshold:1m,huge_cache_mb:0,decay_ms:250,junk:true,zero:false,", 0,
               NULL,
               (const struct expect[]){{"huge_threshold", 1 << 20},
                                       {"huge_cache_mb", 0},
                                       {"decay_ms", 250},
                                       {"junk", 1},
                                       {"zero", 0},
                                       {NULL, 0}});
    check_conf(probe, "huge_threshold:64k,tcache_scale:50", 0, NULL,
               (const struct expect[]){{"huge_threshold", 64 << 10},
                                       {"tcache_scale", 50},
                                       {NULL, 0}});
    /* Out of range, negative, missing value, not a boolean: defaults kept. */
    check_conf(probe, "huge_threshold:8m,narenas:-1,decay_ms,zero:yes", 4,
               (const char *const[]){"huge_threshold", "narenas", "decay_ms", "zero", NULL},
               (const struct expect[]){{"huge_threshold", 2 << 20},
                                       {"narenas", -1}, /* -1: any positive value */
                                       {"decay_ms", 5000},
                                       {"zero", 0},
                                       {NULL, 0}});
    /* A bad repeat leaves the earlier entry's value, not the default. */
    check_conf(probe, "tcache_total_mb:12,tcache_total_mb:abc", 1,
               (const char *const[]){"tcache_total_mb", NULL},
               (const struct expect[]){{"tcache_total_mb", 12}, {NULL, 0}});
    /* Any number of digits: 7 written with 25 leading zeros (until
     * 2026-12-06 a value of more than 20 characters was refused). */
    check_conf(probe, "decay_ms:00000000000000000000000007", 0, NULL,
               (const struct expect[]){{"decay_ms", 7}, {NULL, 0}});
    /* Unset: no output at all, defaults. */
    check_conf(probe, NULL, 0, NULL,
               (const struct expect[]){{"narenas", -1},
                                       {"tcache_scale", 100},
                                       {"huge_threshold", 2 << 20},
                                       {"huge_cache_mb", 64},
                                       {"decay_ms", 5000},
                                       {NULL, 0}});
    /* verbose prints one line per option at start-up. */
    probe_result_t r = run_probe(probe, "verbose:1", (char *[]){NULL});
    char *gen = generated_table();
    size_t nopts = count_lines_with(gen, "| `");
    size_t nlines = count_lines_with(r.err, "trimalloc: option ");
    if (nlines != nopts || !strstr(r.err, "trimalloc: option verbose = 1"))
        fail("TRIMALLOC_CONF=verbose:1: %zu option lines for %zu options; stderr:\n%s", nlines,
             nopts, r.err);
    else
        printf("conf: TRIMALLOC_CONF=verbose:1 lists all %zu options\n", nopts);
    free(gen);
    free(r.out);
    free(r.err);
    /* ... as the process got them: narenas as chosen, not 0, and
     * tcache_scale 0 under junk, as trimalloc_option_get reads them (until
     * 2026-12-06 it printed what TRIMALLOC_CONF said) */
    r = run_probe(probe, "verbose:1,junk:1", (char *[]){"narenas", NULL});
    long narenas = probe_value(&r, "narenas");
    char want[64];
    snprintf(want, sizeof want, "trimalloc: option narenas = %ld\n", narenas);
    if (narenas <= 0 || !strstr(r.err, want) || !strstr(r.err, "trimalloc: option tcache_scale = 0\n"))
        fail("TRIMALLOC_CONF=verbose:1,junk:1: expected narenas = %ld and tcache_scale = 0; "
             "stderr:\n%s", narenas, r.err);
    else
        printf("conf: TRIMALLOC_CONF=verbose:1,junk:1 prints the options in force\n");
    free(r.out);
    free(r.err);
}

/* ---- 3. the C API ----------------------------------------------------------------- */

static void expect_err(const char *what, int rc, int err, int want_err)
{
    if (rc != -1 || err != want_err)
        fail("%s: returned %d errno %d (%s), expected -1 errno %d (%s)", what, rc, err,
             strerror(err), want_err, strerror(want_err));
}

static void check_c_api(void)
{
    long v = 0, old = 0;
    int rc;

    errno = 0;
    rc = trimalloc_option_get("no_such_option", &v);
    expect_err("get(no_such_option)", rc, errno, EINVAL);
    errno = 0;
    rc = trimalloc_option_get("narenas", NULL);
    expect_err("get(narenas, NULL)", rc, errno, EINVAL);
    errno = 0;
    rc = trimalloc_option_get(NULL, &v);
    expect_err("get(NULL)", rc, errno, EINVAL);

    if (trimalloc_option_get("narenas", &v) != 0 || v < 1)
        fail("get(narenas) = %ld: the number of arenas in use, at least 1", v);
    trimalloc_stats_t st;
    trimalloc_stats_get(&st);
    if ((long)st.narenas != v)
        fail("get(narenas) = %ld but stats say %u arenas", v, st.narenas);

    errno = 0;
    rc = trimalloc_option_set("narenas", 2);
    expect_err("set(narenas) after start", rc, errno, EBUSY);
    errno = 0;
    rc = trimalloc_option_set("tcache_scale", 50);
    expect_err("set(tcache_scale) after start", rc, errno, EBUSY);
    errno = 0;
    rc = trimalloc_option_set("narenas", 100000);
    expect_err("set(narenas, out of range)", rc, errno, EINVAL);
    errno = 0;
    rc = trimalloc_option_set("huge_threshold", 1);
    expect_err("set(huge_threshold, 1)", rc, errno, EINVAL);
    errno = 0;
    rc = trimalloc_option_set("bogus", 1);
    expect_err("set(bogus)", rc, errno, EINVAL);

    if (trimalloc_option_get("decay_ms", &old) != 0)
        fail("get(decay_ms) failed");
    if (trimalloc_option_set("decay_ms", 1234) != 0)
        fail("set(decay_ms, 1234) failed: %s", strerror(errno));
    if (trimalloc_option_get("decay_ms", &v) != 0 || v != 1234)
        fail("get(decay_ms) after set = %ld", v);
    trimalloc_option_set("decay_ms", old);

    if (trimalloc_option_set("huge_threshold", 256 << 10) != 0)
        fail("set(huge_threshold, 256 KiB) failed: %s", strerror(errno));
    else {
        /* 512 KiB is now above the threshold: a huge block, own mapping. */
        trimalloc_stats_t a, b;
        trimalloc_stats_get(&a);
        void *p = malloc(512 << 10);
        trimalloc_stats_get(&b);
        if (!p || b.huge_allocated < a.huge_allocated + (512 << 10))
            fail("after set(huge_threshold, 256 KiB), malloc(512 KiB) is not a huge block");
        free(p);
        trimalloc_option_set("huge_threshold", 2 << 20);
    }
    printf("api: trimalloc_option_get/set return codes and errno as documented\n");
}

/* ---- 3. set-user-ID programs ignore TRIMALLOC_CONF ------------------------------ */

/* A copy of the probe, set-user-ID to nobody, run by root with
 * TRIMALLOC_CONF set: the kernel marks that run secure (AT_SECURE) and
 * the option must keep its default. Needs root, and a file system that
 * honours set-user-ID bits: skipped with a message otherwise. */
static void check_secure_mode(const char *probe)
{
    if (geteuid() != 0) {
        printf("SKIP: set-user-ID run (needs root)\n");
        return;
    }
    char copy[4096];
    snprintf(copy, sizeof copy, "%s_setuid", probe);
    char *bytes = NULL;
    FILE *in = fopen(probe, "rb");
    int out = open(copy, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    if (!in || out < 0) {
        fail("cannot copy %s to %s", probe, copy);
        if (in)
            fclose(in);
        if (out >= 0)
            close(out);
        return;
    }
    bytes = slurp_fd(fileno(in));
    fclose(in);
    struct stat st;
    if (stat(probe, &st) != 0 || !bytes || write(out, bytes, (size_t)st.st_size) != st.st_size ||
        close(out) != 0 || chown(copy, 65534, 65534) != 0 || chmod(copy, 04755) != 0) {
        fail("cannot make %s set-user-ID: %s", copy, strerror(errno));
        free(bytes);
        unlink(copy);
        return;
    }
    free(bytes);
    probe_result_t r = run_probe(copy, "narenas:3,verbose:1", (char *[]){"at_secure", "narenas", NULL});
    if (probe_value(&r, "at_secure") != 1) {
        printf("SKIP: set-user-ID run (not secure here: a nosuid file system, or the copy did not run: %s)\n",
               r.err ? r.err : "");
    } else {
        if (probe_value(&r, "narenas") == 3)
            fail("a set-user-ID program took narenas:3 from TRIMALLOC_CONF");
        if (r.err && *r.err)
            fail("a set-user-ID program printed on stderr: %s", r.err);
    }
    free(r.out);
    free(r.err);
    unlink(copy);
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "--print")) {
        fputs(TABLE_HEADER, stdout);
        fflush(stdout);
        trimalloc_options_markdown(1);
        return 0;
    }
    if (argc != 3) {
        fprintf(stderr, "usage: %s DOC PROBE | --print\n", argv[0]);
        return 2;
    }
    check_doc_table(argv[1]);
    check_conf_env(argv[2]);
    check_secure_mode(argv[2]);
    check_c_api();
    if (failures) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
