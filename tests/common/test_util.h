/*
 * test_util.h -- helpers shared by trimalloc's api and stress tests.
 *
 * Everything here is header-only (static functions) so each test is one
 * executable built from one .c file, in both library flavours:
 *   - prefixed: TRIMALLOC_PREFIX is defined, TM_API(malloc) is tm_malloc and
 *     the C library's own malloc stays in charge of everything else;
 *   - drop-in:  TM_API(malloc) is malloc, served by libtrimalloc.so.
 *
 * What is here:
 *   - TU_CHECK: an assertion usable from any thread (cmocka's assert_* may
 *     only be used on the thread running the test); it prints and aborts;
 *   - a small, fast PRNG (splitmix64) and a mostly-small size distribution;
 *   - pattern fill/verify: every byte of a block is a function of a 64-bit
 *     seed and its offset, so a byte that changed, moved or belongs to
 *     another block is caught, and a prefix stays valid after realloc;
 *   - the resident set size from /proc/self/statm;
 *   - thread helpers that check their return codes;
 *   - run scaling: TRIMALLOC_TEST_SCALE (a factor, default 1) multiplies
 *     iteration counts; sanitizer builds scale themselves down further.
 */
#ifndef TRIMALLOC_TEST_UTIL_H
#define TRIMALLOC_TEST_UTIL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memalign, pvalloc, reallocarray; the build defines it too */
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <dirent.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#include "trimalloc.h"

/* ---- Build flavour and sanitizers ------------------------------------- */

#if defined(__SANITIZE_THREAD__)
#define TU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TU_TSAN 1
#endif
#endif
#ifndef TU_TSAN
#define TU_TSAN 0
#endif

#if defined(__SANITIZE_ADDRESS__)
#define TU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TU_ASAN 1
#endif
#endif
#ifndef TU_ASAN
#define TU_ASAN 0
#endif

#ifdef TRIMALLOC_PREFIX
#define TU_FLAVOUR "prefixed"
#else
#define TU_FLAVOUR "drop-in"
#endif

#define TU_KIB ((size_t)1 << 10)
#define TU_MIB ((size_t)1 << 20)
#define TU_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- Checks usable from any thread ------------------------------------- */

/* Print "file:line: check failed: (cond) message" and abort. The message is
 * formatted into a stack buffer and written with write(2), so a broken
 * allocator cannot make the report itself fail. */
__attribute__((noreturn, format(printf, 4, 5), unused)) static void
tu_fail_at(const char *file, int line, const char *cond, const char *fmt, ...)
{
    char buf[768];
    size_t cap = sizeof buf - 1; /* room for the final newline */
    int n = snprintf(buf, cap, "%s:%d: check failed: (%s) ", file, line, cond);
    size_t len = n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + len, cap - len, fmt, ap);
    va_end(ap);
    if (m > 0)
        len += (size_t)m < cap - len ? (size_t)m : cap - len - 1;
    buf[len++] = '\n';
    ssize_t w = write(2, buf, len);
    (void)w;
    abort();
}

