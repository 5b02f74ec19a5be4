/*
 * crt.c -- the CRT heap family (Microsoft's names, docs/crt.md):
 *   - _heapchk: _HEAPEMPTY before anything was mapped (prefixed flavour),
 *     _HEAPOK after every step of a mixed workload (small, large, huge,
 *     realloc, _heapmin, blocks held in another thread's cache), and
 *     _HEAPBADNODE once the program writes into a freed small block (run in
 *     a forked child: the heap is damaged afterwards);
 *   - _heapset: fills free small blocks but for their cookie word and dirty
 *     free runs, and calloc still returns zeros afterwards;
 *   - _heapadd: -1 with ENOSYS;
 *   - _msize, _expand, _recalloc: sizes, in-place growth and shrinking,
 *     kind changes refused, errno on every error, contents kept and new
 *     bytes zeroed;
 *   - the _aligned_* family: every power-of-two alignment with offsets,
 *     EINVAL/ENOMEM cases, realloc/recalloc keep contents and alignment,
 *     _aligned_msize, and _aligned_free refusing (aborting on) pointers it
 *     did not hand out.
 * Bad pointers must abort; those cases run in forked children.
 */
#include "test_cmocka.h"

#include <sys/mman.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>

/* What the heap said before the program allocated anything (main). */
static int first_heapchk, first_heapwalk, first_heapset;

#define assert_heap_ok() assert_int_equal(TM_API(_heapchk)(), _HEAPOK)

/* Hide where a pointer came from, so the compiler does not hold a block
 * that _expand grew to the size malloc was asked for. */
static void *launder(void *p)
{
    __asm__ volatile("" : "+r"(p));
    return p;
}

/* ---- children ------------------------------------------------------------- */

/* Run body in a forked child with stderr silenced; returns the wait status.
 * The child's exit code is body's return value. */
static int child_status(int (*body)(void))
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0)
            dup2(fd, 2);
        _exit(body());
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

static void assert_child_aborts(int (*body)(void), const char *what)
{
    int st = child_status(body);
    if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGABRT)
        fail_msg("%s: expected an abort, child %s %d", what,
                 WIFSIGNALED(st) ? "died with signal" : "exited with", 
                 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
}

static void assert_child_exits_zero(int (*body)(void), const char *what)
{
    int st = child_status(body);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail_msg("%s: child %s %d", what, WIFSIGNALED(st) ? "died with signal" : "exited with",
                 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
}

/* ---- _heapchk ---------------------------------------------------------------- */

static void test_heapchk_empty(void **state)
{
    (void)state;
#ifdef TRIMALLOC_PREFIX
    /* nothing calls tm_malloc before main */
    assert_int_equal(first_heapchk, _HEAPEMPTY);
    assert_int_equal(first_heapwalk, _HEAPEMPTY);
    assert_int_equal(first_heapset, _HEAPEMPTY);
#else
    /* the loader or libc may already have used malloc: then it is not empty */
    if (first_heapchk != _HEAPEMPTY)
        assert_int_equal(first_heapchk, _HEAPOK);
    assert_int_equal(first_heapwalk, first_heapchk == _HEAPOK ? _HEAPOK : _HEAPEMPTY);
#endif
    /* once something was mapped, the heap never reads as uninitialised */
    void *p = TM_API(malloc)(100);
    assert_heap_ok();
    TM_API(free)(p);
    assert_heap_ok();
    assert_int_equal(TM_API(_heapmin)(), 0);
    assert_heap_ok();
}

static void test_heapchk_every_step(void **state)
{
    (void)state;
    enum { N = 700 };
    static tu_block_t b[N];
    tu_rng_t rng;
    tu_rng_seed(&rng, 11);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++)
            b[i] = tu_block_new(tu_rand_size(&rng, 12 * TU_MIB, 8), 0, (uint64_t)i);
        assert_heap_ok();
        for (int i = 0; i < N; i += 3)
            tu_block_free(&b[i]);
        assert_heap_ok();
        for (int i = 1; i < N; i += 3) { /* grow and shrink across kinds */
            size_t ns = tu_rand_size(&rng, 6 * TU_MIB, 20);
            unsigned char *q = TM_API(realloc)(b[i].p, ns);
            assert_non_null(q);
            size_t keep = b[i].size < ns ? b[i].size : ns;
            assert_pattern(q, keep, b[i].seed);
            b[i].p = q;
            b[i].size = keep;
        }
        assert_heap_ok();
        assert_int_equal(TM_API(_heapmin)(), 0);
        assert_heap_ok();
        for (int i = 0; i < N; i++)
            tu_block_free(&b[i]);
        assert_heap_ok();
    }
}

/* Another thread's cache holds blocks (freed and refilled) while we check. */
struct parked {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stage; /* 1: blocks cached, 2: go on */
};

