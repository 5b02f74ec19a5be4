/*
 * os.c -- the only file that asks the kernel for memory or barriers.
 *
 * Contract: sizes and addresses are page multiples; failures return NULL or
 * -1 and never abort. A fault-injection hook (os_set_fail_after) makes the
 * n-th subsequent mapping fail, so out-of-memory paths can be tested.
 *
 * On x86-64 the system calls are made directly (os_sys below), not through
 * libc's wrappers: each wrapper lives on its own stretch of libc's text,
 * and the kernel maps up to 64 KiB of already-cached file pages around
 * every page a process first executes (fault-around), so a wrapper that
 * the program itself never calls costs a small process up to 64 KiB of
 * resident libc text (measured: sched_getaffinity and the mmap family
 * added such windows). Sanitizer builds keep the wrappers, which the
 * sanitizers intercept to track mappings.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <linux/membarrier.h>
#include <sched.h>
#include <signal.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define OS_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer)
#define OS_SANITIZED 1
#endif
#endif
#if !defined(OS_SANITIZED) && TM_TSAN
#define OS_SANITIZED 1
#endif

#if defined(__x86_64__) && defined(__linux__) && !defined(OS_SANITIZED)
#define OS_RAW 1
/* A system call without libc: returns the result, or -errno. */
static inline long os_sys(long nr, long a, long b, long c, long d, long e, long f) {
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#else
#define OS_RAW 0
static inline long os_sys(long nr, long a, long b, long c, long d, long e, long f) {
    long r = syscall(nr, a, b, c, d, e, f);
    return r == -1 ? -errno : r;
}
#endif

/* hint: where the mapping should go if that spot is free (no MAP_FIXED:
 * the kernel picks another spot otherwise), or NULL */
static void *os_mmap_hint(void *hint, size_t size) {
    int prot = PROT_READ | PROT_WRITE, flags = MAP_PRIVATE | MAP_ANONYMOUS;
#if OS_RAW
    long r = os_sys(SYS_mmap, (long)hint, (long)size, prot, flags, -1, 0);
    return (unsigned long)r > -4096ul ? NULL : (void *)r;
#else
    void *p = mmap(hint, size, prot, flags, -1, 0);
    return p == MAP_FAILED ? NULL : p;
#endif
}

static void *os_mmap(size_t size) { return os_mmap_hint(NULL, size); }

/* 0 or -1, errno untouched: free() reaches it (huge blocks, empty chunks),
 * and POSIX says free() does not change errno. Until 2026-12-06 a refused
 * munmap left its errno behind (an outside tester, with a seccomp filter);
 * no caller reads it. */
static int os_munmap(void *p, size_t size) {
#if OS_RAW
    return os_sys(SYS_munmap, (long)p, (long)size, 0, 0, 0, 0) < 0 ? -1 : 0;
#else
    int saved = errno, r = munmap(p, size);
    errno = saved;
    return r;
#endif
}

/* 0, or the error number; errno untouched, as os_munmap's: every caller
 * carries on without it (a guard page it could not make, a barrier it
 * falls back from), and a call that then succeeds must leave errno as it
 * was (until 2026-12-06 a realloc of a guarded block that lost its guard
 * page left ENOMEM; an outside reviewer). */
static int os_mprotect(void *p, size_t size, int prot) {
#if OS_RAW
    long r = os_sys(SYS_mprotect, (long)p, (long)size, prot, 0, 0, 0);
    return r < 0 ? (int)-r : 0;
#else
    int saved = errno, r = mprotect(p, size, prot) == 0 ? 0 : errno;
    errno = saved;
    return r;
#endif
}

/* Fault injection: when > 0, counts down on every map; the map that takes
 * it to 0 fails, and the later ones succeed again -- or, after
 * os_set_fail_from(n), every map from the n-th on fails until the next
 * call of either (the kernel refusing for good, which the allocator's
 * release-and-retry cannot get round). */
static long fail_countdown; /* 0 = off */
static int fail_sticky;
unsigned long os_fail_countdown_active;

void os_set_fail_after(long n) {
    fail_sticky = 0;
    __atomic_store_n(&fail_countdown, n, __ATOMIC_SEQ_CST);
    os_fail_countdown_active = n > 0;
}

void os_set_fail_from(long n) {
    os_set_fail_after(n);
    fail_sticky = n > 0;
}

static bool inject_failure(void) {
    if (likely(!os_fail_countdown_active)) return false;
    long v = __atomic_sub_fetch(&fail_countdown, 1, __ATOMIC_SEQ_CST);
    if (v <= 0 && fail_sticky) return true;
    if (v == 0) {
        os_fail_countdown_active = 0;
        return true;
    }
    return false;
}

void *os_map(size_t size) {
    if (inject_failure()) return NULL;
    return os_mmap(size);
}

/* The over-map of os_map_aligned did not fit: it asks for almost size +
 * align for a moment, which a tight address-space limit (RLIMIT_AS) can
 * refuse when size alone would fit. Map just size bytes; if they are not
 * aligned, give them back and ask for the aligned spots just below and
 * just above by address hint (the kernel places new mappings top-down, so
 * below is the likelier to be free). A hint the kernel cannot honour
 * gives another address, which goes back too. Found by a tester: under
 * `ulimit -v 16000` a C++ program's first malloc, the first arena chunk
 * (8 MiB for a moment), failed, and its first throw ended in
 * std::terminate; glibc ran it. */
static void *os_map_aligned_exact(size_t size, size_t align) {
    char *p = os_mmap(size);
    if (!p) return NULL;
    uintptr_t a = (uintptr_t)p;
    if (!(a & (align - 1))) return p;
    os_munmap(p, size);
    uintptr_t spots[2] = {a & ~(uintptr_t)(align - 1), (a + align - 1) & ~(uintptr_t)(align - 1)};
    for (int i = 0; i < 2; i++) {
        if (!spots[i]) continue;
        char *q = os_mmap_hint((void *)spots[i], size);
        if (q == (char *)spots[i]) return q;
        if (q) os_munmap(q, size);
    }
    return NULL;
}

/* Map size bytes aligned to align (a power of two >= page): over-map, then
 * trim the ends; if the over-map is refused, the exact size at an aligned
 * spot (os_map_aligned_exact). A trim the kernel refuses (near
 * vm.max_map_count, where cutting a mapping merged with its neighbour
 * takes a map entry more) leaves that end mapped: *extra (if not NULL)
 * gets the bytes still mapped after the size asked for, which the caller
 * may make its own; the head, below the aligned start, stays mapped and
 * unused (the kernel places new mappings top-down, below a neighbour they
 * merge with, so it is the tail's trim that fails). */
void *os_map_aligned_ex(size_t size, size_t align, size_t *extra) {
    if (extra) *extra = 0;
    if (align <= TM_PAGE) return os_map(size);
    if (size + align < size) return NULL;
    if (inject_failure()) return NULL;
    size_t total = size + align - TM_PAGE;
    char *p = os_mmap(total);
    if (!p) return os_map_aligned_exact(size, align);
    uintptr_t a = ((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1);
    size_t head = a - (uintptr_t)p;
    size_t tail = total - head - size;
    if (head) os_munmap(p, head);
    if (tail && os_munmap((char *)a + size, tail) != 0 && extra) *extra = tail;
    return (void *)a;
}

void *os_map_aligned(size_t size, size_t align) { return os_map_aligned_ex(size, align, NULL); }

int os_unmap(void *p, size_t size) {
    if (!p || !size) return 0;
    return os_munmap(p, size);
}

void (*os_purge_probe)(void *p, size_t size); /* tests: called before each purge */

int os_purge(void *p, size_t size) {
    /* MADV_DONTNEED on private anonymous memory frees the pages now and
     * makes them read zero: RSS drops at once and calloc can trust it.
     * errno untouched, as os_munmap's. */
    if (unlikely(os_purge_probe != NULL)) os_purge_probe(p, size);
#if OS_RAW
    return os_sys(SYS_madvise, (long)p, (long)size, MADV_DONTNEED, 0, 0, 0) < 0 ? -1 : 0;
#else
    int saved = errno, r = madvise(p, size, MADV_DONTNEED);
    errno = saved;
    return r;
#endif
}

/* mincore: vec[i] & 1 says whether page i of [p, p + size) (page-aligned)
 * is in memory now; false if the kernel will not say. A hint only: a page
 * swapped out counts as not in memory. */
bool os_in_memory(void *p, size_t size, unsigned char *vec) {
#if OS_RAW
    return os_sys(SYS_mincore, (long)p, (long)size, (long)vec, 0, 0, 0) >= 0;
#else
    int saved = errno;
    bool ok = mincore(p, size, vec) == 0;
    errno = saved; /* a hint: errno untouched, as os_munmap's */
    return ok;
#endif
}

/* madvise as a hint: the answer is ignored (the callers say why) */
static void os_advise(void *p, size_t size, int advice) {
#if OS_RAW
    (void)os_sys(SYS_madvise, (long)p, (long)size, advice, 0, 0, 0);
#else
    (void)madvise(p, size, advice);
#endif
}

/* Transparent huge pages for [p, p + size): on = false marks the mapping
 * MADV_NOHUGEPAGE, so that neither a page fault nor khugepaged puts a 2
 * MiB page there. Where the kernel's setting is "always" (the kernel's own
 * default, and that of several distributions), the first touch of an
 * aligned 2 MiB stretch of an anonymous mapping otherwise makes all of it
 * resident, and khugepaged later collapses any stretch that still holds
 * one resident page (max_ptes_none 511) -- undoing, in the background, the
 * 4 KiB pages that a purge or _heapmin gave back: with "always", peak RSS
 * was 1.5-4.7x glibc's in bench/throughput before the allocator's own
 * mappings were marked (docs/options.md, "thp"). on = true (thp:2) marks
 * it MADV_HUGEPAGE, which asks for 2 MiB pages even where the setting is
 * "madvise" (and makes page faults there compact memory if the defrag
 * setting says so). Errors are ignored: a kernel without THP answers
 * EINVAL, and the mapping is then no worse off. */
void os_huge_pages(void *p, size_t size, bool on) {
#if defined(MADV_NOHUGEPAGE) && defined(MADV_HUGEPAGE)
    os_advise(p, size, on ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#else
    (void)p;
    (void)size;
    (void)on;
#endif
}

/* The whole pages inside [lo, hi) as [*a, *b); false if there are none. */
static bool pages_inside(const void *lo, const void *hi, uintptr_t *a, uintptr_t *b) {
    *a = ((uintptr_t)lo + TM_PAGE_MASK) & ~(uintptr_t)TM_PAGE_MASK;
    *b = (uintptr_t)hi & ~(uintptr_t)TM_PAGE_MASK;
    return *b > *a;
}

/* Give back the whole pages inside [lo, hi): the partial pages at either
 * end may hold something else. Returns the bytes released (0 on refusal). */
size_t os_purge_inside(const void *lo, const void *hi) {
    uintptr_t a, b;
    return pages_inside(lo, hi, &a, &b) && os_purge((void *)a, b - a) == 0 ? b - a : 0;
}

/* ---- purging many ranges ---------------------------------------------------
 * A madvise call costs far more than its pages here: in this VM each one
 * took 40-290 us whatever its length (a _heapmin after a 256 MiB spike made
 * 1464 of them, 130 ms, all of its time), and while one runs, a thread of
 * the process on the other CPU stalls about as long -- the TLB shootdown
 * interrupts every CPU that runs the process. process_madvise(2) takes a
 * vector of ranges, and applied to the caller itself (the pidfd
 * PIDFD_SELF_THREAD: no file descriptor needed; the thread's process has
 * the same memory, but the kernel here answers EBADF to
 * PIDFD_SELF_PROCESS in this call) the kernel here accepts
 * MADV_DONTNEED for it and pays one call for the whole vector: 2048
 * 16 KiB ranges took 115-140 ms one madvise each, 7-11 ms 16-64 per call
 * (a scratch program, with another thread running). OS_PURGE_CALL_BYTES
 * bounds one call's bytes, so one stall stays short too, and
 * OS_PURGE_VEC its ranges: 64 since 2026-12-05, 16 before. Scratch, 1024
 * ranges of 4 KiB 4 KiB apart, a thread spinning on the clock meanwhile:
 * 16 a call 8.7-9.3 ms, that thread lost 3.3-3.4 ms; 64 a call 1.6-1.7
 * ms, 1.4-1.5 ms lost. bench/spike_trim, 11 and 15 runs interleaved (an
 * env-switched build): the _heapmin call's median 57.9 -> 55.7 ms, its
 * worst stall's median 218 -> 191 us, the prober's time lost in calls
 * over 10 us the same (median 23.9 vs 23.4 ms); the bytes bound the calls
 * there. A kernel that refuses it
 * (older ones answer EBADF or EINVAL; a seccomp filter ENOSYS or EPERM)
 * is not asked again: every range then gets its own madvise, as before.
 * A call that stops part-way (process_madvise returns the bytes it
 * advised) leaves the rest of its ranges to madvise one by one, so ok[]
 * is exact either way.
 *
 * Vectors are used only by the thread that calls _heapmin, while it runs,
 * and never under a seccomp filter: a filter that lists madvise but not
 * this newer call may kill the process for it (systemd's
 * SystemCallFilter= does, by default) rather than answer an error. A
 * filter belongs to a thread -- one can install its own, which no other
 * thread has -- so each _heapmin first reads the "Seccomp:" line of its
 * own thread's status, /proc/thread-self/status (os_purge_vectors_on;
 * /proc/self/status shows the main thread's, and said 0 to a filtered
 * thread); a filter seen there turns vectors off for good, in every
 * thread. The permission is the caller's alone (vec_mine, in TLS): the
 * purges other threads make meanwhile, and those that run without an
 * explicit call (decay, growth), keep one madvise per range, so no
 * thread that did not check its own filter ever makes the new call. */
#define OS_PIDFD_SELF_THREAD (-10000) /* PIDFD_SELF_THREAD, <linux/pidfd.h> */
#define OS_PURGE_VEC 64                /* ranges per call */
#define OS_PURGE_CALL_BYTES (1u << 20) /* bytes per call: longer ranges are cut */
/* Page tables. One page table maps 2 MiB (on a 2 MiB boundary, on x86-64
 * and arm64 with 4 KiB pages). A call that empties whole tables costs far
 * less than one that clears the same entries a few at a time, and on this
 * VM the difference lands on the process's other threads too. (Probably
 * because its kernel, 6.18 with CONFIG_PT_RECLAIM, frees a table that one
 * MADV_DONTNEED covers whole, where a partial one has its entries cleared
 * one by one, which under its hypervisor, PVM, is what stalls the other
 * CPU; measured, not traced.) bench/madvise_stall (256 MiB
 * in 2 MiB calls, medians of 5, 2026-12-05): on table boundaries 164 us a
 * call, and a thread that only read the clock lost 1.6 ms in all, its
 * longest stall 71 us; the same calls 4 KiB off the boundaries 282 us a
 * call, 29 ms lost, longest 358 us; 1 MiB calls 24-34 ms lost. So a range
 * is cut where a table begins, and the whole tables it covers go in one
 * call of their own, past the call's byte bound; only the ragged ends are
 * cut by it. A scratch program that kept one 256 KiB block in 16 of 1024
 * and called _heapmin with a thread spinning on the clock: 38-41 ms ->
 * 14.6-15.1 ms, that thread's loss 24-29 ms -> 4.4-5.0 ms. No change in
 * bench/spike_trim, whose scattered survivors leave 3-7 whole tables in
 * the 260 MiB it gives back, nor with --size-kib 256 --keep 6 (64 of 162
 * MiB as whole tables), where its prober lost hardly any time to either
 * build's call (heapmin.md). */
#define OS_PMD_MASK (((uintptr_t)2 << 20) - 1) /* a page table's span, less one */
static bool vec_refused; /* the kernel refused them, or a filter was seen: for good */
static __thread bool vec_mine __attribute__((tls_model("initial-exec"))); /* this thread checked */
unsigned long os_purge_syscalls; /* madvise + process_madvise calls made (tests) */

/* True if the calling thread's status says no seccomp filter applies to
 * it (see above); false if it cannot be read. */
static bool seccomp_off(void) {
    static const char path[] = "/proc/thread-self/status", key[] = "\nSeccomp:\t";
    char buf[2048]; /* the line is about 900 bytes in; not found: no vectors */
    long fd = os_sys(SYS_openat, AT_FDCWD, (long)path, O_RDONLY | O_CLOEXEC, 0, 0, 0);
    if (fd < 0) return false;
    long n = 0, r;
    while (n < (long)sizeof buf - 1 &&
           (r = os_sys(SYS_read, fd, (long)(buf + n), (long)sizeof buf - 1 - n, 0, 0, 0)) > 0)
        n += r;
    os_sys(SYS_close, fd, 0, 0, 0, 0, 0);
    for (long i = 0; i + (long)sizeof key - 1 < n; i++) { /* no libc: its pages cost RSS */
        size_t k = 0;
        while (k < sizeof key - 1 && buf[i + (long)k] == key[k]) k++;
        if (k == sizeof key - 1) return buf[i + (long)k] == '0';
    }
    return false;
}

void os_purge_vectors_on(void) {
    if (__atomic_load_n(&vec_refused, __ATOMIC_RELAXED)) return;
    if (seccomp_off()) vec_mine = true;
    else __atomic_store_n(&vec_refused, true, __ATOMIC_RELAXED);
}

int os_purge_vectors_state(void) {
    return __atomic_load_n(&vec_refused, __ATOMIC_RELAXED) ? -1 : vec_mine;
}

void os_purge_vectors_off(void) { vec_mine = false; }

/* Purge v[0..k); done[q] tells whether v[q] was. */
static void purge_vec(struct iovec *v, unsigned k, bool *done) {
    unsigned q = 0;
    if (k > 1 && vec_mine && !__atomic_load_n(&vec_refused, __ATOMIC_RELAXED)) {
        long got = os_sys(SYS_process_madvise, OS_PIDFD_SELF_THREAD, (long)v, k, MADV_DONTNEED, 0, 0);
        __atomic_add_fetch(&os_purge_syscalls, 1, __ATOMIC_RELAXED);
        if (got == -EBADF || got == -EINVAL || got == -ENOSYS || got == -EPERM)
            __atomic_store_n(&vec_refused, true, __ATOMIC_RELAXED);
        for (size_t left = got > 0 ? (size_t)got : 0; q < k && left >= v[q].iov_len; q++) {
            left -= v[q].iov_len;
            done[q] = true;
        }
    }
    for (; q < k; q++) { /* one by one: refused, a single range, or the rest */
        done[q] = os_purge(v[q].iov_base, v[q].iov_len) == 0;
        __atomic_add_fetch(&os_purge_syscalls, 1, __ATOMIC_RELAXED);
    }
}

/* The next piece of a range at p with `left` bytes: the whole page tables
 * from p if p starts one, else at most `room` bytes and never past the
 * start of the next table (the "page tables" note above). */
static size_t purge_piece(uintptr_t p, size_t left, size_t room) {
    if (!(p & OS_PMD_MASK) && left > OS_PMD_MASK) return left & ~(size_t)OS_PMD_MASK;
    size_t edge = OS_PMD_MASK + 1 - (p & OS_PMD_MASK); /* to the next table */
    size_t take = left < edge ? left : edge;
    return take < room ? take : room;
}

size_t os_purge_ranges(const os_range_t *r, unsigned n, bool *ok) {
    struct iovec v[OS_PURGE_VEC];
    unsigned owner[OS_PURGE_VEC];
    bool done[OS_PURGE_VEC];
    for (unsigned i = 0; i < n; i++) ok[i] = true;
    size_t off = 0;
    for (unsigned j = 0; j < n;) { /* next: range j from byte off */
        unsigned k = 0;
        size_t bytes = 0;
        while (j < n && k < OS_PURGE_VEC && bytes < OS_PURGE_CALL_BYTES) {
            uintptr_t p = (uintptr_t)r[j].base + off;
            size_t room = OS_PURGE_CALL_BYTES - bytes;
            size_t take = purge_piece(p, r[j].len - off, room);
            if (take > room && k) break; /* whole tables: a call alone */
            v[k].iov_base = (void *)p;
            v[k].iov_len = take;
            owner[k++] = j;
            bytes += take;
            off += take;
            if (off == r[j].len) j++, off = 0;
        }
        purge_vec(v, k, done);
        for (unsigned q = 0; q < k; q++)
            if (!done[q]) ok[owner[q]] = false; /* part of it may be purged: not counted */
    }
    size_t released = 0;
    for (unsigned i = 0; i < n; i++)
        if (ok[i]) released += r[i].len;
    return released;
}

void os_batch_add(os_batch_t *b, const void *lo, const void *hi) {
    uintptr_t a, e;
    if (!pages_inside(lo, hi, &a, &e)) return;
    if (b->n && (uintptr_t)b->r[b->n - 1].base + b->r[b->n - 1].len == a) {
        b->r[b->n - 1].len += e - a;
        return;
    }
    if (b->n == OS_BATCH_RANGES) os_batch_flush(b);
    b->r[b->n].base = (void *)a;
    b->r[b->n].len = e - a;
    b->n++;
}

size_t os_batch_flush(os_batch_t *b) {
    bool ok[OS_BATCH_RANGES];
    b->released += os_purge_ranges(b->r, b->n, ok);
    b->n = 0;
    return b->released;
}

int os_protect_none(void *p, size_t size) { return os_mprotect(p, size, PROT_NONE) ? -1 : 0; }
int os_protect_rw(void *p, size_t size) { return os_mprotect(p, size, PROT_READ | PROT_WRITE) ? -1 : 0; }

/* Undo what a program may have done to a block's pages before it freed it
 * (mprotect, MADV_DONTFORK, MADV_WIPEONFORK, MADV_DONTDUMP), so that a
 * mapping kept for reuse is handed out as a fresh one would be: read and
 * write, inherited by a fork child with its contents, dumped. Where
 * nothing was changed these only walk the mapping (no TLB flush): a few
 * microseconds against the milliseconds it takes to write a huge block.
 * 0, or -1 if part of the range is not mapped any more (ENOMEM: the
 * program unmapped some of it; the mapping must not be reused). A refusal
 * of mprotect itself (EPERM or EACCES, under a seccomp or SELinux policy)
 * leaves the mapping to be reused as it was before this was added, rather
 * than turning the cache off. errno is left as it was. */
int os_restore_block(void *p, size_t size) {
    int saved = errno;
    if (os_mprotect(p, size, PROT_READ | PROT_WRITE) == ENOMEM) return -1;
#ifdef MADV_DOFORK
    os_advise(p, size, MADV_DOFORK);
#endif
#ifdef MADV_KEEPONFORK
    os_advise(p, size, MADV_KEEPONFORK);
#endif
#ifdef MADV_DODUMP
    os_advise(p, size, MADV_DODUMP);
#endif
    errno = saved;
    return 0;
}

/* mremap: grow/shrink in place (may_move 0), anywhere (may_move 1), or to
 * the fixed address given (a reserved, aligned spot). NULL if refused,
 * errno untouched: a growth refused in place is followed by a move that
 * may work (until 2026-12-06 the refusal's ENOMEM stayed after a realloc
 * that succeeded; an outside reviewer). */
void *os_remap(void *p, size_t old, size_t new_size, int may_move, void *fixed) {
    if (new_size > old && inject_failure()) return NULL;
    int flags = may_move ? MREMAP_MAYMOVE : 0;
    if (fixed) flags = MREMAP_MAYMOVE | MREMAP_FIXED;
#if OS_RAW
    long r = os_sys(SYS_mremap, (long)p, (long)old, (long)new_size, flags, (long)fixed, 0);
    return (unsigned long)r > -4096ul ? NULL : (void *)r;
#else
    int saved = errno;
    void *r = fixed ? mremap(p, old, new_size, flags, fixed) : mremap(p, old, new_size, flags);
    errno = saved;
    return r == MAP_FAILED ? NULL : r;
#endif
}

/* A full memory barrier on every thread of the process that is running now
 * (threads not running get one on their next context switch).
 * membarrier(PRIVATE_EXPEDITED) when the kernel allows it; otherwise an
 * mprotect of a private page, whose TLB shootdown interrupts every CPU that
 * runs this address space (the fallback userspace RCU libraries use).
 * Returns 0, or -1 if neither works. */
static int membarrier_state; /* 0 unknown, 1 usable, -1 unusable */
static char *barrier_page;

/* Whether that shootdown reaches the other CPUs by interrupt, which is
 * what makes it a barrier there. On x86 it does, unless the CPU can
 * invalidate other CPUs' TLBs by a broadcast instruction (AMD's INVLPGB,
 * CPUID 0x80000008 EBX bit 3, which Linux uses from 6.15 on for a process
 * that runs on many CPUs): then no code runs on them. Other architectures
 * (arm64's TLBI) broadcast always. Where it does not, there is no fallback:
 * every cache empties itself on its owner's next call (world.c). Pointed
 * out by an outside reviewer, 2026-12-05; not observed (this host's Xeon
 * has no INVLPGB). */
static bool mprotect_interrupts(void) {
#if defined(__x86_64__) || defined(__i386__)
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(0x80000000u, &a, &b, &c, &d) || a < 0x80000008u) return true;
    __get_cpuid(0x80000008u, &a, &b, &c, &d);
    return !(b & (1u << 3));
#else
    return false;
#endif
}

int os_heavy_barrier(void) {
    if (membarrier_state == 0) {
        long r = os_sys(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0, 0, 0, 0);
        membarrier_state = (r == 0) ? 1 : -1;
    }
    if (membarrier_state == 1 &&
        os_sys(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0, 0, 0, 0) == 0)
        return 0;
    membarrier_state = -1;
    if (!barrier_page) {
        static int interrupts; /* 0 unknown, 1 yes, -1 no */
        if (!interrupts) interrupts = mprotect_interrupts() ? 1 : -1;
        if (interrupts < 0) return -1;
        void *p = os_mmap(TM_PAGE);
        if (!p) return -1;
        barrier_page = p;
    }
    /* The page must be present for the downgrade to shoot down TLBs. */
    __atomic_fetch_add((volatile int *)barrier_page, 1, __ATOMIC_SEQ_CST);
    if (os_mprotect(barrier_page, TM_PAGE, PROT_READ) != 0) return -1;
    if (os_mprotect(barrier_page, TM_PAGE, PROT_READ | PROT_WRITE) != 0) return -1;
    return 0;
}

uint64_t os_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ms milliseconds from now on CLOCK_REALTIME, the clock of a condition
 * variable made with the default attributes (pthread_cond_timedwait) */
struct timespec os_realtime_after_ms(long ms) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

/* The same clock by a system call: no page of libc or the vDSO, which a
 * small program that never reads the clock otherwise would fault in (with
 * the pages around it) for a clock read every few milliseconds. */
uint64_t os_now_ns_raw(void) {
    struct timespec ts = {0, 0};
    os_sys(SYS_clock_gettime, CLOCK_MONOTONIC, (long)&ts, 0, 0, 0, 0);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void os_yield(void) { os_sys(SYS_sched_yield, 0, 0, 0, 0, 0, 0); }

long os_getpid(void) { return os_sys(SYS_getpid, 0, 0, 0, 0, 0, 0); }
long os_gettid(void) { return os_sys(SYS_gettid, 0, 0, 0, 0, 0, 0); }

/* True while glibc has blocked its own internal signal SIGCANCEL (32) in
 * this thread. A program cannot block it: sigprocmask and pthread_sigmask
 * leave it out of the set. glibc blocks it, with every other signal but
 * SIGSETXID, in a thread's last stage of exit (since 2.34: after the key
 * destructors, before it frees the TLS blocks of other exited threads'
 * stacks that drop out of its stack cache), and around clone in
 * pthread_create and posix_spawn. */
bool os_thread_exiting(void) {
    uint64_t mask = 0;
    if (os_sys(SYS_rt_sigprocmask, SIG_BLOCK, 0, (long)&mask, sizeof mask, 0, 0) != 0) return false;
    return mask >> (32 - 1) & 1;
}

unsigned os_ncpus(void) {
    /* The raw call returns the bytes of mask the kernel wrote. */
    uint64_t mask[1024 / 64] = {0};
    long r = os_sys(SYS_sched_getaffinity, 0, (long)sizeof mask, (long)mask, 0, 0, 0);
    if (r > 0) {
        unsigned n = 0;
        for (size_t i = 0; i < sizeof mask / sizeof mask[0]; i++) n += (unsigned)__builtin_popcountll(mask[i]);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

void os_random(void *buf, size_t n) {
    if (os_sys(SYS_getrandom, (long)buf, (long)n, 0x0001 /* GRND_NONBLOCK */, 0, 0, 0) == (long)n)
        return;
    /* AT_RANDOM: 16 random bytes the kernel gave the process at exec. */
    const unsigned char *r = (const unsigned char *)getauxval(AT_RANDOM);
    uint64_t x = os_now_ns() ^ (uint64_t)(uintptr_t)&n;
    unsigned char *b = buf;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        b[i] = (unsigned char)(x ^ (r ? r[i % 16] : 0));
    }
}
