/*
 * heapmin_contract.c -- what _heapmin() and its glibc cousins promise, as
 * seen through the public API only:
 *   - _heapmin() returns 0 and leaves errno alone, in every state of the
 *     heap (first call, nothing to release, a spike to release, repeated);
 *   - it really releases: the counters of trimalloc_stats_get() move, the
 *     thread caches end empty, and the resident set shrinks;
 *   - where the OS cannot release memory (madvise and munmap refused, here
 *     with seccomp in a child process), it returns -1 with errno ENOSYS --
 *     and a refused purge must not make calloc() trust memory that was
 *     never zeroed;
 *   - malloc_trim(0) returns 1 after a freed spike; mallinfo2() numbers are
 *     plausible; malloc_stats() prints a report that names trimalloc.
 * Threads (idle, exited, busy) are the stress tests' business
 * (tests/stress/heapmin_*.c).
 */
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>

#include "test_cmocka.h"

#define ERRNO_SENTINEL 12345

/* The whole heap is consistent: _heapchk() (heap_crt.c) walks every arena.
 * _HEAPEMPTY (nothing allocated yet, as in the CRT) is as good as _HEAPOK. */
static void heap_ok(void)
{
    int rc = TM_API(_heapchk)();
    if (rc != _HEAPOK && rc != _HEAPEMPTY)
        fail_msg("_heapchk() = %d, expected _HEAPOK (%d)", rc, _HEAPOK);
}

/* _heapmin() with errno preset: returns 0, errno unchanged. */
static void heapmin_ok(void)
{
    errno = ERRNO_SENTINEL;
    int rc = TM_API(_heapmin)();
    int e = errno;
    if (rc != 0)
        fail_msg("_heapmin() = %d (errno %d), expected 0", rc, e);
    if (e != ERRNO_SENTINEL)
        fail_msg("_heapmin() changed errno from %d to %d (%s)", ERRNO_SENTINEL, e, strerror(e));
    heap_ok();
}

static trimalloc_stats_t stats(void)
{
    trimalloc_stats_t st;
    memset(&st, 0xff, sizeof st);
    assert_int_equal(TM_API(trimalloc_stats_get)(&st), 0);
    return st;
}

/* A spike the main thread allocates and frees: n blocks of mixed sizes (small,
 * large runs and huge mappings), every page written; returns its bytes. */
#define SPIKE_MAX 4096
static tu_block_t spike_blocks[SPIKE_MAX];

static size_t spike_alloc(size_t total, uint64_t seed)
{
    tu_rng_t rng;
    tu_rng_seed(&rng, seed);
    size_t bytes = 0;
    int n = 0;
    while (bytes < total && n < SPIKE_MAX) {
        size_t sz;
        unsigned roll = (unsigned)(tu_rand(&rng) % 100);
        if (roll < 60)
            sz = tu_rand_range(&rng, 16, 4096);
        else if (roll < 95)
            sz = tu_rand_range(&rng, 33 * TU_KIB, 512 * TU_KIB);
        else
            sz = tu_rand_range(&rng, 3 * TU_MIB, 6 * TU_MIB);
        spike_blocks[n] = tu_block_new(sz, 1, (uint64_t)n);
        bytes += sz;
        n++;
    }
    return bytes;
}

static void spike_free(void)
{
    for (int i = 0; i < SPIKE_MAX; i++)
        tu_block_free(&spike_blocks[i]);
}

/* ---- _heapmin: return value and errno ---------------------------------------- */

static void test_heapmin_returns_zero_errno_kept(void **state)
{
    (void)state;
    heapmin_ok(); /* maybe the very first allocator call of the process */
    heapmin_ok(); /* nothing to release */
    void *p = TM_API(malloc)(100);
    assert_non_null(p);
    heapmin_ok(); /* a live block in the caller's own slab */
    TM_API(free)(p);
    heapmin_ok(); /* the caller's cache holds it */
    spike_alloc(32 * TU_MIB, 1);
    heapmin_ok(); /* everything live: nothing to release */
    spike_free();
    heapmin_ok(); /* a freed spike */
    for (int i = 0; i < 20; i++)
        heapmin_ok(); /* back to back */
}

