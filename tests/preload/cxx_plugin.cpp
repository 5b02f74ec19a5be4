// cxx_plugin.cpp -- a C++ plugin for tests/preload/cxx_host.c. Its
// constructor, which runs inside dlopen with the loader's lock held, starts
// a thread that uses operator new and delete, and waits for it. In a C
// host that is the process's first C++ operator call. Until 2026-12-05
// trimalloc decided at that first call whether the program had replaced
// operators, with dladdr and dlsym, which wait for the loader's lock: the
// thread waited for the constructor, the constructor for the thread.
#include <pthread.h>

#include <cstdio>
#include <string>

static long total;

static void *worker(void *) {
    std::string *s = new std::string(100, 'x');
    total += static_cast<long>(s->size());
    delete s;
    int *a = new int[10]();
    total += a[3];
    delete[] a;
    return nullptr;
}

__attribute__((constructor)) static void start() {
    pthread_t t;
    if (pthread_create(&t, nullptr, worker, nullptr) == 0) pthread_join(t, nullptr);
}

extern "C" long plugin_total() { return total; }
