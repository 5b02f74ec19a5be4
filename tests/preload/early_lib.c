/* early_lib.c -- a shared library whose constructor allocates, as
 * libselinux's does (sed, ls, cp ... link it). The program that links it runs
 * that constructor before the preloaded allocator's own constructor, so
 * malloc must work before trimalloc has initialised itself. Used by the
 * early-malloc case of tests/preload/run.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int early_ok = -1;

__attribute__((constructor)) static void early_init(void)
{
    static const size_t sizes[] = {8, 16, 100, 472, 1000, 5000, 40000, 300000};
    early_ok = 1;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        char *p = malloc(sizes[i]);
        if (!p) {
            fprintf(stderr, "early malloc(%zu) returned NULL\n", sizes[i]);
            early_ok = 0;
            continue;
        }
        memset(p, 0x5a, sizes[i]);
        free(p);
    }
    char *s = strdup("constructor string kept until main");
    char *c = calloc(64, 8);
    void *r = realloc(NULL, 700);
    if (!s || !c || !r)
        early_ok = 0;
    free(c);
    free(r);
    free(s);
}