/* errno is kept whatever value it had, including 0 and the values the
 * calls inside _heapmin could set (ENOMEM, EINVAL, EAGAIN, ENOSYS). */
static void test_heapmin_keeps_any_errno(void **state)
{
    (void)state;
    static const int values[] = {0, ENOMEM, EINVAL, EAGAIN, ENOSYS, EPERM, INT_MAX};
    for (size_t i = 0; i < TU_ARRAY_LEN(values); i++) {
        spike_alloc(4 * TU_MIB, 10 + i);
        spike_free();
        errno = values[i];
        int rc = TM_API(_heapmin)();
        int e = errno;
        assert_int_equal(rc, 0);
        if (e != values[i])
            fail_msg("_heapmin() changed errno from %d to %d", values[i], e);
    }
}

/* ---- _heapmin releases, and says so in the statistics ------------------------- */

static void test_heapmin_releases(void **state)
{
    (void)state;
    heapmin_ok();
    trimalloc_stats_t s0 = stats();
    size_t rss0 = tu_rss_bytes();
    size_t spike = spike_alloc(96 * TU_MIB, 2);
    size_t rss_peak = tu_rss_bytes();
    trimalloc_stats_t s1 = stats();
    assert_true(s1.allocated >= s0.allocated + spike);
    spike_free();
    heapmin_ok();
    trimalloc_stats_t s2 = stats();
    size_t rss2 = tu_rss_bytes();

    assert_int_equal(s2.heapmin_calls, s1.heapmin_calls + 1);
    /* most of the spike was released, by this very call */
    if (s2.heapmin_bytes_released - s1.heapmin_bytes_released < spike / 2)
        fail_msg("the call released %zu bytes of a %zu-byte spike",
                 (size_t)(s2.heapmin_bytes_released - s1.heapmin_bytes_released), spike);
    assert_true(s2.released >= s1.released + spike / 2);
    assert_int_equal(s2.tcache_bytes, 0); /* one thread, and it was the caller */
    assert_true(s2.allocated <= s0.allocated + TU_MIB);
    assert_true(s2.mapped < s1.mapped);
    /* RSS: the spike was resident (every page written) and is gone; half
     * of it is a margin no allocator bookkeeping comes near */
    /* (not under TSan: its shadow memory, four times the application's,
     * follows every write and is not given back by our madvise) */
    if (rss0 && rss_peak && !TU_TSAN) {
        print_message("rss: before %zu KiB, peak %zu KiB, after _heapmin %zu KiB\n", rss0 >> 10,
                      rss_peak >> 10, rss2 >> 10);
        assert_true(rss_peak >= rss0 + spike / 2);
        if (rss2 > rss0 + spike / 4)
            fail_msg("RSS after _heapmin %zu KiB, %zu KiB above the start (spike %zu KiB)",
                     rss2 >> 10, (rss2 - rss0) >> 10, spike >> 10);
    }
}

/* ---- malloc_trim, mallinfo2, malloc_stats -------------------------------------- */

static void test_malloc_trim_after_spike(void **state)
{
    (void)state;
    spike_alloc(32 * TU_MIB, 3);
    spike_free();
    int saved = errno = ERRNO_SENTINEL;
    int rc = TM_API(malloc_trim)(0);
    int e = errno;
    assert_int_equal(rc, 1);
    assert_int_equal(e, saved);
    heap_ok();
    /* pad is accepted and ignored */
    spike_alloc(8 * TU_MIB, 4);
    spike_free();
    assert_int_equal(TM_API(malloc_trim)(1 << 20), 1);
    rc = TM_API(malloc_trim)(0); /* little or nothing left: 0 or 1, never more */
    assert_true(rc == 0 || rc == 1);
}

/* Pages inside slabs that hold no live block go back with a trim, once: a
 * second trim with nothing freed in between finds nothing to give back,
 * returns 0 and counts nothing, and `resident` went down with the pages.
 * Until 2026-12-06 every trim gave the same pages back again, counted
 * them again and returned 1, and `resident` never counted them out (an
 * outside tester: 5 calls in a row "released" 292 MiB each of a heap
 * whose RSS stayed at 200 MiB). Blocks of 5000 B (slabs of 5 pages, 4
 * blocks), three of every four freed. */
