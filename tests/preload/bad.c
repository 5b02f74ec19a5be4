/* bad.c -- does not compile, on purpose: tests/preload/run.sh checks that gcc
 * reports the same errors and exit status with trimalloc preloaded. */
#include <stdio.h>

struct point { int x, y; };

int main(void)
{
    struct point p = { 1, 2 };
    printf("%d\n", p.z + undeclared_variable);
    return missing_function(p) +
}