static void *parked_thread(void *arg)
{
    struct parked *pk = arg;
    void *blocks[300];
    for (int i = 0; i < 300; i++) {
        blocks[i] = TM_API(malloc)(16 + (size_t)(i % 40) * 24);
        TU_CHECK(blocks[i] != NULL, "malloc failed");
    }
    for (int i = 0; i < 300; i += 2)
        TM_API(free)(blocks[i]);
    tu_lock(&pk->mu);
    pk->stage = 1;
    pthread_cond_broadcast(&pk->cv);
    while (pk->stage != 2)
        pthread_cond_wait(&pk->cv, &pk->mu);
    tu_unlock(&pk->mu);
    for (int i = 1; i < 300; i += 2)
        TM_API(free)(blocks[i]);
    return NULL;
}

static void test_heapchk_other_thread_cache(void **state)
{
    (void)state;
    struct parked pk = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    pthread_t t;
    tu_thread_create(&t, parked_thread, &pk);
    tu_lock(&pk.mu);
    while (pk.stage != 1)
        pthread_cond_wait(&pk.cv, &pk.mu);
    tu_unlock(&pk.mu);
    assert_heap_ok();
    assert_int_equal(TM_API(_heapset)(0x3c), _HEAPOK);
    assert_heap_ok();
    tu_lock(&pk.mu);
    pk.stage = 2;
    pthread_cond_broadcast(&pk.cv);
    tu_unlock(&pk.mu);
    tu_thread_join(t);
    assert_heap_ok();
}

/* errno is left alone by the checks and the walk, whatever they find */
static void test_heap_errno_kept(void **state)
{
    (void)state;
    void *p = TM_API(malloc)(77);
    errno = 31337;
    assert_int_equal(TM_API(_heapchk)(), _HEAPOK);
    assert_int_equal(TM_API(_heapset)(0x21), _HEAPOK);
    _HEAPINFO e = {NULL, 0, 0};
    while (TM_API(_heapwalk)(&e) == _HEAPOK)
        ;
    e._pentry = (int *)&e; /* not an entry */
    assert_int_equal(TM_API(_heapwalk)(&e), _HEAPBADPTR);
    assert_int_equal(errno, 31337);
    TM_API(free)(p);
}

/* ---- writes into freed memory (children: the heap is damaged after) ---------- */

/* Is p, right now, a free block of its own in a slab (a free entry of
 * _heapwalk at p that is not a whole free run)? The walk drains caches. */
static int is_free_slab_block(const void *p, size_t size)
{
    _HEAPINFO e = {NULL, 0, 0};
    while (TM_API(_heapwalk)(&e) == _HEAPOK) {
        if ((const void *)e._pentry == p)
            return e._useflag == _FREEENTRY && e._size == size;
        if ((const char *)e._pentry > (const char *)p)
            return 0;
    }
    return 0;
}

/* Allocate a row of blocks and free one that then sits in its slab (the
 * others stay held, so the slab is not given back). NULL if none did. */
static unsigned char *freed_in_slab(size_t size)
{
    static unsigned char *b[64];
    for (int i = 0; i < 64; i++) {
        b[i] = TM_API(malloc)(size);
        if (!b[i])
            return NULL;
        memset(b[i], 0x11, size);
    }
    size_t usable = TM_API(malloc_usable_size)(b[0]);
    for (int i = 20; i < 64; i += 7) {
        TM_API(free)(b[i]);
        if (is_free_slab_block(b[i], usable))
            return b[i];
    }
    return NULL;
}

static int child_uaf_word(void)
{
    volatile unsigned char *p = freed_in_slab(48);
    if (!p)
        return 10;
    if (TM_API(_heapchk)() != _HEAPOK)
        return 11;
    memset((void *)p, 0x22, 48); /* the whole block, its cookie word too */
    if (TM_API(_heapchk)() != _HEAPBADNODE)
        return 12;
    if (TM_API(_heapset)(0) != _HEAPBADNODE) /* refuses, like _heapchk */
        return 13;
    /* the walk reports the damaged entry when it reaches it */
    _HEAPINFO e = {NULL, 0, 0};
    int rc;
    while ((rc = TM_API(_heapwalk)(&e)) == _HEAPOK)
        ;
    return rc == _HEAPBADNODE ? 0 : 14;
}

/* A block freed twice, with _heapmin between the frees giving back the
 * page that held it (and its cookie word): free() must still see it. */
static int child_double_free_purged(void)
{
    enum { N = 360, SZ = 1280 }; /* 1280-byte blocks: slabs of 3 pages */
    unsigned char *b[N];
    for (int i = 0; i < N; i++) {
        if (!(b[i] = TM_API(malloc)(SZ)))
            return 10;
        memset(b[i], 0x33, SZ);
    }
    unsigned char *x = NULL;
    for (int i = N / 2; i < N && !x; i++)
        if (((uintptr_t)b[i] & 4095) + SZ <= 4096)
            x = b[i]; /* a block inside one page */
    if (!x)
        return 11;
    uintptr_t pg = (uintptr_t)x & ~(uintptr_t)4095;
    for (int i = 0; i < N; i++) /* free every block with a byte on that page */
        if ((uintptr_t)b[i] < pg + 4096 && (uintptr_t)b[i] + SZ > pg)
            TM_API(free)(b[i]);
    if (TM_API(_heapmin)() != 0 || TM_API(_heapchk)() != _HEAPOK)
        return 12;
    TM_API(free)(x); /* aborts */
    return 0;
}

