/*
 * libc_only.c -- a program that never calls malloc or free itself, only
 * through libc (strdup), linked with trimalloc's CMake target or with
 * pkg-config: the malloc that libc's calls bind to must be trimalloc's
 * (in libtrimalloc.so, or in the executable for the archive), not libc's.
 * With --as-needed, the default of Debian's gcc, both the shared target
 * and the archive used to leave trimalloc out of such a program, silently
 * (a tester's finding, 2026-12-05). Exits 0 and prints where malloc came
 * from, or exits 1.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

int main(void) {
    char *s = strdup("allocated by libc"); /* kept: free() would name it */
    void *m = dlsym(RTLD_DEFAULT, "malloc");
    Dl_info info;
    if (!s || !m || !dladdr(m, &info) || !info.dli_fname) {
        puts("libc_only: malloc not found");
        return 1;
    }
    printf("malloc from %s\n", info.dli_fname);
    return strstr(info.dli_fname, "libc.so") ? 1 : 0;
}