static void test_second_trim_finds_nothing(void **state)
{
    (void)state;
    enum { N = 4096 };
    size_t sz = 5000;
    static void *b[N];
    TM_API(malloc_trim)(0);
    for (int i = 0; i < N; i++) {
        b[i] = TM_API(malloc)(sz);
        assert_non_null(b[i]);
        tu_fill(b[i], sz, (uint64_t)i);
    }
    for (int i = 0; i < N; i++)
        if (i % 4) {
            TM_API(free)(b[i]);
            b[i] = NULL;
        }
    trimalloc_stats_t s0, s1, s2;
    assert_int_equal(TM_API(trimalloc_stats_get)(&s0), 0);
    assert_int_equal(TM_API(malloc_trim)(0), 1);
    assert_int_equal(TM_API(trimalloc_stats_get)(&s1), 0);
    assert_int_equal(TM_API(malloc_trim)(0), 0);
    assert_int_equal(TM_API(trimalloc_stats_get)(&s2), 0);
    assert_int_equal(s2.heapmin_bytes_released, s1.heapmin_bytes_released);
    assert_int_equal(s2.released, s1.released);
    size_t gone = s1.heapmin_bytes_released - s0.heapmin_bytes_released;
    if (gone < (size_t)N * sz / 2) /* three quarters of the blocks were freed */
        fail_msg("the first trim released %zu bytes of %zu freed", gone, (size_t)N * sz * 3 / 4);
    /* resident counts the slab pages given back out: the blocks kept, one
     * in a slab of 5 pages, keep 2 of its pages (8 KiB for 5000 B), and
     * the metadata and the test's own blocks stay; the five pages of each
     * slab would make it 4 times the kept bytes */
    print_message("resident %zu -> %zu KiB, allocated %zu KiB, metadata %zu KiB\n",
                  s0.resident >> 10, s1.resident >> 10, s1.allocated >> 10, s1.metadata >> 10);
    if (s1.resident > s1.metadata + s1.allocated * 2 + 2 * TU_MIB)
        fail_msg("resident %zu bytes after the trim, for %zu allocated and %zu of metadata",
                 s1.resident, s1.allocated, s1.metadata);
    assert_int_equal(s2.resident, s1.resident);
    for (int i = 0; i < N; i += 4) {
        assert_pattern(b[i], sz, (uint64_t)i);
        TM_API(free)(b[i]);
    }
    heap_ok();
}

static void test_mallinfo2_plausible(void **state)
{
    (void)state;
    heapmin_ok();
    struct mallinfo2 m0 = TM_API(mallinfo2)();
    size_t held = 0, huge = 0;
    enum { N = 64 };
    void *small[N], *large[N], *big[4];
    for (int i = 0; i < N; i++) {
        small[i] = TM_API(malloc)(200);
        large[i] = TM_API(malloc)(100 * TU_KIB);
        assert_non_null(small[i]);
        assert_non_null(large[i]);
        memset(large[i], 1, 100 * TU_KIB);
        held += TM_API(malloc_usable_size)(small[i]) + TM_API(malloc_usable_size)(large[i]);
    }
    for (int i = 0; i < 4; i++) {
        big[i] = TM_API(malloc)(5 * TU_MIB);
        assert_non_null(big[i]);
        huge += TM_API(malloc_usable_size)(big[i]);
    }
    held += huge;
    struct mallinfo2 m1 = TM_API(mallinfo2)();
    print_message("mallinfo2: arena %zu, hblkhd %zu, uordblks %zu, fordblks %zu, fsmblks %zu\n",
                  m1.arena, m1.hblkhd, m1.uordblks, m1.fordblks, m1.fsmblks);
    assert_true(m1.uordblks >= held);              /* every byte we hold, at least */
    assert_true(m1.uordblks >= m0.uordblks + held - TU_MIB); /* ... and it grew by them */
    assert_true(m1.hblkhd >= huge);                /* huge blocks are mapped chunks */
    assert_true(m1.arena + m1.hblkhd >= m1.uordblks); /* what is held is mapped */
    assert_true(m1.uordblks < (size_t)1 << 40);    /* no wrapped subtraction */
    assert_true(m1.fordblks < (size_t)1 << 40);
    for (int i = 0; i < N; i++) {
        TM_API(free)(small[i]);
        TM_API(free)(large[i]);
    }
    for (int i = 0; i < 4; i++)
        TM_API(free)(big[i]);
    heapmin_ok();
    struct mallinfo2 m2 = TM_API(mallinfo2)();
    assert_true(m2.uordblks + held - TU_MIB <= m1.uordblks);
    assert_int_equal(m2.fsmblks, 0); /* thread-cache bytes: drained */
    assert_true(m2.hblkhd + huge <= m1.hblkhd); /* the huge mappings went back */
}