/* TU_CHECK(cond, "printf format", args...): the message is required. */
#define TU_CHECK(cond, ...)                                                                    \
    do {                                                                                       \
        if (!(cond))                                                                           \
            tu_fail_at(__FILE__, __LINE__, #cond, __VA_ARGS__);                                \
    } while (0)

/* Hide a value from the optimizer, so calls such as malloc(SIZE_MAX) are
 * really made at run time (and raise no compile-time size warnings). */
static inline size_t tu_opaque(size_t v)
{
    __asm__ volatile("" : "+r"(v));
    return v;
}

static inline void *tu_opaque_ptr(void *p)
{
    __asm__ volatile("" : "+r"(p));
    return p;
}

/* ---- Run scaling --------------------------------------------------------- */

/* The factor applied to iteration counts: TRIMALLOC_TEST_SCALE if set (a
 * positive decimal number), times a sanitizer penalty. */
static inline double tu_scale(void)
{
    double s = 1.0;
    const char *env = getenv("TRIMALLOC_TEST_SCALE");
    if (env && *env) {
        double v = strtod(env, NULL);
        if (v > 0)
            s = v;
    }
    if (TU_TSAN)
        s *= 0.1;
    else if (TU_ASAN)
        s *= 0.4;
    return s;
}

/* n scaled by tu_scale(), at least min_n. */
static inline long tu_scaled(long n, long min_n)
{
    double v = (double)n * tu_scale();
    long r = v > (double)LONG_MAX / 2 ? LONG_MAX / 2 : (long)v;
    return r < min_n ? min_n : r;
}

/* ---- Random numbers ------------------------------------------------------ */

typedef struct tu_rng {
    uint64_t s;
} tu_rng_t;

static inline void tu_rng_seed(tu_rng_t *r, uint64_t seed)
{
    r->s = seed ^ 0x6a09e667f3bcc909ULL;
}

/* splitmix64: one add, a few multiplies, good enough for tests. */
static inline uint64_t tu_rand(tu_rng_t *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [lo, hi] (inclusive). */
static inline size_t tu_rand_range(tu_rng_t *r, size_t lo, size_t hi)
{
    return lo + (size_t)(tu_rand(r) % (uint64_t)(hi - lo + 1));
}

/* True with probability pct/100. */
static inline int tu_chance(tu_rng_t *r, unsigned pct)
{
    return tu_rand(r) % 100 < pct;
}

/* A size from 1 B to huge_max, shaped like real programs: mostly small
 * (log-uniform 1 B..1 KiB), some medium (1 KiB..256 KiB) and per mille
 * huge_permille blocks above 256 KiB. */
static inline size_t tu_rand_size(tu_rng_t *r, size_t huge_max, unsigned huge_permille)
{
    uint64_t x = tu_rand(r);
    unsigned roll = (unsigned)(x % 1000);
    x >>= 10;
    if (roll < huge_permille && huge_max > 256 * TU_KIB)
        return tu_rand_range(r, 256 * TU_KIB + 1, huge_max);
    if (roll < huge_permille + 60) {
        /* log-uniform 1 KiB..256 KiB */
        unsigned shift = 10 + (unsigned)(x % 8);
        size_t base = (size_t)1 << shift;
        return base + (size_t)(tu_rand(r) % base);
    }
    /* log-uniform 1..1 KiB */
    unsigned shift = (unsigned)(x % 10);
    size_t base = (size_t)1 << shift;
    return base + (size_t)(tu_rand(r) % base);
}

/* ---- Byte patterns --------------------------------------------------------- */

/* Byte i of a block with seed s is byte (i % 8) of tu_pattern_word(s, i / 8).
 * The word depends on its index, so bytes that moved within a block are
 * caught as well as bytes that changed. */
static inline uint64_t tu_pattern_word(uint64_t seed, size_t k)
{
    uint64_t x = seed + (uint64_t)k * 0x9e3779b97f4a7c15ULL;
    x ^= x >> 31;
    x *= 0xd6e8feb86659fd93ULL;
    return x ^ (x >> 32);
}

/* A seed derived from the block's address, the owning thread and a
 * sequence number, so two blocks never share a pattern. */
static inline uint64_t tu_pattern_seed(const void *p, uint64_t thread, uint64_t seq)
{
    uint64_t x = (uint64_t)(uintptr_t)p ^ (thread << 48) ^ (seq * 0xff51afd7ed558ccdULL);
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 29);
}

/* Fill bytes [from, to) of p with the pattern of seed. */
static inline void tu_fill_range(void *p, size_t from, size_t to, uint64_t seed)
{
    unsigned char *b = (unsigned char *)p;
    size_t i = from;
    /* leading partial word */
    while (i < to && (i & 7)) {
        uint64_t w = tu_pattern_word(seed, i / 8);
        b[i] = (unsigned char)(w >> (8 * (i & 7)));
        i++;
    }
    for (; i + 8 <= to; i += 8) {
        uint64_t w = tu_pattern_word(seed, i / 8);
        __builtin_memcpy(b + i, &w, 8); /* little-endian: byte j of w is byte i+j */
    }
    for (; i < to; i++) {
        uint64_t w = tu_pattern_word(seed, i / 8);
        b[i] = (unsigned char)(w >> (8 * (i & 7)));
    }
}

static inline void tu_fill(void *p, size_t n, uint64_t seed)
{
    tu_fill_range(p, 0, n, seed);
}

/* Offset of the first byte in [from, to) that does not hold the pattern of
 * seed, or (size_t)-1 if all do. */
static inline size_t tu_find_bad_range(const void *p, size_t from, size_t to, uint64_t seed)
{
    const unsigned char *b = (const unsigned char *)p;
    size_t i = from;
    while (i < to && (i & 7)) {
        if (b[i] != (unsigned char)(tu_pattern_word(seed, i / 8) >> (8 * (i & 7))))
            return i;
        i++;
    }
    for (; i + 8 <= to; i += 8) {
        uint64_t w;
        __builtin_memcpy(&w, b + i, 8);
        if (w != tu_pattern_word(seed, i / 8))
            break; /* the byte loop below finds which byte */
    }
    for (; i < to; i++) {
        if (b[i] != (unsigned char)(tu_pattern_word(seed, i / 8) >> (8 * (i & 7))))
            return i;
    }
    return (size_t)-1;
}

static inline size_t tu_find_bad(const void *p, size_t n, uint64_t seed)
{
    return tu_find_bad_range(p, 0, n, seed);
}

/* Check the pattern from any thread; aborts with the block and offset. */
#define TU_CHECK_PATTERN(p, n, seed)                                                           \
    do {                                                                                       \
        size_t tu_bad_ = tu_find_bad((p), (n), (seed));                                        \
        TU_CHECK(tu_bad_ == (size_t)-1, "block %p size %zu: byte %zu corrupted (0x%02x)",      \
                 (void *)(p), (size_t)(n), tu_bad_,                                            \
                 tu_bad_ == (size_t)-1 ? 0u : ((const unsigned char *)(p))[tu_bad_]);           \
    } while (0)

/* Index of the first byte in p[0..n) that differs from c, or (size_t)-1. */
static inline size_t tu_find_not_byte(const void *p, size_t n, unsigned char c)
{
    const unsigned char *b = (const unsigned char *)p;
    uint64_t cw = 0x0101010101010101ULL * c;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        __builtin_memcpy(&w, b + i, 8);
        if (w != cw)
            break;
    }
    for (; i < n; i++)
        if (b[i] != c)
            return i;
    return (size_t)-1;
}

