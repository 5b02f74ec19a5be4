/* keys_main.c -- threads whose first allocation is glibc's own, made for a
 * pthread key of the program's above index 31 (keys_lib.c has taken the
 * first 40), and whose key destructor allocates at exit, in the first
 * round or in the last. Each thread runs on a stack the program maps and
 * unmaps after the join, and _heapmin (when the allocator has one) runs
 * after every join: a cache left registered by an exited thread would be
 * written in unmapped memory. Until 2026-12-06 trimalloc lost its own key's
 * value in such threads (tcache.c, TC_KEY_INDEX): their caches stayed
 * registered and _heapmin crashed. Prints the same lines with any malloc. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "trimalloc.h" /* the statistics' layout only: its functions are looked up */

static pthread_key_t key;
static int last_round; /* the destructor round that allocates: 1 or 4 */
static __thread int round_no;

static void destructor(void *p)
{
    (void)p;
    if (++round_no < last_round) {
        pthread_setspecific(key, (void *)1); /* again in the next round */
        return;
    }
    void *x[64];
    for (int i = 0; i < 64; i++) {
        x[i] = malloc(16 + (size_t)(i % 40) * 16);
        if (!x[i])
            abort();
        memset(x[i], i, 16);
    }
    for (int i = 0; i < 64; i++)
        free(x[i]);
}

static void *thread_main(void *arg)
{
    (void)arg;
    round_no = 0;
    pthread_setspecific(key, (void *)1); /* glibc allocates the key's block */
    return NULL;
}

int main(void)
{
    int (*heapmin)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "_heapmin");
    int (*stats_get)(trimalloc_stats_t *) = (int (*)(trimalloc_stats_t *))dlsym(RTLD_DEFAULT, "trimalloc_stats_get");
    if (pthread_key_create(&key, destructor) != 0)
        return 1;
    printf("program key above 31: %s\n", key > 31 ? "yes" : "no");
    const size_t stack = 256 * 1024;
    int bad = 0;
    for (int i = 0; i < 200; i++) {
        last_round = i % 2 ? 4 : 1;
        void *st = mmap(NULL, stack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (st == MAP_FAILED)
            return 1;
        pthread_attr_t at;
        pthread_t t;
        pthread_attr_init(&at);
        pthread_attr_setstack(&at, st, stack);
        if (pthread_create(&t, &at, thread_main, NULL) != 0 || pthread_join(t, NULL) != 0)
            return 1;
        pthread_attr_destroy(&at);
        munmap(st, stack);
        if (heapmin && heapmin() != 0)
            bad++;
    }
    trimalloc_stats_t s;
    /* only the main thread's cache is left (nthreads counts live caches) */
    if (stats_get && stats_get(&s) == 0 && s.nthreads > 1)
        printf("caches left registered by exited threads: %u\n", s.nthreads - 1);
    else
        printf("caches left registered by exited threads: none\n");
    printf("200 threads done, %d failed _heapmin calls\n", bad);
    return 0;
}
