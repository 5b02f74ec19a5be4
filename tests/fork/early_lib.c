/*
 * early_lib.c -- a library whose constructor runs before trimalloc's (it is
 * linked after libtrimalloc.so, and the loader runs the constructors of the
 * later libraries first), for tests/fork/early.c. Built three ways (and
 * a fourth, EARLY_PREFIXED, below):
 *   EARLY_ATEXIT       40 atexit handlers before any allocation: glibc's
 *                      33rd needs a block, made under its exit-handler lock
 *   EARLY_ATFORK_MANY  60 fork handlers before any allocation: glibc's 49th
 *                      grows its list with malloc under its fork-handler lock
 *   EARLY_ATFORK_ALLOC fork handlers that allocate small, large and huge
 *                      blocks, registered before trimalloc's, so their
 *                      prepare runs after trimalloc's (which holds every
 *                      allocator lock then) and their parent and child
 *                      handlers before trimalloc's releases them
 * Each hung the process (start-up, or the first fork) until 2026-12-07.
 * With EARLY_PREFIXED (and EARLY_ATFORK_ALLOC) the handlers allocate with
 * the prefixed library's tm_malloc and tm_free, looked up by name so that
 * this library does not depend on it (a dependency's constructor would
 * run first): the sanitizer builds check the same path.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

int early_registered;      /* registrations that succeeded */
int early_prepares;        /* prepare handler runs (parent) */
int early_parent_ok;       /* parent handler runs whose blocks checked out */
int early_child_ok;        /* set in a child whose child handler's blocks checked out */

static void noop(void) {}

#ifdef EARLY_ATFORK_ALLOC
static void *(*alloc_fn)(size_t) = malloc;
static void (*free_fn)(void *) = free;

/* small, large and huge blocks, written and read back */
static int workout(unsigned char fill)
{
    static const size_t sizes[] = {24, 200000, 3u << 20}; /* small, large, huge */
    int ok = 1;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        unsigned char *p = alloc_fn(sizes[i]);
        if (!p)
            return 0;
        memset(p, fill, sizes[i]);
        for (size_t k = 0; k < sizes[i]; k += 4093)
            ok &= p[k] == fill;
        free_fn(p);
    }
    return ok;
}
static void *held; /* allocated by prepare, freed by parent/child */
/* the library's own lock, taken by its prepare handler as pthread_atfork
 * is meant to be used (tests/fork/early.c holds it around stdio calls) */
pthread_mutex_t early_mu = PTHREAD_MUTEX_INITIALIZER;
static void prepare(void)
{
    /* a cancellation point, as a usleep or a wait in a library's handler
     * is: a cancellation pending here must not act while trimalloc's
     * prepare handler, which ran before this one, holds its locks */
    pthread_testcancel();
    pthread_mutex_lock(&early_mu);
    early_prepares++;
    held = alloc_fn(100);
    if (held)
        memset(held, 0x11, 100);
    (void)workout(0x22);
}
static void parent(void)
{
    int ok = workout(0x33) && held && ((unsigned char *)held)[99] == 0x11;
    free_fn(held);
    early_parent_ok += ok;
    pthread_mutex_unlock(&early_mu);
}
static void child(void)
{
    int ok = workout(0x44) && held && ((unsigned char *)held)[99] == 0x11;
    free_fn(held);
    early_child_ok = ok;
    pthread_mutex_unlock(&early_mu);
}
#endif

__attribute__((constructor)) static void early_ctor(void)
{
#if defined(EARLY_ATEXIT)
    for (int i = 0; i < 40; i++)
        early_registered += atexit(noop) == 0;
#elif defined(EARLY_ATFORK_MANY)
    for (int i = 0; i < 60; i++)
        early_registered += pthread_atfork(noop, noop, noop) == 0;
#elif defined(EARLY_ATFORK_ALLOC)
    (void)noop;
#ifdef EARLY_PREFIXED
    alloc_fn = (void *(*)(size_t))dlsym(RTLD_DEFAULT, "tm_malloc");
    free_fn = (void (*)(void *))dlsym(RTLD_DEFAULT, "tm_free");
    if (!alloc_fn || !free_fn)
        abort();
#endif
    early_registered += pthread_atfork(prepare, parent, child) == 0;
#endif
}
