/*
 * os.c -- the only file that asks the kernel for memory or barriers.
 *
 * Contract: sizes and addresses are page multiples; failures return NULL or
 * -1 and never abort. A fault-injection hook (os_set_fail_after) makes the
 * n-th subsequent mapping fail, so out-of-memory paths can be tested.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <linux/membarrier.h>
#include <sched.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

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
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Map size bytes aligned to align (a power of two >= page): over-map, then
 * trim the ends. */
void *os_map_aligned(size_t size, size_t align) {
    if (align <= TM_PAGE) return os_map(size);
    if (size + align < size) return NULL;
    if (inject_failure()) return NULL;
    size_t total = size + align - TM_PAGE;
    char *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    uintptr_t a = ((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1);
    size_t head = a - (uintptr_t)p;
    size_t tail = total - head - size;
    if (head) munmap(p, head);
    if (tail) munmap((char *)a + size, tail);
    return (void *)a;
}

int os_unmap(void *p, size_t size) {
    if (!p || !size) return 0;
    return munmap(p, size);
}

int os_purge(void *p, size_t size) {
    /* MADV_DONTNEED on private anonymous memory frees the pages now and
     * makes them read zero: RSS drops at once and calloc can trust it. */
    return madvise(p, size, MADV_DONTNEED);
}

/* Give back the whole pages inside [lo, hi): the partial pages at either
 * end may hold something else. Returns the bytes released (0 on refusal). */
size_t os_purge_inside(const void *lo, const void *hi) {
    uintptr_t a = ((uintptr_t)lo + TM_PAGE_MASK) & ~(uintptr_t)TM_PAGE_MASK;
    uintptr_t b = (uintptr_t)hi & ~(uintptr_t)TM_PAGE_MASK;
    return b > a && os_purge((void *)a, b - a) == 0 ? b - a : 0;
}

int os_protect_none(void *p, size_t size) { return mprotect(p, size, PROT_NONE); }

/* mremap: grow/shrink in place (may_move 0), anywhere (may_move 1), or to
 * the fixed address given (a reserved, aligned spot). */
void *os_remap(void *p, size_t old, size_t new_size, int may_move, void *fixed) {
    if (new_size > old && inject_failure()) return NULL;
    int flags = may_move ? MREMAP_MAYMOVE : 0;
    void *r;
    if (fixed) r = mremap(p, old, new_size, MREMAP_MAYMOVE | MREMAP_FIXED, fixed);
    else r = mremap(p, old, new_size, flags);
    return r == MAP_FAILED ? NULL : r;
}

/* A full memory barrier on every thread of the process that is running now
 * (threads not running get one on their next context switch).
 * membarrier(PRIVATE_EXPEDITED) when the kernel allows it; otherwise an
 * mprotect of a private page, whose TLB shootdown interrupts every CPU that
 * runs this address space (the fallback userspace RCU libraries use).
 * Returns 0, or -1 if neither works. */
static int membarrier_state; /* 0 unknown, 1 usable, -1 unusable */
static char *barrier_page;

int os_heavy_barrier(void) {
    if (membarrier_state == 0) {
        long r = syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0);
        membarrier_state = (r == 0) ? 1 : -1;
    }
    if (membarrier_state == 1 &&
        syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0)
        return 0;
    membarrier_state = -1;
    if (!barrier_page) {
        void *p = mmap(NULL, TM_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return -1;
        barrier_page = p;
    }
    /* The page must be present for the downgrade to shoot down TLBs. */
    __atomic_fetch_add((volatile int *)barrier_page, 1, __ATOMIC_SEQ_CST);
    if (mprotect(barrier_page, TM_PAGE, PROT_READ) != 0) return -1;
    if (mprotect(barrier_page, TM_PAGE, PROT_READ | PROT_WRITE) != 0) return -1;
    return 0;
}

uint64_t os_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void os_yield(void) { sched_yield(); }

unsigned os_ncpus(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return (unsigned)n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

void os_random(void *buf, size_t n) {
    if (getrandom(buf, n, GRND_NONBLOCK) == (ssize_t)n) return;
    /* AT_RANDOM: 16 random bytes the kernel gave the process at exec. */
    const unsigned char *r = (const unsigned char *)getauxval(AT_RANDOM);
    uint64_t x = os_now_ns() ^ (uint64_t)(uintptr_t)&n;
    unsigned char *b = buf;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        b[i] = (unsigned char)(x ^ (r ? r[i % 16] : 0));
    }
}