static int child_uaf_byte(void)
{
    volatile unsigned char *p = freed_in_slab(1000);
    if (!p)
        return 10;
    if (TM_API(_heapchk)() != _HEAPOK)
        return 11;
    p[13] ^= 0x40; /* one byte of the cookie word: bytes 8..15 of a free block */
    return TM_API(_heapchk)() == _HEAPBADNODE ? 0 : 12;
}

static void test_uaf_write_detected(void **state)
{
    (void)state;
    /* The prefixed flavour's memory comes from our own mmaps, which ASan
     * does not poison, and the drop-in flavour has no sanitizer: the
     * deliberate writes are not reported by either. */
    assert_child_exits_zero(child_uaf_word, "write a word into a freed block");
    assert_child_exits_zero(child_uaf_byte, "write a byte into a freed block");
    assert_heap_ok(); /* the parent's heap is untouched */
}

static void test_double_free_after_heapmin(void **state)
{
    (void)state;
    assert_child_aborts(child_double_free_purged, "free twice, _heapmin in between");
    assert_heap_ok();
}

/* ---- _heapset ----------------------------------------------------------------------- */

static void test_heapset(void **state)
{
    (void)state;
    enum { N = 64 };
    unsigned char *b[N];
    for (int i = 0; i < N; i++) {
        b[i] = TM_API(malloc)(200);
        assert_non_null(b[i]);
        memset(b[i], 0x77, 200);
    }
    for (int i = 0; i < N; i += 2)
        TM_API(free)(b[i]);
    assert_int_equal(TM_API(_heapset)(0xab), _HEAPOK);
    assert_heap_ok();
    for (int i = 1; i < N; i += 2) /* held blocks are not touched */
        assert_int_equal(tu_find_not_byte(b[i], 200, 0x77), (size_t)-1);
    /* Every free small block now holds the fill byte but in bytes 8..15
     * (a free block's cookie); every page of a free run holds it too (the
     * first page but in bytes 8..15), or zeros: a page never written or
     * purged, which _heapset leaves alone. The walk's drain adds nothing:
     * our cache was drained by _heapset and nothing was freed since. */
    _HEAPINFO e = {NULL, 0, 0};
    int rc, nfree = 0;
    while ((rc = TM_API(_heapwalk)(&e)) == _HEAPOK) {
        if (e._useflag != _FREEENTRY)
            continue;
        const unsigned char *q = (const unsigned char *)e._pentry;
        size_t small = e._size & 4095 ? 1 : 0; /* not a page multiple: a small block */
        size_t piece = small ? e._size : 4096;
        for (size_t off = 0; off < e._size; off += piece) {
            const unsigned char *pg = q + off;
            size_t skip = off ? 0 : 16; /* the cookie bytes 8..15 of the entry */
            int filled = tu_find_not_byte(pg, off ? piece : 8, 0xab) == (size_t)-1 &&
                         tu_find_not_byte(pg + skip, piece - skip, 0xab) == (size_t)-1;
            if (!filled && (small || tu_find_not_byte(pg, piece, 0) != (size_t)-1))
                fail_msg("free entry %p (%zu bytes) was not filled at offset %zu", (void *)q,
                         e._size, off);
        }
        nfree++;
    }
    assert_int_equal(rc, _HEAPEND);
    assert_true(nfree >= N / 2);
    for (int i = 1; i < N; i += 2)
        TM_API(free)(b[i]);

    /* a dirty free run is filled and no longer trusted to be zero */
    unsigned char *big = TM_API(malloc)(300 * TU_KIB);
    assert_non_null(big);
    memset(big, 0x55, 300 * TU_KIB);
    TM_API(free)(big);
    assert_int_equal(TM_API(_heapset)(0xff), _HEAPOK);
    unsigned char *z = TM_API(calloc)(1, 300 * TU_KIB);
    assert_non_null(z);
    assert_int_equal(tu_find_not_byte(z, 300 * TU_KIB, 0), (size_t)-1);
    TM_API(free)(z);
    assert_int_equal(TM_API(_heapset)(0), _HEAPOK);
    assert_heap_ok();
}

/* ---- _heapadd, _msize ------------------------------------------------------------ */

static void test_heapadd(void **state)
{
    (void)state;
    char buf[256];
    errno = 0;
    assert_int_equal(TM_API(_heapadd)(buf, sizeof buf), -1);
    assert_int_equal(errno, ENOSYS);
    errno = 0;
    assert_int_equal(TM_API(_heapadd)(NULL, 0), -1);
    assert_int_equal(errno, ENOSYS);
}

