/*
 * heapmin_race.c -- hammers the world-stop handshake: worker threads
 * malloc/free small blocks at full speed (many slow paths with a small
 * cache), each block filled with its own address, checked before it is
 * freed; one or more threads call _heapmin() back to back. A block handed
 * out twice (drained by a trimmer while its owner was still on the fast
 * path) shows up as a corrupted block, or as a double-free abort.
 *
 * Written for the race ThreadSanitizer reports at world.c (4009741):
 * the trimmer stores tc->drain_pending = 1 and the owner's tls.tc =
 * &sentinel without holding tc->mu, while the owner's slow path, under
 * tc->mu, reads drain_pending and then stores tls.tc = tc
 * (tcache_settle_locked). If the trimmer's two stores fall between the
 * owner's read and its store, the owner is back on its fast path with
 * drain_pending still set; the trimmer then drains the bins under tc->mu
 * while the owner pops and pushes them.
 *
 *   cc -O2 -pthread tests/tools/heapmin_race.c -o build/heapmin_race \
 *      -Lbuild -ltrimalloc -Wl,-rpath,$PWD/build -Wl,--no-as-needed
 *   TRIMALLOC_CONF=tcache_scale:10 build/heapmin_race SECONDS WORKERS TRIMMERS
 * Exit status 1 if a block was corrupted. The window is a few
 * instructions wide: on a 2-CPU machine, 80 s of it found nothing; it
 * wants many cores.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int _heapmin(void);

static atomic_int stop;
static atomic_long trims, corrupt;

enum { HELD = 64 };

static void *worker(void *arg)
{
    uint64_t s = (uintptr_t)arg * 0x9e3779b97f4a7c15ull + 1;
    struct { uint64_t *p; size_t n; } h[HELD];
    memset(h, 0, sizeof h);
    long ops = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        int i = (int)(s % HELD);
        if (h[i].p) {
            for (size_t k = 0; k < h[i].n; k++)
                if (h[i].p[k] != ((uintptr_t)h[i].p ^ k)) {
                    atomic_fetch_add(&corrupt, 1);
                    fprintf(stderr, "heapmin_race: block %p word %zu changed\n",
                            (void *)h[i].p, k);
                    break;
                }
            free(h[i].p);
            h[i].p = NULL;
        } else {
            size_t sz = 16 + (s >> 20) % 2048;
            h[i].n = sz / 8;
            h[i].p = malloc(sz);
            if (!h[i].p)
                abort();
            for (size_t k = 0; k < h[i].n; k++)
                h[i].p[k] = (uintptr_t)h[i].p ^ k;
        }
        ops++;
    }
    for (int i = 0; i < HELD; i++)
        free(h[i].p);
    return (void *)ops;
}

static void *trimmer(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        _heapmin();
        atomic_fetch_add(&trims, 1);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int secs = argc > 1 ? atoi(argv[1]) : 10;
    int nw = argc > 2 ? atoi(argv[2]) : 3;
    int nt = argc > 3 ? atoi(argv[3]) : 1;
    if (nw < 1 || nw > 256 || nt < 1 || nt > 16)
        return 2;
    pthread_t w[256], t[16];
    long ops = 0;
    for (int i = 0; i < nw; i++)
        pthread_create(&w[i], NULL, worker, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < nt; i++)
        pthread_create(&t[i], NULL, trimmer, NULL);
    sleep((unsigned)secs);
    atomic_store(&stop, 1);
    for (int i = 0; i < nw; i++) {
        void *r;
        pthread_join(w[i], &r);
        ops += (long)r;
    }
    for (int i = 0; i < nt; i++)
        pthread_join(t[i], NULL);
    printf("ops=%ld trims=%ld corrupt=%ld\n", ops, atomic_load(&trims), atomic_load(&corrupt));
    return atomic_load(&corrupt) != 0;
}
