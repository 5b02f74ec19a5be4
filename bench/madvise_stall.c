/*
 * madvise_stall.c -- how long does one thread's madvise(MADV_DONTNEED) hold
 * up another thread of the same process that only computes? No allocator
 * is involved: this measures the machine, and so the floor under any
 * allocator's "worst stall while it gives memory back" (spike_trim.c).
 *
 *   madvise_stall [--mib M] [--call-kib K]... [--offset-kib O] [--reps R]
 *   (--call-kib may be given several times: one size each)
 *
 * A victim thread spins reading the clock and records the longest gap
 * between two reads, first while the main thread sleeps (the noise floor),
 * then while the main thread gives back M MiB (default 256), resident and
 * written, in madvise calls of K KiB each (default: 4, 64, 256 and 1024).
 * Each size runs R times (default 3); the line per size gives the median
 * over the repetitions of: the calls' mean and longest duration, the
 * victim's longest gap while they ran and while the main thread slept,
 * and the same two leaving out gaps in which the scheduler preempted the
 * victim ("own", as spike_trim.c counts its prober's stalls), and the
 * victim's time lost while the calls ran (the sum of its gaps over 10 us).
 * The memory starts on a 2 MiB boundary, the span of one page table on
 * x86-64, and the calls O KiB after it (default 0): with 2 MiB calls,
 * --offset-kib 0 and 4 compare calls that cover whole page tables with
 * calls that cover the same bytes across two (os.c's "page tables" note).
 *
 * Why: on a virtual machine, MADV_DONTNEED's TLB shootdown interrupts
 * every CPU that runs the process, and the interrupted thread can lose
 * about as long as the call itself -- a stall that no lock-free design of
 * the allocator avoids, only calls that are few and short. The victim has
 * its own CPU only if the machine has two free; on a loaded one its gaps
 * include preemption, in both windows alike.
 */
#include "bench_common.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>

enum { IDLE, QUIET, PURGE, STOP };
static atomic_int phase = IDLE;
/* written by the victim only, read after join: the longest gap, and the
 * longest during which the victim was not preempted (its involuntary
 * context-switch count did not move; as in spike_trim.c, checked only for
 * gaps over 20 us, since getrusage costs far more than a clock read) */
static uint64_t worst_gap[STOP], worst_own[STOP], lost[STOP];

static void *victim(void *arg)
{
    (void)arg;
    long cs = bench_thread_nivcsw();
    uint64_t last = bench_now_ns();
    int ph;
    while ((ph = atomic_load_explicit(&phase, memory_order_relaxed)) != STOP) {
        uint64_t t = bench_now_ns(), d = t - last;
        if (d > worst_gap[ph])
            worst_gap[ph] = d;
        if (d > 10000)
            lost[ph] += d;
        if (d > 20000) {
            long now_cs = bench_thread_nivcsw();
            if (now_cs == cs && d > worst_own[ph])
                worst_own[ph] = d;
            cs = now_cs;
            t = bench_now_ns(); /* the getrusage call is not a gap */
        } else if (d > worst_own[ph]) {
            worst_own[ph] = d;
        }
        last = t;
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_u64);
    return v[n / 2];
}

typedef struct {
    uint64_t call_mean, call_max, gap_purge, gap_quiet, own_purge, own_quiet, lost_purge;
} result_t;

