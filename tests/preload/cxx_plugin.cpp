// cxx_plugin.cpp -- a C++ plugin for tests/preload/cxx_host.c. Its
// constructor, which runs inside dlopen with the loader's lock held, starts
// a thread that uses operator new and delete, and waits for it. In a C
// host that is the process's first C++ operator call. Until 2026-12-05
// trimalloc decided at that first call whether the program had replaced
// operators, with dladdr and dlsym, which wait for the loader's lock: the
// thread waited for the constructor, the constructor for the thread.
// The thread also asks for more than any machine has: operator new must
// throw std::bad_alloc and its nothrow form return nullptr. Until
// 2026-12-06 trimalloc handed the failed request to libstdc++'s operator
// found then by dlsym, which waits for the same lock (found by a tester).
#include <pthread.h>

#include <cstdio>
#include <new>
#include <string>

static long total;

static void *worker(void *) {
    std::string *s = new std::string(100, 'x');
    total += static_cast<long>(s->size());
    delete s;
    int *a = new int[10]();
    total += a[3];
    delete[] a;
    volatile std::size_t huge = std::size_t(1) << 62;
    try {
        void *p = operator new(huge);
        operator delete(p);
    } catch (const std::bad_alloc &) {
        total += 1000;
    }
    if (operator new(huge, std::nothrow) == nullptr) total += 10000;
    return nullptr;
}

__attribute__((constructor)) static void start() {
    pthread_t t;
    if (pthread_create(&t, nullptr, worker, nullptr) == 0) pthread_join(t, nullptr);
}

extern "C" long plugin_total() { return total; }