static int child_msize_bad(void)
{
    char *p = TM_API(malloc)(64);
    (void)TM_API(_msize)(p + 16);
    return 0;
}

static int child_msize_freed(void)
{
    void *p = TM_API(malloc)(64);
    TM_API(free)(p);
    (void)TM_API(_msize)(p);
    return 0;
}

static void test_msize(void **state)
{
    (void)state;
    static const size_t sizes[] = {0, 1, 16, 17, 1000, 32768, 32769, 100000, 2 << 20,
                                   (2 << 20) + 1, 9 << 20};
    for (size_t i = 0; i < TU_ARRAY_LEN(sizes); i++) {
        void *p = TM_API(malloc)(sizes[i]);
        assert_non_null(p);
        size_t n = TM_API(_msize)(p);
        assert_int_equal(n, TM_API(malloc_usable_size)(p));
        assert_true(n >= sizes[i]);
        TM_API(free)(p);
    }
    errno = 0;
    assert_int_equal(TM_API(_msize)(NULL), (size_t)-1);
    assert_int_equal(errno, EINVAL);
    assert_child_aborts(child_msize_bad, "_msize of an interior pointer");
    assert_child_aborts(child_msize_freed, "_msize of a freed block");
    assert_heap_ok();
}

/* ---- _expand ---------------------------------------------------------------------- */

static int child_expand_bad(void)
{
    char *p = TM_API(malloc)(5000);
    (void)TM_API(_expand)(p + 32, 10);
    return 0;
}

/* _expand(p, n): either p with at least n usable bytes, or NULL with ENOMEM
 * and p unchanged; the first `keep` bytes keep their pattern either way. */
static int expand_checked(void *p, size_t n, size_t keep, uint64_t seed)
{
    size_t before = TM_API(_msize)(p);
    errno = 0;
    void *q = TM_API(_expand)(p, n);
    int e = errno;
    if (q) {
        assert_ptr_equal(q, p);
        assert_true(TM_API(_msize)(p) >= n);
    } else {
        assert_int_equal(e, ENOMEM);
        assert_int_equal(TM_API(_msize)(p), before);
    }
    assert_pattern(p, keep, seed);
    assert_heap_ok();
    return q != NULL;
}

static void test_expand(void **state)
{
    (void)state;
    errno = 0;
    assert_null(TM_API(_expand)(NULL, 10));
    assert_int_equal(errno, EINVAL);

    /* small: anything up to its class size, nothing beyond */
    unsigned char *s = TM_API(malloc)(100);
    size_t cls = TM_API(_msize)(s);
    tu_fill(s, cls, 1);
    assert_true(expand_checked(s, 1, cls, 1));
    assert_true(expand_checked(s, 0, cls, 1));
    assert_true(expand_checked(s, cls, cls, 1));
    assert_false(expand_checked(s, cls + 1, cls, 1));
    assert_false(expand_checked(s, 40000, cls, 1)); /* would become large */
    errno = 0;
    assert_null(TM_API(_expand)(s, (size_t)PTRDIFF_MAX + 1));
    assert_int_equal(errno, ENOMEM);
    TM_API(free)(s);

    /* large: grows into free pages behind it, shrinks in place */
    unsigned char *l = launder(TM_API(malloc)(100 * TU_KIB));
    tu_fill(l, 100 * TU_KIB, 2);
    if (expand_checked(l, 300 * TU_KIB, 100 * TU_KIB, 2))
        tu_fill(l, 300 * TU_KIB, 2);
    assert_true(expand_checked(l, 64 * TU_KIB, 64 * TU_KIB, 2));
    assert_int_equal(TM_API(_msize)(l), 64 * TU_KIB);
    /* a shrink to a small size succeeds and leaves the block as it is */
    assert_true(expand_checked(l, 1000, 64 * TU_KIB, 2));
    assert_int_equal(TM_API(_msize)(l), 64 * TU_KIB);
    assert_false(expand_checked(l, 8 * TU_MIB, 64 * TU_KIB, 2)); /* would be huge */
    /* blocked by a neighbour: a large block right behind it */
    unsigned char *n1 = TM_API(malloc)(64 * TU_KIB);
    (void)expand_checked(l, 200 * TU_KIB, 64 * TU_KIB, 2);
    TM_API(free)(n1);
    TM_API(free)(l);

    /* huge: shrinks (giving back whole chunks), grows if mremap can */
    unsigned char *h = TM_API(malloc)(10 * TU_MIB);
    tu_fill(h, 10 * TU_MIB, 3);
    assert_true(expand_checked(h, 5 * TU_MIB, 5 * TU_MIB, 3));
    assert_true(TM_API(_msize)(h) >= 5 * TU_MIB && TM_API(_msize)(h) < 10 * TU_MIB);
    (void)expand_checked(h, 20 * TU_MIB, 5 * TU_MIB, 3);
    size_t hs = TM_API(_msize)(h);
    assert_true(expand_checked(h, 1 * TU_MIB, 5 * TU_MIB, 3)); /* a large size: kept whole */
    assert_int_equal(TM_API(_msize)(h), hs);
    TM_API(free)(h);

    /* Aligned blocks, whose kind does not follow from their size: a
     * 100-byte block of 8 MiB alignment is huge, one of 64 KiB alignment a
     * large run. Each can be "resized" to its own size and shrunk (until
     * 2026-12-05 both failed with ENOMEM, found by a tester). */
    size_t aligns[] = {64 * TU_KIB, 8 * TU_MIB};
    for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
        void *ap = NULL;
        assert_int_equal(TM_API(posix_memalign)(&ap, aligns[i], 100), 0);
        assert_int_equal((uintptr_t)ap % aligns[i], 0);
        size_t own = TM_API(_msize)(ap);
        tu_fill(ap, own, 4 + i);
        assert_true(expand_checked(ap, own, own, 4 + i));
        assert_true(expand_checked(ap, 100, own, 4 + i));
        assert_true(expand_checked(ap, 50, own, 4 + i));
        assert_true(expand_checked(ap, 0, own, 4 + i));
        assert_int_equal((uintptr_t)ap % aligns[i], 0);
        TM_API(free)(ap);
    }

    assert_child_aborts(child_expand_bad, "_expand of an interior pointer");
    assert_heap_ok();
}