/* One repetition: M bytes written, then given back in calls of `call` bytes. */
static int one_run(char *mem, size_t bytes, size_t call, result_t *r)
{
    memset(worst_gap, 0, sizeof worst_gap);
    memset(worst_own, 0, sizeof worst_own);
    memset(lost, 0, sizeof lost);
    memset(mem, 1, bytes); /* resident and dirty */
    pthread_t t;
    if (pthread_create(&t, NULL, victim, NULL) != 0)
        return -1;
    bench_sleep_us(20000); /* the victim is spinning */
    atomic_store(&phase, QUIET);
    uint64_t q0 = bench_now_ns();
    uint64_t calls = 0, total = 0, longest = 0;
    /* the purge itself, timed by the victim meanwhile */
    atomic_store(&phase, PURGE);
    for (size_t off = 0; off < bytes; off += call) {
        uint64_t a = bench_now_ns();
        if (madvise(mem + off, call, MADV_DONTNEED) != 0) {
            perror("madvise");
            return -1;
        }
        uint64_t d = bench_now_ns() - a;
        total += d;
        if (d > longest)
            longest = d;
        calls++;
    }
    uint64_t purge_ns = bench_now_ns() - q0;
    /* a quiet window as long as the purge, for the noise floor */
    atomic_store(&phase, QUIET);
    bench_sleep_us((long)(purge_ns / 1000u) + 1000);
    atomic_store(&phase, STOP);
    pthread_join(t, NULL);
    atomic_store(&phase, IDLE);
    r->call_mean = total / calls;
    r->call_max = longest;
    r->gap_purge = worst_gap[PURGE];
    r->gap_quiet = worst_gap[QUIET];
    r->own_purge = worst_own[PURGE];
    r->own_quiet = worst_own[QUIET];
    r->lost_purge = lost[PURGE];
    return 0;
}

int main(int argc, char **argv)
{
    size_t mib = 256, offset_kib = 0;
    int reps = 3;
    size_t calls_kib[16] = {4, 64, 256, 1024};
    int ncalls = 4, given = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mib") && i + 1 < argc)
            mib = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--offset-kib") && i + 1 < argc)
            offset_kib = strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--call-kib") && i + 1 < argc) {
            if (!given)
                ncalls = 0;
            given = 1;
            if (ncalls < 16)
                calls_kib[ncalls++] = strtoul(argv[++i], NULL, 10);
        } else {
            fprintf(stderr, "usage: %s [--mib M] [--call-kib K]... [--offset-kib O] [--reps R]\n"
                            "  (--call-kib once per size, e.g. --call-kib 4 --call-kib 64)\n",
                    argv[0]);
            return 2;
        }
    }
    if (mib == 0 || reps < 1 || reps > 99 || offset_kib % 4 || offset_kib >= 2048) {
        fprintf(stderr, "madvise_stall: --mib must be > 0, --reps 1..99 and --offset-kib a "
                        "multiple of 4 below 2048\n");
        return 2;
    }
    size_t bytes = mib << 20, table = (size_t)2 << 20;
    char *map = mmap(NULL, bytes + 2 * table, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
    if (map == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    char *mem = (char *)(((uintptr_t)map + table - 1) & ~(uintptr_t)(table - 1)) + (offset_kib << 10);
    printf("%-9s %7s %12s %12s %16s %16s %14s %14s %14s\n", "call_kib", "calls", "call_mean_us",
           "call_max_us", "victim_purge_us", "victim_quiet_us", "own_purge_us", "own_quiet_us",
           "lost_purge_ms");
    for (int c = 0; c < ncalls; c++) {
        size_t call = calls_kib[c] << 10;
        if (call == 0 || call % 4096 || bytes % call) {
            fprintf(stderr, "madvise_stall: %zu KiB does not divide %zu MiB in pages\n", calls_kib[c],
                    mib);
            return 2;
        }
        uint64_t m[99], x[99], gp[99], gq[99], op[99], oq[99], lp[99];
        for (int r = 0; r < reps; r++) {
            result_t res;
            if (one_run(mem, bytes, call, &res) != 0)
                return 1;
            m[r] = res.call_mean, x[r] = res.call_max, gp[r] = res.gap_purge, gq[r] = res.gap_quiet;
            op[r] = res.own_purge, oq[r] = res.own_quiet, lp[r] = res.lost_purge;
        }
        printf("%-9zu %7zu %12.1f %12.1f %16.1f %16.1f %14.1f %14.1f %14.2f\n", calls_kib[c],
               bytes / call, median(m, reps) / 1e3, median(x, reps) / 1e3, median(gp, reps) / 1e3,
               median(gq, reps) / 1e3, median(op, reps) / 1e3, median(oq, reps) / 1e3,
               median(lp, reps) / 1e6);
        fflush(stdout);
    }
    return 0;
}