/* Run fn with fd 2 redirected to a temporary file; returns what it wrote. */
static size_t capture_stderr(void (*fn)(void), char *out, size_t cap)
{
    char path[] = "/tmp/tm_heapmin_contract_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    fflush(stderr);
    int saved = dup(2);
    assert_true(saved >= 0);
    assert_true(dup2(fd, 2) == 2);
    fn();
    fflush(stderr);
    assert_true(dup2(saved, 2) == 2);
    close(saved);
    off_t len = lseek(fd, 0, SEEK_END);
    assert_true(len >= 0);
    size_t n = (size_t)len < cap - 1 ? (size_t)len : cap - 1;
    assert_true(pread(fd, out, n, 0) == (ssize_t)n);
    out[n] = '\0';
    close(fd);
    return n;
}

static void call_malloc_stats(void)
{
    TM_API(malloc_stats)();
}

static void test_malloc_stats_prints(void **state)
{
    (void)state;
    void *p = TM_API(malloc)(1000);
    assert_non_null(p);
    static char buf[16384];
    size_t n = capture_stderr(call_malloc_stats, buf, sizeof buf);
    TM_API(free)(p);
    assert_true(n > 0);
    if (!strstr(buf, "trimalloc"))
        fail_msg("malloc_stats() output does not mention trimalloc:\n%s", buf);
    if (!strstr(buf, "_heapmin"))
        fail_msg("malloc_stats() output does not report _heapmin:\n%s", buf);
}

/* ---- when the OS refuses ---------------------------------------------------------
 * A child process forbids itself madvise and munmap (seccomp, errno ENOSYS),
 * frees a spike and calls _heapmin. Nothing can be given back, so the
 * contract says -1 with errno ENOSYS. The child reports through its exit
 * status: 0 pass, 10+ a numbered check failed (see the messages below);
 * 77 seccomp is unavailable here (the test is skipped). */

#if defined(__x86_64__)
#define TU_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define TU_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

#if defined(TU_AUDIT_ARCH) && !TU_ASAN && !TU_TSAN
#define HAVE_REFUSE 1
#ifndef __NR_process_madvise
#define __NR_process_madvise 440 /* the same number on every architecture */
#endif

/* With all = 1, madvise, process_madvise and munmap fail with ENOSYS; with
 * all = 0 only process_madvise does (as on a kernel that predates it, or
 * refuses it for the caller itself); with all = -1 process_madvise kills
 * the process, as a filter that does not list it may. Every other call is
 * allowed. */
static int refuse_release_calls(int all)
{
    unsigned refuse = all < 0 ? SECCOMP_RET_KILL_PROCESS
                              : SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA);
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TU_AUDIT_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_process_madvise, 3, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, all > 0 ? __NR_madvise : ~0u, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, all > 0 ? __NR_munmap : ~0u, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, refuse),
    };
    struct sock_fprog prog = {.len = (unsigned short)TU_ARRAY_LEN(f), .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

static int refuse_release(void) { return refuse_release_calls(1); }

/* Fork, run body in the child (exit status = its return), and return the
 * status; skips the test when the child says seccomp is unavailable. */
static int in_child_refusing(int (*refuse)(void), int (*body)(void))
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (refuse() != 0)
            _exit(77);
        _exit(body());
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status))
        fail_msg("child died with signal %d", WIFSIGNALED(status) ? WTERMSIG(status) : -1);
    if (WEXITSTATUS(status) == 77)
        skip();
    return WEXITSTATUS(status);
}