/* ---- _recalloc ------------------------------------------------------------------------ */

static int child_recalloc_bad(void)
{
    char *p = TM_API(malloc)(300);
    (void)TM_API(_recalloc)(p + 16, 1, 10);
    return 0;
}

/* p holds `keep` bytes of seed's pattern and was last sized by _recalloc, so
 * its bytes past `keep` read zero. Resize to n, check, refill. */
static unsigned char *recalloc_step(unsigned char *p, size_t *keep, size_t n, uint64_t seed)
{
    size_t old = p ? TM_API(_msize)(p) : 0;
    if (p)
        assert_int_equal(tu_find_not_byte(p + *keep, old - *keep, 0), (size_t)-1);
    unsigned char *q = TM_API(_recalloc)(p, 1, n);
    assert_non_null(q);
    size_t nu = TM_API(_msize)(q);
    assert_true(nu >= n);
    size_t k = *keep < n ? *keep : n;
    assert_pattern(q, k, seed);
    assert_int_equal(tu_find_not_byte(q + k, nu - k, 0), (size_t)-1);
    tu_fill(q, n, seed);
    *keep = n;
    assert_heap_ok();
    return q;
}

/* A calloc'd block grown by _recalloc reads zero throughout, as on
 * Microsoft's CRT, whose blocks have their exact size: calloc zeroes its
 * block's whole usable size, not only the bytes asked for. The block
 * calloc gets is the one just freed, dirtied to its last usable byte.
 * (Until 2026-12-07 calloc(1, 100) then _recalloc to 112 bytes read 12
 * bytes of 0xee; an outside reviewer.) */
static void test_calloc_then_recalloc_reads_zero(void **state)
{
    (void)state;
    static const size_t sizes[] = {1, 17, 100, 1000, 3000, 10000, 10241, 40000, 300000};
    for (size_t i = 0; i < TU_ARRAY_LEN(sizes); i++) {
        size_t n = sizes[i];
        unsigned char *d = TM_API(malloc)(n);
        assert_non_null(d);
        memset(d, 0xee, TM_API(_msize)(d));
        TM_API(free)(d);
        unsigned char *p = TM_API(calloc)(1, n);
        assert_non_null(p);
        size_t usable = TM_API(_msize)(p);
        unsigned char *q = TM_API(_recalloc)(p, 1, usable);
        assert_non_null(q);
        size_t now = TM_API(_msize)(q);
        assert_true(now >= usable);
        assert_int_equal(tu_find_not_byte(q, now, 0), (size_t)-1);
        TM_API(free)(q);
    }
    assert_heap_ok();
}

