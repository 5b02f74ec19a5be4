/*
 * bad_ptr.c CASE -- hand the allocator one bad pointer and see what it does.
 * Run under LD_PRELOAD=libtrimalloc.so by tests/bad_input/run.sh, which
 * lists the cases and what each must print.
 *
 * The program prints "pointer 0x..." (the bad pointer, %p) on stdout, then
 * makes the bad call. With the default options trimalloc must abort there
 * (SIGABRT) after one line on stderr naming the call and the pointer. With
 * TRIMALLOC_CONF=abort_on_error:0 it must print the line, ignore the call
 * and go on: the program then checks that the heap still works (blocks of
 * every kind allocated, filled, checked and freed, _heapchk() == _HEAPOK)
 * and exits 0, printing "continued: heap OK".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <malloc.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define HEAPOK (-2) /* _HEAPOK in trimalloc.h */

static char global_buf[256];
static int (*heapmin)(void);
static int (*heapchk)(void);

/* Keep the compiler from reasoning about the calls (-fno-builtin too). */
static void *volatile sink;

enum { CALL_FREE, CALL_REALLOC, CALL_REALLOC0, CALL_USABLE };

static void bad_call(int call, void *p) {
    printf("pointer %p\n", p);
    fflush(stdout);
    switch (call) {
    case CALL_FREE: free(p); break;
    case CALL_REALLOC: sink = realloc(p, 100); break;
    case CALL_REALLOC0:
        /* glibc's realloc(p, 0) frees p; a bad p is realloc's error, and
         * EINVAL where the call comes back (abort_on_error:0) */
        errno = 0;
        sink = realloc(p, 0);
        if (sink || errno != EINVAL) {
            printf("realloc(p, 0) returned %p with errno %d, not NULL with EINVAL\n", sink, errno);
            exit(1);
        }
        break;
    case CALL_USABLE: sink = (void *)(uintptr_t)malloc_usable_size(p); break;
    }
}

/* A double free: p is freed once here, legitimately, then by the bad call. */
static void *freed(size_t size, int heapmin_after) {
    void *keep = malloc(size); /* keeps the slab (or run neighbourhood) alive */
    void *p = malloc(size);
    memset(p, 0x5c, size);
    free(p);
    if (heapmin_after && heapmin() != 0) {
        printf("_heapmin failed\n");
        exit(3);
    }
    sink = keep;
    return p;
}

/* A large block made by a thread of another arena (the thread has exited;
 * this one keeps its own arena), which this thread's free() of it queues. */
static void *remote_block;
static void *make_remote(void *arg) {
    remote_block = malloc((size_t)(uintptr_t)arg);
    if (remote_block) memset(remote_block, 0x5d, (size_t)(uintptr_t)arg);
    return NULL;
}
static void *remote_large(size_t size) {
    sink = malloc(16); /* binds this thread to an arena first */
    pthread_t t;
    if (pthread_create(&t, NULL, make_remote, (void *)(uintptr_t)size) || pthread_join(t, NULL) ||
        !remote_block) {
        printf("no remote block\n");
        exit(3);
    }
    return remote_block;
}

