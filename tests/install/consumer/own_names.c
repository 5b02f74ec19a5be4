/*
 * own_names.c -- a program whose own functions have the names of
 * trimalloc internals (arena_get, meta_alloc, os_random, tcache_init,
 * huge_alloc), linked with the installed libtrimalloc.a
 * (tests/install/run.sh, step static-names). Until 2026-12-07 the archive's
 * objects kept those internals as global symbols and this failed to link
 * ("multiple definition of `arena_get'"; an outside tester). Prints what
 * it computed and exits 0 if its own functions were the ones called and
 * malloc is trimalloc's (trimalloc_nclasses, which libc does not have,
 * answers).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trimalloc.h"

int arena_get(int x);
double os_random(void);
void *meta_alloc(size_t n);
int tcache_init(void);
int huge_alloc(int x);

int arena_get(int x) { return x + 1; }
double os_random(void) { return 0.5; }
void *meta_alloc(size_t n) { return calloc(1, n); }
int tcache_init(void) { return 7; }
int huge_alloc(int x) { return 2 * x; }

int main(void)
{
    char *p = meta_alloc(64);
    if (!p || p[63] != 0) return 1;
    strcpy(p, "own names");
    int ok = arena_get(1) == 2 && os_random() == 0.5 && tcache_init() == 7 && huge_alloc(4) == 8 &&
             trimalloc_nclasses() > 0;
    printf("%s: %s, %u size classes\n", p, ok ? "ok" : "WRONG", trimalloc_nclasses());
    free(p);
    return ok ? 0 : 1;
}