static void test_recalloc(void **state)
{
    (void)state;
    size_t keep = 0;
    unsigned char *p = NULL;
    static const size_t steps[] = {10,      100,      5000,         40000,   300000,
                                   3 << 20, 9 << 20,  20 << 20,     7 << 20, 200000,
                                   50000,   1000,     24,           1,       70000};
    for (size_t i = 0; i < TU_ARRAY_LEN(steps); i++)
        p = recalloc_step(p, &keep, steps[i], 44);
    /* num * size, not just size */
    unsigned char *q = TM_API(_recalloc)(p, 3, 1000);
    assert_non_null(q);
    assert_true(TM_API(_msize)(q) >= 3000);
    assert_pattern(q, 3000 < keep ? 3000 : keep, 44);
    p = q;

    /* overflow: NULL, ENOMEM, block unchanged */
    errno = 0;
    assert_null(TM_API(_recalloc)(p, SIZE_MAX / 2, 3));
    assert_int_equal(errno, ENOMEM);
    errno = 0;
    assert_null(TM_API(_recalloc)(NULL, SIZE_MAX / 2, 3));
    assert_int_equal(errno, ENOMEM);
    errno = 0;
    assert_null(TM_API(_recalloc)(p, 1, (size_t)PTRDIFF_MAX + 1));
    assert_int_equal(errno, ENOMEM);
    assert_pattern(p, 3000 < keep ? 3000 : keep, 44);

    /* zero bytes: realloc's behaviour, the block is freed */
    assert_null(TM_API(_recalloc)(p, 0, 10));

    /* from NULL: calloc, and all usable bytes zero */
    for (size_t n = 1; n < 70000; n = n * 3 + 1) {
        unsigned char *z = TM_API(_recalloc)(NULL, n, 1);
        assert_non_null(z);
        assert_int_equal(tu_find_not_byte(z, TM_API(_msize)(z), 0), (size_t)-1);
        TM_API(free)(z);
    }
    assert_child_aborts(child_recalloc_bad, "_recalloc of an interior pointer");
    assert_heap_ok();
}

/* A huge block that _recalloc moves by malloc and copy (here: it has a
 * guard page, the guard option was turned off since, and the program split
 * its mapping with madvise, so mremap cannot grow it) can land on a
 * freed huge mapping from the cache, still full of old bytes: the new
 * bytes must read zero all the same. (Until 2026-12-05 _recalloc trusted
 * every huge-to-huge growth to be mremap's zero pages. Until 2026-12-06
 * the guard page alone made realloc copy.) */
static void test_recalloc_huge_moved_zeroes(void **state)
{
    (void)state;
    const size_t x = (size_t)8 << 20;
    long guard = 0;
    assert_int_equal(TM_API(trimalloc_option_get)("guard", &guard), 0);
    assert_int_equal(TM_API(trimalloc_option_set)("guard", 1), 0);
    unsigned char *a = TM_API(malloc)(x);
    assert_non_null(a);
    memset(a, 0x11, x);
    assert_int_equal(madvise(a + x / 2, 4096, MADV_DONTFORK), 0); /* no mremap of it now */
    assert_int_equal(TM_API(trimalloc_option_set)("guard", 0), 0);
    unsigned char *b = TM_API(malloc)(2 * x); /* freed into the huge cache, dirty */
    assert_non_null(b);
    memset(b, 0xab, 2 * x);
    TM_API(free)(b);
    unsigned char *q = TM_API(_recalloc)(a, 1, 2 * x);
    assert_non_null(q);
    size_t nu = TM_API(_msize)(q);
    assert_true(nu >= 2 * x);
    assert_int_equal(tu_find_not_byte(q, x, 0x11), (size_t)-1);
    assert_int_equal(tu_find_not_byte(q + x, nu - x, 0), (size_t)-1);
    TM_API(free)(q);
    assert_int_equal(TM_API(trimalloc_option_set)("guard", guard), 0);
    assert_heap_ok();
}

/* ---- the aligned family ---------------------------------------------------------------- */

static size_t eff_align(size_t a) { return a < sizeof(void *) ? sizeof(void *) : a; }

static void check_aligned(void *p, size_t size, size_t align, size_t offset, uint64_t seed)
{
    assert_non_null(p);
    assert_int_equal(((uintptr_t)p + offset) % eff_align(align), 0);
    size_t n = TM_API(_aligned_msize)(p, align, offset);
    assert_true(n >= size);
    tu_fill(p, size, seed);
}

static void test_aligned_malloc(void **state)
{
    (void)state;
    static const size_t sizes[] = {0, 1, 8, 24, 100, 4096, 40000, 300000, 3 << 20};
    uint64_t seed = 1;
    for (size_t align = 1; align <= ((size_t)4 << 20); align *= 2) {
        for (size_t i = 0; i < TU_ARRAY_LEN(sizes); i++) {
            size_t size = sizes[i];
            if (align >= TU_MIB && size > 40000)
                continue; /* keep the run short */
            size_t offs[] = {0, 1, 8, 24, align / 2 + 1, size ? size - 1 : 0};
            void *p = TM_API(_aligned_malloc)(size, align);
            check_aligned(p, size, align, 0, seed++);
            for (size_t k = 0; k < TU_ARRAY_LEN(offs); k++) {
                if (offs[k] && offs[k] >= size)
                    continue;
                void *q = TM_API(_aligned_offset_malloc)(size, align, offs[k]);
                check_aligned(q, size, align, offs[k], seed + 1000);
                assert_pattern(p, size, seed - 1); /* neighbours untouched */
                TM_API(_aligned_free)(q);
            }
            TM_API(_aligned_free)(p);
        }
    }
    assert_heap_ok();
}