static int heap_still_works(void) {
    static const size_t sizes[] = {1, 16, 100, 1000, 5000, 40000, 300000, 3 << 20};
    void *p[sizeof sizes / sizeof sizes[0]];
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        p[i] = malloc(sizes[i]);
        if (!p[i]) return 0;
        memset(p[i], (int)i + 1, sizes[i]);
    }
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        for (size_t k = 0; k < sizes[i]; k++)
            if (((unsigned char *)p[i])[k] != i + 1) return 0;
        free(p[i]);
    }
    return heapchk() == HEAPOK;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s CASE\n", argv[0]);
        return 2;
    }
    heapmin = (int (*)(void))dlsym(RTLD_DEFAULT, "_heapmin");
    heapchk = (int (*)(void))dlsym(RTLD_DEFAULT, "_heapchk");
    if (!heapmin || !heapchk) {
        fprintf(stderr, "_heapmin/_heapchk not found: run with LD_PRELOAD=libtrimalloc.so\n");
        return 2;
    }
    const char *c = argv[1];
    /* stdout's buffer is allocated now, not by the printf of the pointer:
     * made after the bad pointer's block was freed, that 4-8 KiB buffer
     * could take the freed block's pages (a slab), and the case would test
     * a small block, not the large one it names */
    printf("case %s\n", c);
    fflush(stdout);
    char stack_buf[64];
    sink = stack_buf;
    int call = CALL_FREE;
    const char *what = c;
    if (!strncmp(c, "free-", 5)) call = CALL_FREE, what = c + 5;
    else if (!strncmp(c, "realloc-", 8)) call = CALL_REALLOC, what = c + 8;
    else if (!strncmp(c, "realloc0-", 9)) call = CALL_REALLOC0, what = c + 9;
    else if (!strncmp(c, "usable-", 7)) call = CALL_USABLE, what = c + 7;
    else {
        fprintf(stderr, "unknown case %s\n", c);
        return 2;
    }

    void *p = NULL;
    if (!strcmp(what, "stack")) p = stack_buf + 16;
    else if (!strcmp(what, "global")) p = global_buf + 16;
    else if (!strcmp(what, "interior-small")) p = (char *)malloc(100) + 16;
    else if (!strcmp(what, "interior-large")) p = (char *)malloc(100000) + 100;
    else if (!strcmp(what, "interior-large-page")) p = (char *)malloc(100000) + 8192;
    else if (!strcmp(what, "interior-huge")) p = (char *)malloc(3 << 20) + 4096;
    else if (!strcmp(what, "interior-huge-far")) p = (char *)malloc(12 << 20) + (6 << 20);
    /* a block start in a young slab that was never handed out: free in the
     * arena, no cookie (a 1 KiB slab holds 8 blocks on 2 pages; the first
     * refill hands out 4, so p is one of blocks 0-3 and p + 4 KiB one of
     * blocks 4-7) */
    else if (!strcmp(what, "unallocated")) p = (char *)malloc(1024) + 4096;
    /* one block past a slab's last: 48-byte blocks fill a one-page slab
     * 85 at a time (4080 bytes), so the address 48 bytes past block 84 is
     * in the slab's 16-byte tail. Until 2026-12-06 free() took it for a
     * block and the next malloc(48) handed it out over the next page's
     * first block (found by an outside tester). */
    else if (!strcmp(what, "past-end")) {
        for (int i = 0; i < 400 && !p; i++) {
            char *b = malloc(48);
            if (((uintptr_t)b & 4095) == 84 * 48) p = b + 48;
        }
        if (!p) {
            printf("no block 84 of a 48-byte slab in 400\n");
            return 3;
        }
    }
    else if (!strcmp(what, "mmap")) {
        p = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return 3;
    } else if (!strcmp(what, "double-tcache")) p = freed(64, 0);
    else if (!strcmp(what, "double-arena")) p = freed(64, 1);
    else if (!strcmp(what, "double-large")) p = freed(100000, 0);
    else if (!strcmp(what, "double-huge")) p = freed(3 << 20, 0);
    else if (!strcmp(what, "interior-remote-large-page")) p = (char *)remote_large(20000) + 8192;
    else if (!strcmp(what, "double-remote-large")) {
        p = remote_large(20000);
        free(p); /* waits in this thread's queue (tcache.c) */
    }
    else if (!strcmp(what, "double-huge-unmapped")) p = freed(3 << 20, 1);
    /* two huge blocks cut from one cached mapping, freed: the cache merges
     * them again, and the second's start is inside the merged piece */
    else if (!strcmp(what, "double-huge-merged")) {
        free(malloc(24 << 20)); /* a 24 MiB mapping in the huge cache: a takes 8, b the rest */
        char *a = malloc(8 << 20), *b = malloc(8 << 20);
        if (!a || b != a + (8 << 20)) {
            printf("the two 8 MiB blocks are not one cached mapping's halves: %p %p\n", (void *)a, (void *)b);
            return 3;
        }
        free(a);
        free(b);
        p = b;
    }
    else {
        fprintf(stderr, "unknown case %s\n", c);
        return 2;
    }
    bad_call(call, p);
    /* with abort_on_error:1 the report must come from the bad call itself
     * (run.sh fails a case that prints this first), not later from a
     * cache flush that finds the pointer */
    printf("call returned\n");
    fflush(stdout);
    if (!heap_still_works()) {
        printf("continued: HEAP BROKEN\n");
        return 1;
    }
    printf("continued: heap OK\n");
    return 0;
}