static int in_refusing_child(int (*body)(void)) { return in_child_refusing(refuse_release, body); }

static int child_enosys(void)
{
    /* a spike of large runs and huge mappings, beside a block that keeps
     * the first chunk in use */
    void *keep = TM_API(malloc)(64 * TU_KIB);
    void *b[64];
    for (int i = 0; i < 64; i++) {
        b[i] = TM_API(malloc)(i % 8 ? 256 * TU_KIB : 3 * TU_MIB);
        if (!b[i])
            return 10;
        memset(b[i], 0xab, i % 8 ? 256 * TU_KIB : 3 * TU_MIB);
    }
    for (int i = 0; i < 64; i++)
        TM_API(free)(b[i]);
    errno = ERRNO_SENTINEL;
    int rc = TM_API(_heapmin)();
    int e = errno;
    TM_API(free)(keep);
    if (rc != -1)
        return 11; /* returned something other than -1 */
    if (e != ENOSYS)
        return 12; /* errno is not ENOSYS */
    return 0;
}

static void test_heapmin_enosys_when_os_refuses(void **state)
{
    (void)state;
    int st = in_refusing_child(child_enosys);
    if (st == 11)
        fail_msg("_heapmin() returned 0 although madvise and munmap failed with ENOSYS "
                 "(contract: -1, errno ENOSYS, where the OS cannot release memory)");
    if (st == 12)
        fail_msg("_heapmin() returned -1 but errno is not ENOSYS");
    assert_int_equal(st, 0);
}

/* free() keeps errno (POSIX.1-2024) even where the system calls behind it
 * fail: a huge block unmapped at once (no huge cache), large runs and
 * small blocks, whose frees may purge. Until 2026-12-06 a refused munmap
 * left its errno behind (an outside tester). 20 + i: the i-th free
 * changed errno. */
static int child_free_keeps_errno(void)
{
    if (TM_API(trimalloc_option_set)("huge_cache_mb", 0) != 0)
        return 10;
    enum { N = 96 };
    void *b[N];
    for (int i = 0; i < N; i++) {
        size_t sz = i % 3 == 0 ? 5 * TU_MIB : i % 3 == 1 ? 300 * TU_KIB : 100;
        b[i] = TM_API(malloc)(sz);
        if (!b[i])
            return 11;
        memset(b[i], 0xab, sz);
    }
    for (int i = 0; i < N; i++) {
        errno = ERRNO_SENTINEL;
        TM_API(free)(b[i]);
        if (errno != ERRNO_SENTINEL)
            return 20 + i % 3;
    }
    return 0;
}

static void test_free_keeps_errno_when_os_refuses(void **state)
{
    (void)state;
    int st = in_refusing_child(child_free_keeps_errno);
    if (st >= 20)
        fail_msg("free() of a %s changed errno when munmap and madvise failed",
                 st == 20 ? "huge block" : st == 21 ? "large block" : "small block");
    assert_int_equal(st, 0);
}

/* The only pages left to give back are free pages inside slabs that still
 * hold live blocks, and the kernel refuses them: -1 with ENOSYS too. Until
 * 2026-12-07 the slab pages' refusals were not counted, and _heapmin
 * returned 0 (an outside tester, reading the code). Set up before the
 * filter: blocks of 1000 B (1 KiB slabs of 8 blocks in 2 pages), every
 * eighth kept; a _heapmin leaves nothing else dirty; six of the other
 * seven of each eight are allocated, written and freed again (fewer than
 * the slabs' free blocks, so no new slab is made, which would leave an
 * empty run to give back), and the slabs' second pages are in memory with
 * no live block on them (in the thread's cache until _heapmin drains
 * it). */
enum { SLAB_N = 512 };
static void *slab_blocks[SLAB_N];

