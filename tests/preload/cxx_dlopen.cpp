// cxx_dlopen.cpp LIB -- a C++ program that opens trimalloc with dlopen
// (RTLD_LOCAL: not its allocator) and calls its operator new and delete
// through dlsym. A new that cannot be served throws std::bad_alloc, and
// afterwards new and delete still both use trimalloc's heap. A reviewer
// found (2026-12-06) that a lookup made for the failed new was kept where
// trimalloc routes its operators, so later news went to libstdc++'s
// (glibc's heap) while deletes stayed trimalloc's, which aborted on them.
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <new>

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s LIB\n", argv[0]);
        return 2;
    }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        std::printf("dlopen: %s\n", dlerror());
        return 1;
    }
    auto op_new = reinterpret_cast<void *(*)(std::size_t)>(dlsym(h, "_Znwm"));
    auto op_delete = reinterpret_cast<void (*)(void *)>(dlsym(h, "_ZdlPv"));
    if (!op_new || !op_delete) {
        std::printf("dlsym: %s\n", dlerror());
        return 1;
    }
    bool threw = false;
    try {
        volatile std::size_t huge = std::size_t(1) << 62;
        op_delete(op_new(huge));
    } catch (const std::bad_alloc &) {
        threw = true;
    }
    std::printf("new of 2^62 bytes: %s\n", threw ? "bad_alloc" : "returned");
    for (int i = 0; i < 100; i++) {
        char *p = static_cast<char *>(op_new(32 + i));
        std::memset(p, 0x5a, 32 + i);
        op_delete(p);
    }
    std::printf("new and delete after it: ok\n");
    return 0;
}
