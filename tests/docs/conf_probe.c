/*
 * conf_probe.c -- a tiny program for the TRIMALLOC_CONF test: linked with
 * libtrimalloc.so, it prints "name=value" for each option named on its
 * command line, as trimalloc_option_get() reports it ("name=error" if the
 * call fails). Whatever trimalloc said about TRIMALLOC_CONF at start-up has
 * already gone to stderr by the time main runs. The name "at_secure"
 * prints getauxval(AT_SECURE) instead (1 in a set-user-ID run).
 *
 *     TRIMALLOC_CONF=narenas:3 conf_probe narenas tcache_scale
 */
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>

#include <trimalloc.h>

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        long v;
        if (strcmp(argv[i], "at_secure") == 0)
            printf("at_secure=%lu\n", getauxval(AT_SECURE));
        else if (trimalloc_option_get(argv[i], &v) == 0)
            printf("%s=%ld\n", argv[i], v);
        else
            printf("%s=error\n", argv[i]);
    }
    return 0;
}
