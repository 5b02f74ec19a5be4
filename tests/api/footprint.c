/*
 * footprint.c -- what a small process pays in memory for having trimalloc
 * loaded. The drop-in library keeps the code a small process runs apart
 * from the rest, in a mapping of its own (cmake/layout.cmake), because the
 * kernel maps up to 64 KiB of cached file pages around every page a process
 * first touches: one call into a cold function would make its neighbours
 * resident too. So after a small workload -- malloc, free, calloc, realloc
 * of small and large blocks, the aligned family, free(NULL), a size class
 * used in bursts (its bin grows), two threads that allocate and exit (the
 * last leaves an arena without a thread, which gives its pages back), a
 * fork -- no page of the cold code may be resident.
 * A function added to one of those paths must go in the hot list there.
 */
#include "test_cmocka.h"

#include <sys/wait.h>

#if !defined(TRIMALLOC_PREFIX) && defined(__OPTIMIZE__) /* see the test */
/* Rss (kB) of each r-xp mapping of libtrimalloc, in address order. */
static int tm_code_rss(long rss[], int max)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    assert_non_null(f);
    char line[512];
    int n = 0, in_code = 0;
    while (fgets(line, sizeof line, f)) {
        char perms[8];
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3) { /* a mapping's first line */
            in_code = strstr(line, "libtrimalloc") && !strcmp(perms, "r-xp") && n < max;
            continue;
        }
        long kb;
        if (in_code && sscanf(line, "Rss: %ld kB", &kb) == 1) {
            rss[n++] = kb;
            in_code = 0;
        }
    }
    fclose(f);
    return n;
}

static void *thread_work(void *arg)
{
    void *p[64];
    for (int i = 0; i < 64; i++) {
        p[i] = TM_API(malloc)((size_t)(i + 1) * 24);
        assert_non_null(p[i]);
        memset(p[i], i, (size_t)(i + 1) * 24);
    }
    pthread_barrier_wait(arg); /* both threads hold blocks now */
    for (int i = 0; i < 64; i++)
        TM_API(free)(p[i]);
    return NULL; /* the exit drains this thread's cache */
}

static void small_workload(void)
{
    void *small[256];
    for (int i = 0; i < 256; i++) {
        small[i] = TM_API(malloc)((size_t)(i % 32 + 1) * 16);
        assert_non_null(small[i]);
    }
    for (int i = 0; i < 256; i += 2)
        TM_API(free)(small[i]);
    void *z = TM_API(calloc)(100, 10);
    assert_non_null(z);
    void *r = TM_API(realloc)(NULL, 40);
    r = TM_API(realloc)(r, 400);
    r = TM_API(realloc)(r, 40 * 1024); /* large */
    r = TM_API(realloc)(r, 200 * 1024); /* large, grown */
    r = TM_API(realloc)(r, 100);
    assert_non_null(r);
    void *a = NULL;
    assert_int_equal(TM_API(posix_memalign)(&a, 256, 1000), 0);
    void *b = TM_API(aligned_alloc)(64, 640);
    assert_non_null(b);
    void *big = TM_API(malloc)(300 * 1024);
    assert_non_null(big);
    memset(big, 1, 300 * 1024);
    assert_true(TM_API(malloc_usable_size)(big) >= 300 * 1024);
    TM_API(free)(NULL);
    TM_API(free)(big);
    TM_API(free)(b);
    TM_API(free)(a);
    TM_API(free)(r);
    TM_API(free)(z);
    for (int i = 1; i < 256; i += 2)
        TM_API(free)(small[i]);

    /* a class used in bursts bigger than its bin: the bin grows */
    for (int round = 0; round < 32; round++) {
        void *burst[300];
        for (int i = 0; i < 300; i++) {
            burst[i] = TM_API(malloc)(64);
            assert_non_null(burst[i]);
        }
        for (int i = 0; i < 300; i++)
            TM_API(free)(burst[i]);
    }

    /* Two threads alive at once: the second is bound to an arena of its
     * own (the first shares the initial thread's), so the last one's exit
     * leaves that arena without a thread, and it gives its pages back. */
    pthread_t t[2];
    pthread_barrier_t both;
    assert_int_equal(pthread_barrier_init(&both, NULL, 2), 0);
    for (int i = 0; i < 2; i++)
        tu_thread_create(&t[i], thread_work, &both);
    for (int i = 0; i < 2; i++)
        tu_thread_join(t[i]);
    pthread_barrier_destroy(&both);

    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        void *c = TM_API(malloc)(32);
        TM_API(free)(c);
        _exit(c ? 0 : 1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

#endif

static void test_cold_code_stays_out_of_memory(void **state)
{
    (void)state;
#ifdef TRIMALLOC_PREFIX
    skip(); /* linked in statically: no mapping of its own */
#elif !defined(__OPTIMIZE__)
    /* A build without optimisation (Debug) keeps the hot path's inline
     * helpers as functions of their own, which the hot list does not name:
     * the layout is for optimised builds (found by a tester: 56-68 kB of
     * cold code resident in Debug builds, gcc and clang). */
    print_message("built without optimisation: the code layout is not kept\n");
    skip();
#elif !defined(TU_LAYOUT_BUILD)
    /* The hot list names the functions of GCC's Release build; another
     * compiler or build type (-O2 -g, -Os) inlines others, and its cold
     * code on the hot path says nothing about the list (tests/CMakeLists.txt). */
    print_message("not GCC's Release build: the hot list is not made for it\n");
    skip();
#else
    small_workload();
    long rss[4];
    int n = tm_code_rss(rss, 4);
    assert_true(n >= 1); /* libtrimalloc.so is mapped */
    if (n < 2) {
        print_message("libtrimalloc.so has one code mapping: built without its layout "
                      "script (TRIMALLOC_LAYOUT=OFF, or a linker without INSERT)\n");
        skip();
    }
    assert_int_equal(n, 2);
    assert_true(rss[0] > 0); /* the hot code ran */
    if (rss[1] != 0)
        fail_msg("%ld kB of trimalloc's cold code are resident after a small workload: a "
                 "function on its path is missing from cmake/layout.cmake's hot list",
                 rss[1]);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cold_code_stays_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