/* ---- Memory and the OS ----------------------------------------------------- */

/* Threads of this process whose name (comm) is `name`, e.g. the
 * allocator's background thread, "trimalloc-bg". */
static inline unsigned tu_threads_named(const char *name)
{
    DIR *d = opendir("/proc/self/task");
    unsigned n = 0;
    if (!d) return 0;
    size_t len = strlen(name);
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char path[300], comm[64] = "";
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue; /* a thread that has just exited */
        if (fgets(comm, sizeof comm, f)) n += strncmp(comm, name, len) == 0 && comm[len] == '\n';
        fclose(f);
    }
    closedir(d);
    return n;
}

static inline size_t tu_page_size(void)
{
    long ps = sysconf(_SC_PAGESIZE);
    return ps > 0 ? (size_t)ps : 4096;
}

/* Resident set size in bytes (second field of /proc/self/statm), or 0 if
 * it cannot be read. Uses open/read only: no stdio, no allocation. */
static inline size_t tu_rss_bytes(void)
{
    char buf[256];
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *s = buf;
    strtoull(s, &s, 10);                   /* size */
    unsigned long long res = strtoull(s, NULL, 10); /* resident */
    return (size_t)res * tu_page_size();
}

/* ---- Threads --------------------------------------------------------------- */

/* Run this test program again as a child, `/proc/self/exe child conf`, with
 * TRIMALLOC_CONF=conf (for start-up-only options); a child that hangs is
 * ended by SIGALRM after 60 s. Returns its exit status, 128 + the signal
 * that ended it, or -1. */
