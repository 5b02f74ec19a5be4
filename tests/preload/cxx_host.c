/* cxx_host.c -- a C program that dlopens tests/preload/cxx_plugin.cpp
 * (built as ./cxx_plugin.so) and prints what its constructor's thread
 * computed: 11100 if that thread ran and its out-of-memory requests failed
 * as C++ requires. A deadlock there ends the program after a minute (a
 * hang guard, not a time limit: the work takes milliseconds). */
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>

int main(void) {
    alarm(60);
    void *h = dlopen("./cxx_plugin.so", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        printf("dlopen: %s\n", dlerror());
        return 1;
    }
    long (*total)(void) = (long (*)(void))dlsym(h, "plugin_total");
    if (!total) {
        printf("dlsym: %s\n", dlerror());
        return 1;
    }
    printf("plugin constructor's thread: %ld\n", total());
    return 0;
}