static void test_aligned_errors(void **state)
{
    (void)state;
    static const size_t bad_align[] = {0, 3, 6, 12, 24, 100, 4097, (size_t)3 << 20, SIZE_MAX};
    for (size_t i = 0; i < TU_ARRAY_LEN(bad_align); i++) {
        assert_alloc_fails(TM_API(_aligned_malloc)(64, tu_opaque(bad_align[i])), EINVAL);
        assert_alloc_fails(TM_API(_aligned_offset_malloc)(64, tu_opaque(bad_align[i]), 8),
                           EINVAL);
        assert_alloc_fails(TM_API(_aligned_recalloc)(NULL, 2, 8, tu_opaque(bad_align[i])),
                           EINVAL);
    }
    /* offset must be below the size (or 0) */
    assert_alloc_fails(TM_API(_aligned_offset_malloc)(64, 16, 64), EINVAL);
    assert_alloc_fails(TM_API(_aligned_offset_malloc)(64, 16, 1000), EINVAL);
    assert_alloc_fails(TM_API(_aligned_offset_malloc)(0, 16, 1), EINVAL);
    void *z = TM_API(_aligned_offset_malloc)(0, 16, 0);
    assert_non_null(z);
    TM_API(_aligned_free)(z);
    /* too big */
    assert_alloc_fails(TM_API(_aligned_malloc)(tu_opaque(SIZE_MAX), 16), ENOMEM);
    assert_alloc_fails(TM_API(_aligned_malloc)(tu_opaque(SIZE_MAX - 100), 4096), ENOMEM);
    assert_alloc_fails(TM_API(_aligned_malloc)(tu_opaque((size_t)PTRDIFF_MAX + 1), 64), ENOMEM);
    assert_alloc_fails(TM_API(_aligned_recalloc)(NULL, SIZE_MAX / 2, 3, 16), ENOMEM);

    /* realloc with a bad alignment or offset: NULL, EINVAL, block kept */
    unsigned char *p = TM_API(_aligned_malloc)(100, 64);
    tu_fill(p, 100, 9);
    assert_alloc_fails(TM_API(_aligned_realloc)(p, 200, 48), EINVAL);
    assert_alloc_fails(TM_API(_aligned_offset_realloc)(p, 200, 64, 200), EINVAL);
    assert_pattern(p, 100, 9);
    /* _aligned_msize */
    errno = 0;
    assert_int_equal(TM_API(_aligned_msize)(NULL, 16, 0), (size_t)-1);
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_int_equal(TM_API(_aligned_msize)(p, 48, 0), (size_t)-1);
    assert_int_equal(errno, EINVAL);
    assert_true(TM_API(_aligned_msize)(p, 64, 0) >= 100);
    TM_API(_aligned_free)(p);
    TM_API(_aligned_free)(NULL); /* no-op */
    assert_heap_ok();
}

static void test_aligned_realloc(void **state)
{
    (void)state;
    static const size_t sizes[] = {1, 50, 700, 5000, 40000, 200000, 3 << 20, 100, 9 << 20, 30};
    static const size_t aligns[] = {8, 16, 64, 4096, 65536};
    for (size_t a = 0; a < TU_ARRAY_LEN(aligns); a++) {
        for (size_t off = 0; off <= 24; off += 12) {
            size_t align = aligns[a];
            unsigned char *p = NULL;
            size_t have = 0;
            for (size_t i = 0; i < TU_ARRAY_LEN(sizes); i++) {
                size_t n = sizes[i];
                if (off && off >= n)
                    continue;
                unsigned char *q = TM_API(_aligned_offset_realloc)(p, n, align, off);
                check_aligned(q, 0, align, off, 0);
                assert_true(TM_API(_aligned_msize)(q, align, off) >= n);
                assert_pattern(q, have < n ? have : n, 1000 + a);
                tu_fill(q, n, 1000 + a);
                have = n;
                p = q;
            }
            /* size 0 frees */
            assert_null(TM_API(_aligned_offset_realloc)(p, 0, align, off));
        }
    }
    /* _aligned_realloc(NULL, ...) allocates */
    unsigned char *p = TM_API(_aligned_realloc)(NULL, 300, 128);
    check_aligned(p, 300, 128, 0, 5);
    p = TM_API(_aligned_realloc)(p, 3000, 128);
    check_aligned(p, 0, 128, 0, 0);
    assert_pattern(p, 300, 5);
    TM_API(_aligned_free)(p);
    assert_heap_ok();
}