static int refuse_after_dirty_slab_pages(void)
{
    for (int i = 0; i < SLAB_N; i++) {
        if (!(slab_blocks[i] = TM_API(malloc)(1000)))
            return -1;
        memset(slab_blocks[i], 0x11, 1000);
    }
    for (int i = 0; i < SLAB_N; i++)
        if (i % 8)
            TM_API(free)(slab_blocks[i]);
    (void)TM_API(_heapmin)();
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < SLAB_N; i++) {
            if (i % 8 < 2)
                continue;
            if (round == 0) {
                if (!(slab_blocks[i] = TM_API(malloc)(1000)))
                    return -1;
                memset(slab_blocks[i], 0x22, 1000);
            } else {
                TM_API(free)(slab_blocks[i]);
            }
        }
    return refuse_release();
}

static int child_enosys_slab_pages(void)
{
    errno = ERRNO_SENTINEL;
    int rc = TM_API(_heapmin)();
    int e = errno;
    for (int i = 0; i < SLAB_N; i += 8)
        if (tu_find_not_byte(slab_blocks[i], 1000, 0x11) != (size_t)-1)
            return 13;
    if (rc != -1)
        return 11;
    if (e != ENOSYS)
        return 12;
    return 0;
}

static void test_heapmin_enosys_when_slab_pages_refused(void **state)
{
    (void)state;
    int st = in_child_refusing(refuse_after_dirty_slab_pages, child_enosys_slab_pages);
    if (st == 11)
        fail_msg("_heapmin() returned 0 although the kernel refused the free pages of the slabs");
    if (st == 12)
        fail_msg("_heapmin() returned -1 but errno is not ENOSYS");
    if (st == 13)
        fail_msg("a kept block changed");
    assert_int_equal(st, 0);
}

/* A purge the kernel refused leaves the pages as they were: calloc() must
 * not take them for zeroed afterwards. */
static int child_calloc_after_refused_purge(void)
{
    enum { N = 48 };
    size_t sz = 200 * TU_KIB; /* a large run, inside a chunk */
    void *keep = TM_API(malloc)(sz); /* keeps the chunk from being empty */
    void *b[N];
    for (int i = 0; i < N; i++) {
        b[i] = TM_API(malloc)(sz);
        if (!b[i])
            return 10;
        memset(b[i], 0xab, sz);
    }
    for (int i = 0; i < N; i++)
        TM_API(free)(b[i]);
    (void)TM_API(_heapmin)(); /* every madvise fails */
    for (int i = 0; i < N; i++) {
        b[i] = TM_API(calloc)(1, sz);
        if (!b[i])
            return 10;
        if (tu_find_not_byte(b[i], sz, 0) != (size_t)-1)
            return 13;
    }
    for (int i = 0; i < N; i++)
        TM_API(free)(b[i]);
    TM_API(free)(keep);
    return 0;
}

static void test_calloc_zero_after_refused_purge(void **state)
{
    (void)state;
    int st = in_refusing_child(child_calloc_after_refused_purge);
    if (st == 13)
        fail_msg("calloc() returned non-zero bytes after _heapmin's madvise failed: the "
                 "purge marks runs zeroed whether or not madvise succeeded");
    assert_int_equal(st, 0);
}

/* Without process_madvise, _heapmin gives the pages back one madvise per
 * range, as before it used the call: the freed runs are no longer
 * resident afterwards. */
static int refuse_vector(void) { return refuse_release_calls(0); }

static int child_heapmin_without_process_madvise(void)
{
    enum { N = 48 };
    size_t sz = 200 * TU_KIB, page = (size_t)sysconf(_SC_PAGESIZE);
    void *keep = TM_API(malloc)(sz); /* keeps the chunk mapped: mincore can look */
    char *b[N];
    for (int i = 0; i < N; i++) {
        b[i] = TM_API(malloc)(sz);
        if (!b[i])
            return 10;
        memset(b[i], 0xab, sz);
    }
    /* every other block freed: runs apart from each other, many ranges */
    for (int i = 0; i < N; i += 2)
        TM_API(free)(b[i]);
    if (TM_API(_heapmin)() != 0)
        return 14;
    size_t resident = 0, total = 0;
    for (int i = 0; i < N; i += 2) {
        unsigned char v[256];
        char *lo = (char *)(((uintptr_t)b[i] + page - 1) & ~(uintptr_t)(page - 1));
        size_t n = ((size_t)(b[i] + sz - lo)) / page;
        if (n > sizeof v || mincore(lo, n * page, v) != 0)
            return 15;
        for (size_t k = 0; k < n; k++)
            resident += v[k] & 1;
        total += n;
    }
    for (int i = 1; i < N; i += 2) { /* the held ones kept their bytes */
        if (tu_find_not_byte(b[i], sz, 0xab) != (size_t)-1)
            return 16;
        TM_API(free)(b[i]);
    }
    TM_API(free)(keep);
    return resident * 10 > total ? 17 : 0;
}

