/* dlclose.c LIB -- a program that opens trimalloc with dlopen (not as its
 * allocator: RTLD_LOCAL), lets a thread allocate and free through it, and
 * closes it while that thread still lives. The thread's cache destructor,
 * registered with pthread_key_create, runs at the thread's exit: until
 * 2026-12-05 dlclose had unmapped its code by then (a crash; found by a
 * tester). The library is linked -z nodelete now. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void *(*lib_malloc)(size_t);
static void (*lib_free)(void *);
static pthread_barrier_t used, closed;

static void *worker(void *arg) {
    (void)arg;
    char *p = lib_malloc(100);
    memset(p, 0x5a, 100);
    lib_free(p);
    pthread_barrier_wait(&used);
    pthread_barrier_wait(&closed);
    return NULL; /* the cache destructor runs now */
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s LIBTRIMALLOC\n", argv[0]);
        return 2;
    }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        printf("dlopen: %s\n", dlerror());
        return 1;
    }
    lib_malloc = (void *(*)(size_t))dlsym(h, "malloc");
    lib_free = (void (*)(void *))dlsym(h, "free");
    if (!lib_malloc || !lib_free) {
        printf("dlsym failed\n");
        return 1;
    }
    pthread_barrier_init(&used, NULL, 2);
    pthread_barrier_init(&closed, NULL, 2);
    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL) != 0) return 1;
    pthread_barrier_wait(&used);
    printf("dlclose: %d\n", dlclose(h));
    pthread_barrier_wait(&closed);
    pthread_join(t, NULL);
    printf("the thread that used the library exited after dlclose\n");
    fflush(stdout);
    pid_t pid = fork(); /* the library's fork handlers, if registered, still run */
    if (pid == 0) _exit(0);
    int status = 0;
    waitpid(pid, &status, 0);
    printf("fork: child exit %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return 0;
}