static void test_aligned_recalloc(void **state)
{
    (void)state;
    static const size_t counts[] = {3, 70, 900, 5000, 60000, 500000, 40, 3};
    for (size_t off = 0; off <= 8; off += 8) {
        unsigned char *p = NULL;
        size_t have = 0;
        for (size_t i = 0; i < TU_ARRAY_LEN(counts); i++) {
            size_t n = counts[i] * 4;
            unsigned char *q = TM_API(_aligned_offset_recalloc)(p, counts[i], 4, 256, off);
            assert_non_null(q);
            assert_int_equal(((uintptr_t)q + off) % 256, 0);
            size_t nu = TM_API(_aligned_msize)(q, 256, off);
            assert_true(nu >= n);
            size_t k = have < n ? have : n;
            assert_pattern(q, k, 77);
            assert_int_equal(tu_find_not_byte(q + k, nu - k, 0), (size_t)-1);
            tu_fill(q, n, 77);
            have = n;
            p = q;
        }
        assert_null(TM_API(_aligned_offset_recalloc)(p, 0, 4, 256, off)); /* frees */
    }
    unsigned char *z = TM_API(_aligned_recalloc)(NULL, 100, 10, 32);
    assert_non_null(z);
    assert_int_equal((uintptr_t)z % 32, 0);
    assert_int_equal(tu_find_not_byte(z, TM_API(_aligned_msize)(z, 32, 0), 0), (size_t)-1);
    /* overflow with a block: NULL, ENOMEM, block kept */
    assert_alloc_fails(TM_API(_aligned_recalloc)(z, SIZE_MAX / 4, 8, 32), ENOMEM);
    TM_API(_aligned_free)(z);
    assert_heap_ok();
}

/* _aligned_free on pointers the aligned family did not return */
static int child_aligned_free_plain(void)
{
    /* A plain block y right behind a block x whose last word points at x:
     * the header check must see that y is not inside x. */
    enum { N = 64 };
    unsigned char *b[N];
    for (int i = 0; i < N; i++)
        if (!(b[i] = TM_API(malloc)(64)))
            return 10;
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < N; j++) {
            if (b[j] == b[i] + 64) {
                uintptr_t self = (uintptr_t)b[i];
                __builtin_memcpy(b[i] + 56, &self, sizeof self);
                TM_API(_aligned_free)(b[j]);
                return 0; /* not reached: it aborts */
            }
        }
    }
    return 11; /* no adjacent pair */
}

static int child_aligned_free_stack(void)
{
    char local[64];
    TM_API(_aligned_free)(local + 16);
    return 0;
}

static int child_aligned_free_twice(void)
{
    void *p = TM_API(_aligned_malloc)(100, 64);
    TM_API(_aligned_free)(p);
    TM_API(_aligned_free)(p);
    return 0;
}

static int child_aligned_free_huge_twice(void)
{
    void *p = TM_API(_aligned_malloc)(5 << 20, 4096);
    TM_API(_aligned_free)(p);
    TM_API(_aligned_free)(p);
    return 0;
}

static int child_aligned_msize_plain(void)
{
    unsigned char *p = TM_API(malloc)(5000);
    memset(p, 0, 5000);
    (void)TM_API(_aligned_msize)(p + 64, 64, 0);
    return 0;
}

static void test_aligned_free_checks(void **state)
{
    (void)state;
    assert_child_aborts(child_aligned_free_plain, "_aligned_free of a plain block");
    assert_child_aborts(child_aligned_free_stack, "_aligned_free of a stack address");
    assert_child_aborts(child_aligned_free_twice, "_aligned_free twice");
    assert_child_aborts(child_aligned_free_huge_twice, "_aligned_free twice (huge)");
    assert_child_aborts(child_aligned_msize_plain, "_aligned_msize of a plain block");
    /* huge alignments: the header may sit past the block's first chunk */
    void *p = TM_API(_aligned_offset_malloc)(100, (size_t)16 << 20, 40);
    check_aligned(p, 100, (size_t)16 << 20, 40, 3);
    TM_API(_aligned_free)(p);
    assert_heap_ok();
}

int main(void)
{
    /* before anything was allocated with trimalloc (prefixed flavour) */
    first_heapchk = TM_API(_heapchk)();
    _HEAPINFO e = {NULL, 0, 0};
    first_heapwalk = TM_API(_heapwalk)(&e);
    first_heapset = TM_API(_heapset)(0);

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heapchk_empty),
        cmocka_unit_test(test_heapchk_every_step),
        cmocka_unit_test(test_double_free_after_heapmin),
        cmocka_unit_test(test_heapchk_other_thread_cache),
        cmocka_unit_test(test_heap_errno_kept),
        cmocka_unit_test(test_uaf_write_detected),
        cmocka_unit_test(test_heapset),
        cmocka_unit_test(test_heapadd),
        cmocka_unit_test(test_msize),
        cmocka_unit_test(test_expand),
        cmocka_unit_test(test_recalloc),
        cmocka_unit_test(test_calloc_then_recalloc_reads_zero),
        cmocka_unit_test(test_recalloc_huge_moved_zeroes),
        cmocka_unit_test(test_aligned_malloc),
        cmocka_unit_test(test_aligned_errors),
        cmocka_unit_test(test_aligned_realloc),
        cmocka_unit_test(test_aligned_recalloc),
        cmocka_unit_test(test_aligned_free_checks),
    };
    return cmocka_run_group_tests_name("api_crt (" TU_FLAVOUR ")", tests, NULL, NULL);
}