static inline int tu_run_self_child(const char *conf)
{
    pid_t pid = fork();
    if (pid == 0) {
        setenv("TRIMALLOC_CONF", conf, 1);
        alarm(60);
        execl("/proc/self/exe", "child", "child", conf, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Run fn() in a forked child (for a process-wide change, such as a
 * seccomp filter, that must not reach the other tests). Returns its exit
 * status: fn's return value, 128 + the signal that ended it, or -1. */
static inline int tu_run_forked(int (*fn)(void))
{
    pid_t pid = fork();
    if (pid == 0) {
        alarm(60);
        _exit(fn());
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* A system call the kernel should refuse (seccomp), with error err: every
 * call of number nr, or (arg2_is_set) only those whose third argument is
 * arg2 -- mprotect(..., PROT_NONE), say. */
typedef struct tu_refusal {
    int nr;
    int err;
    int arg2_is_set;
    unsigned arg2;
} tu_refusal_t;

/* A child's exit status for "this system has no seccomp filters" (a
 * container may refuse them): the test skips. */
#define TU_NO_SECCOMP 77

/* Make this process refuse the n calls of r (at most 8) from now on, for
 * good: use it in a child (tu_run_forked). 0 on success. */
static inline int tu_refuse_syscalls(const tu_refusal_t *r, unsigned n)
{
    struct sock_filter f[2 + 8 * 4];
    unsigned k = 0;
    if (n > 8)
        return -1;
    for (unsigned i = 0; i < n; i++) {
        f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
        if (r[i].arg2_is_set) {
            f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)r[i].nr, 0, 3);
            f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                                  offsetof(struct seccomp_data, args[2]));
            f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, r[i].arg2, 0, 1);
        } else {
            f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)r[i].nr, 0, 1);
        }
        f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K,
                                              SECCOMP_RET_ERRNO | ((unsigned)r[i].err & SECCOMP_RET_DATA));
    }
    f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = {(unsigned short)k, f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

static inline void tu_thread_create(pthread_t *t, void *(*fn)(void *), void *arg)
{
    int rc = pthread_create(t, NULL, fn, arg);
    TU_CHECK(rc == 0, "pthread_create: %s", strerror(rc));
}

static inline void *tu_thread_join(pthread_t t)
{
    void *ret = NULL;
    int rc = pthread_join(t, &ret);
    TU_CHECK(rc == 0, "pthread_join: %s", strerror(rc));
    return ret;
}

/* trimalloc does not count the process's initial thread when it binds a new
 * thread to an arena (arena.c, arena_choose_locked): the first thread the
 * main thread starts shares its arena (arena 0), so no block either of them
 * frees is remote to the other. A test that needs another thread on an
 * arena of its own holds that first place with an idle thread:
 * tu_arena_holder_start(), called from the main thread, binds it, then
 * returns once the holder has allocated (which binds that too);
 * tu_arena_holder_stop() ends the holder. */
static pthread_barrier_t tu_holder_bound, tu_holder_release;
static pthread_t tu_holder;

static inline void *tu_holder_main(void *arg)
{
    (void)arg;
    void *p = TM_API(malloc)(16);
    TU_CHECK(p != NULL, "malloc(16) failed");
    TM_API(free)(p);
    pthread_barrier_wait(&tu_holder_bound);
    pthread_barrier_wait(&tu_holder_release);
    return NULL;
}

static inline void tu_arena_holder_start(void)
{
    void *p = TM_API(malloc)(16); /* the caller is bound first, to arena 0 */
    TU_CHECK(p != NULL, "malloc(16) failed");
    TM_API(free)(p);
    TU_CHECK(pthread_barrier_init(&tu_holder_bound, NULL, 2) == 0, "pthread_barrier_init");
    TU_CHECK(pthread_barrier_init(&tu_holder_release, NULL, 2) == 0, "pthread_barrier_init");
    tu_thread_create(&tu_holder, tu_holder_main, NULL);
    pthread_barrier_wait(&tu_holder_bound);
}

static inline void tu_arena_holder_stop(void)
{
    pthread_barrier_wait(&tu_holder_release);
    tu_thread_join(tu_holder);
    pthread_barrier_destroy(&tu_holder_bound);
    pthread_barrier_destroy(&tu_holder_release);
}

static inline void tu_lock(pthread_mutex_t *m)
{
    int rc = pthread_mutex_lock(m);
    TU_CHECK(rc == 0, "pthread_mutex_lock: %s", strerror(rc));
}

static inline void tu_unlock(pthread_mutex_t *m)
{
    int rc = pthread_mutex_unlock(m);
    TU_CHECK(rc == 0, "pthread_mutex_unlock: %s", strerror(rc));
}

/* ---- Blocks that remember their pattern ------------------------------------ */

/* A live block in a test: where it is, how many bytes the test asked for and
 * the seed its bytes were filled with. */
typedef struct tu_block {
    unsigned char *p;
    size_t size;
    uint64_t seed;
} tu_block_t;

/* malloc + fill; aborts on NULL. */
static inline tu_block_t tu_block_new(size_t size, uint64_t thread, uint64_t seq)
{
    tu_block_t b;
    b.p = (unsigned char *)TM_API(malloc)(size);
    TU_CHECK(b.p != NULL, "malloc(%zu) failed", size);
    TU_CHECK(((uintptr_t)b.p & 15) == 0, "malloc(%zu) = %p not 16-byte aligned", size,
             (void *)b.p);
    b.size = size;
    b.seed = tu_pattern_seed(b.p, thread, seq);
    tu_fill(b.p, size, b.seed);
    return b;
}

static inline void tu_block_check(const tu_block_t *b)
{
    TU_CHECK_PATTERN(b->p, b->size, b->seed);
}

/* verify + free */
static inline void tu_block_free(tu_block_t *b)
{
    if (b->p) {
        tu_block_check(b);
        TM_API(free)(b->p);
    }
    b->p = NULL;
    b->size = 0;
}

/* The whole heap is consistent: _heapchk() walks every arena. _HEAPEMPTY
 * (nothing allocated yet, as in the CRT) is as good as _HEAPOK. */
static inline void tu_heap_ok(void)
{
    int rc = TM_API(_heapchk)();
    TU_CHECK(rc == _HEAPOK || rc == _HEAPEMPTY, "_heapchk() = %d", rc);
}

/* _heapmin() returns 0 and leaves errno alone. */
static inline void tu_heapmin_ok(void)
{
    errno = 12345;
    int rc = TM_API(_heapmin)();
    int e = errno;
    TU_CHECK(rc == 0, "_heapmin() = %d", rc);
    TU_CHECK(e == 12345, "_heapmin() changed errno to %d", e);
}

#endif /* TRIMALLOC_TEST_UTIL_H */
