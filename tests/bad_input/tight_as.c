/*
 * tight_as.c -- a process under a tight address-space limit (RLIMIT_AS)
 * gets what fits (tests/bad_input/run.sh runs it with
 * LD_PRELOAD=libtrimalloc.so).
 *
 * An arena chunk and a huge block must start at a 4 MiB boundary, and the
 * allocator maps size + 4 MiB for a moment to find one. Until 2026-12-05
 * that was all it tried, and its first metadata region took 2 MiB: under
 * `ulimit -v 12000` a tester's C++ program got no memory at all, and its
 * first throw ended in std::terminate (glibc ran it). Now a refused
 * over-map is followed by a mapping of the exact size at an aligned spot,
 * and the first metadata region is 256 KiB.
 *
 * The limits are set from the process's own VmSize, before its first
 * allocation (reads and prints go through read()/write(), which do not
 * allocate):
 *   1. VmSize + 5 MiB: malloc(100) succeeds (it needs one chunk, 4 MiB,
 *      and a little metadata; the old code asked for 8 MiB at once).
 *   2. VmSize + 10 MiB: at least three 3 MiB blocks (huge: mappings of
 *      their own) before NULL with ENOMEM, every byte kept (the old code
 *      got two: each asked for 7 MiB at once).
 * Exits 0 and prints "tight address space: ok" if both hold.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static void say(const char *s) {
    if (write(1, s, strlen(s)) < 0) _exit(2);
}

static long vm_size_kb(void) {
    char buf[4096];
    int fd = open("/proc/self/status", O_RDONLY);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *v = strstr(buf, "VmSize:");
    return v ? strtol(v + 7, NULL, 10) : -1;
}

static int limit_to(long extra_mib) {
    long kb = vm_size_kb();
    if (kb < 0) return -1;
    struct rlimit r = {(rlim_t)kb * 1024 + ((rlim_t)extra_mib << 20), RLIM_INFINITY};
    return setrlimit(RLIMIT_AS, &r);
}

enum { BLOCK = 3 << 20, MAX_BLOCKS = 16 };

int main(void) {
    if (limit_to(5) != 0) {
        say("FAIL: cannot read VmSize or set RLIMIT_AS\n");
        return 2;
    }
    char *first = malloc(100);
    if (!first) {
        say("FAIL: the first malloc(100) under VmSize + 5 MiB returned NULL\n");
        return 1;
    }
    memset(first, 0x11, 100);

    if (limit_to(10) != 0) {
        say("FAIL: cannot set RLIMIT_AS\n");
        return 2;
    }
    char *b[MAX_BLOCKS];
    int n = 0;
    errno = 0;
    while (n < MAX_BLOCKS && (b[n] = malloc(BLOCK)) != NULL) {
        memset(b[n], n + 1, BLOCK);
        n++;
    }
    int bad = 0;
    if (n < MAX_BLOCKS && errno != ENOMEM) {
        say("FAIL: the refused malloc did not set ENOMEM\n");
        bad = 1;
    }
    for (int i = 0; i < n; i++)
        for (size_t k = 0; k < BLOCK; k += 4096)
            if (b[i][k] != i + 1) bad = 1;
    for (int i = 0; i < 100; i++)
        if (first[i] != 0x11) bad = 1;
    if (bad) say("FAIL: a held byte changed\n");
    char line[96];
    snprintf(line, sizeof line, "3 MiB blocks under VmSize + 10 MiB: %d\n", n);
    say(line);
    if (n < 3) {
        say("FAIL: fewer than 3 (each needs 3 MiB of address space)\n");
        bad = 1;
    }
    for (int i = 0; i < n; i++) free(b[i]);
    free(first);
    char *again = malloc(BLOCK);
    if (!again) {
        say("FAIL: no 3 MiB block after the frees\n");
        bad = 1;
    }
    free(again);
    if (!bad) say("tight address space: ok\n");
    return bad;
}