/* Under a filter that kills for process_madvise, _heapmin must not make
 * the call at all: it reads "Seccomp:" in /proc/self/status first. */
static int kill_on_vector(void) { return refuse_release_calls(-1); }

static void test_heapmin_never_vectors_under_a_filter(void **state)
{
    (void)state;
    /* in_child_refusing fails the test if the child dies of a signal: here
     * SIGSYS would mean _heapmin called process_madvise under the filter */
    assert_int_equal(in_child_refusing(kill_on_vector, child_heapmin_without_process_madvise), 0);
}

/* A seccomp filter belongs to a thread: one thread can install its own,
 * which the main thread does not have (and /proc/self/status, the main
 * thread's, then still says "Seccomp: 0"). That thread calling _heapmin
 * must not make the call its filter kills for. */
static int no_filter(void) { return 0; }

static void *filtered_thread(void *arg)
{
    *(int *)arg = kill_on_vector() != 0 ? 77 : child_heapmin_without_process_madvise();
    return NULL;
}

static int child_heapmin_in_filtered_thread(void)
{
    int st = 10;
    pthread_t t;
    if (pthread_create(&t, NULL, filtered_thread, &st) != 0 || pthread_join(t, NULL) != 0)
        return 10;
    return st;
}

static void test_heapmin_in_a_filtered_thread(void **state)
{
    (void)state;
    /* SIGSYS (the child dies of a signal) would mean _heapmin read the main
     * thread's seccomp status, not its own, and called process_madvise */
    int st = in_child_refusing(no_filter, child_heapmin_in_filtered_thread);
    if (st == 77)
        skip();
    if (st == 17)
        fail_msg("freed runs still resident after _heapmin() in a thread with a filter");
    assert_int_equal(st, 0);
}

static void test_heapmin_without_process_madvise(void **state)
{
    (void)state;
    int st = in_child_refusing(refuse_vector, child_heapmin_without_process_madvise);
    if (st == 14)
        fail_msg("_heapmin() failed although only process_madvise was refused");
    if (st == 17)
        fail_msg("freed runs still resident after _heapmin() with process_madvise refused: "
                 "no fallback to madvise");
    if (st == 16)
        fail_msg("a block the program holds lost its bytes");
    assert_int_equal(st, 0);
}
#endif /* HAVE_REFUSE */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heapmin_returns_zero_errno_kept),
        cmocka_unit_test(test_heapmin_keeps_any_errno),
        cmocka_unit_test(test_heapmin_releases),
        cmocka_unit_test(test_malloc_trim_after_spike),
        cmocka_unit_test(test_second_trim_finds_nothing),
        cmocka_unit_test(test_mallinfo2_plausible),
        cmocka_unit_test(test_malloc_stats_prints),
#ifdef HAVE_REFUSE
        cmocka_unit_test(test_heapmin_enosys_when_os_refuses),
        cmocka_unit_test(test_heapmin_enosys_when_slab_pages_refused),
        cmocka_unit_test(test_free_keeps_errno_when_os_refuses),
        cmocka_unit_test(test_calloc_zero_after_refused_purge),
        cmocka_unit_test(test_heapmin_without_process_madvise),
        cmocka_unit_test(test_heapmin_never_vectors_under_a_filter),
        cmocka_unit_test(test_heapmin_in_a_filtered_thread),
#endif
    };
    return cmocka_run_group_tests_name("api_heapmin_contract (" TU_FLAVOUR ")", tests, NULL,
                                       NULL);
}
