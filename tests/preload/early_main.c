/* early_main.c -- reports what early_lib.c's constructor saw. */
#include <stdio.h>
#include <stdlib.h>

extern int early_ok;

int main(void)
{
    void *p = malloc(472);
    printf("constructor allocations: %s\n", early_ok == 1 ? "ok" : "FAILED");
    printf("malloc in main: %s\n", p ? "ok" : "FAILED");
    free(p);
    return early_ok == 1 && p ? 0 : 1;
}
