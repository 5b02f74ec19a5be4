/*
 * oom_first.c -- the first calls of a process whose data limit leaves no
 * room for the allocator's own metadata (tests/bad_input/run.sh runs it
 * under `ulimit -d 1000` with LD_PRELOAD=libtrimalloc.so): malloc and
 * calloc of small, large and huge sizes must each return NULL with errno
 * ENOMEM. Until 2026-12-05 the first small or large one crashed on a NULL
 * arena (found by a tester). Prints with write(): nothing before these
 * calls may allocate. Exits 0 if every call failed that way.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    static const size_t sizes[] = {10, 5000, 100000, 3u << 20};
    int bad = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        errno = 0;
        void *p = malloc(sizes[i]);
        if (p != NULL || errno != ENOMEM) bad++;
        free(p);
        errno = 0;
        p = calloc(1, sizes[i]);
        if (p != NULL || errno != ENOMEM) bad++;
        free(p);
    }
    const char *msg = bad ? "FAIL: a first call did not return NULL with ENOMEM\n"
                          : "oom first calls: NULL with ENOMEM\n";
    if (write(1, msg, strlen(msg)) < 0) return 1;
    return bad ? 1 : 0;
}
