/* cxx_host.c -- a C program that dlopens tests/preload/cxx_plugin.cpp
 * (built as ./cxx_plugin.so) and prints what its constructor's thread
 * computed: 100 if that thread ran. */
#include <dlfcn.h>
#include <stdio.h>

int main(void) {
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
