/*
 * alloc.c -- the public allocation entry points, with the fast paths first.
 *
 * Fast path budget (x86-64, counted with callgrind, see bench/callgrind.sh;
 * measured 20 and 47 instructions per call for a 16 B block; 22 and 51
 * before the bin offsets, the .bss hot leaf and hidden symbols):
 *   malloc: size test, class lookup, busy flag, cache pointer, bin pop,
 *           cookie clear -- one likely branch chain.
 *   free:   hot pagemap leaf (1 load; free_cold otherwise), page entry,
 *           block-start check (one multiply), cookie and purged-slab test,
 *           busy flag, cache pointer, bin push.
 * The busy flag and the re-read of the cache pointer are the owner's half of
 * the world-stop handshake (world.c): plain stores and loads, no lock, no
 * atomic read-modify-write, no fence; the trimmer's membarrier supplies the
 * ordering.
 * Everything else is in cold _slow functions.
 */
#include "internal.h"

#include <stdio.h>

/* ---- fast paths ------------------------------------------------------------------ */

/* off: the class's bin, as a byte offset in the cache (cls << 5, see
 * tm_tc_bin_t), so the common sizes need no shift on the way in. */
TM_INLINE void *small_alloc_bin(size_t size, size_t off) {
    tm_tcache_t *tc = tc_enter();
    tm_tc_bin_t *b = (tm_tc_bin_t *)((char *)tc->bins + off);
    void **top = b->top;
    if (likely(top != b->base)) {
        void *p = *--top;
        __atomic_store_n(&b->top, top, __ATOMIC_RELAXED);
        tc_leave();
        *tm_cookie_slot(p) = 0; /* clear the free-block cookie */
        return p;
    }
    return tcache_malloc_slow(size, (unsigned)(off / sizeof(tm_tc_bin_t)));
}

TM_INLINE void *small_alloc(size_t size, unsigned cls) {
    return small_alloc_bin(size, (size_t)cls * sizeof(tm_tc_bin_t));
}

static TM_COLD void *large_alloc(size_t size, size_t align, bool zero);
static TM_COLD void free_generic(void *p, const char *call);
static TM_COLD void free_suspect_double(void *p, uint32_t f);

/* malloc's body, inlined into the C++ operators too */
TM_INLINE void *malloc_inline(size_t size) {
    /* the common sizes first: one test, one table load */
    if (likely(size <= TM_TINY_MAX)) return small_alloc_bin(size, tm_bin_tiny[(size + 15) >> 4]);
    if (likely(size <= TM_SMALL_MAX))
        return small_alloc(size, size_class_of(size));
    return large_alloc(size, 0, false);
}

TM_EXPORT void *TM_API(malloc)(size_t size) { return malloc_inline(size); }

/* True if p is the start of a block in a small-class slab; sets cls and
 * the page's fast[] entry. */
TM_INLINE bool small_block_e(uintptr_t a, uintptr_t e, unsigned *cls_out, uint32_t *fast_out) {
    if (unlikely(!(e & 1))) return false;
    const tm_chunk_t *c = (const tm_chunk_t *)(e - 1);
    uint32_t f = __atomic_load_n(&c->fast[(a >> TM_PAGE_SHIFT) & (TM_CHUNK_PAGES - 1)],
                                 __ATOMIC_RELAXED);
    unsigned cls = TM_FAST_CLS(f);
    uint64_t off = (a & TM_CHUNK_MASK) - TM_FAST_SLAB_OFF(f);
    *cls_out = cls;
    *fast_out = f;
    /* a whole number of blocks, below the slab's end (internal.h); class
     * 0 fails unless off is 0 */
    return off * tm_class_fast.div[cls] < tm_class_fast.lim[cls];
}

TM_INLINE bool small_block(uintptr_t a, unsigned *cls_out, uint32_t *fast_out) {
    return small_block_e(a, pagemap_lookup(a), cls_out, fast_out);
}

/* The cache's bin was full, or empty and p is another arena's (busy is
 * still set): the slow path. Bin 0 (cls 0, a large block at a chunk's
 * start) goes to free_generic. The class is read again from p's page, so
 * the fast path need not keep a copy of it in a register. */
static TM_COLD void free_to_cache_miss(void *p) {
    unsigned cls = TM_FAST_CLS(block_fast((uintptr_t)p));
    if (likely(cls)) {
        tcache_free_slow(p, cls);
        return;
    }
    tc_leave();
    free_generic(p, "free");
}

/* Push small block p (class cls, page entry f) on the caller's cache. */
TM_INLINE void free_to_cache(void *p, unsigned cls, uint32_t f, uint64_t cookie) {
    tm_tcache_t *tc = tc_enter();
    tm_tc_bin_t *b = &tc->bins[cls];
    void **top = b->top;
    /* Bin 0 and the sentinel are always full. A block of another arena
     * freed into an empty bin goes to the slow path, or the next malloc
     * would hand it straight back: a thread given one object by another
     * would go on using the cache line it shares with the other thread's
     * objects (passive false sharing). */
    if (likely(top != b->limit) &&
        (likely(top != b->base) || f >> TM_FAST_ARENA_SHIFT == tm_tls.arena)) {
        *tm_cookie_slot(p) = cookie;
        *top = p;
        __atomic_store_n(&b->top, top + 1, __ATOMIC_RELAXED);
        tc_leave();
        return;
    }
    free_to_cache_miss(p);
}

/* free()'s fast test, past small_block_e: p, with the page entry f, is a
 * block the program holds -- no free-block cookie (the key `cookie`), on
 * a page where every free block carries one. */
TM_INLINE bool small_block_live(void *p, uint64_t cookie, uint32_t f) {
    return likely(*tm_cookie_slot(p) != cookie) && likely(!(f & TM_FAST_CHECK));
}

/* The class of p if p is a live small block (free()'s fast test), else 0:
 * realloc's and malloc_usable_size's quick answer. */
TM_INLINE unsigned small_block_live_class(void *p) {
    unsigned cls;
    uint32_t f;
    return small_block((uintptr_t)p, &cls, &f) && cls && small_block_live(p, tm_cookie_of(p), f) ? cls : 0;
}

/* free's body once the pagemap entry e of p is known */
TM_INLINE void free_entry(void *p, uintptr_t e) {
    uintptr_t a = (uintptr_t)p;
    unsigned cls;
    uint32_t f;
    if (likely(small_block_e(a, e, &cls, &f))) {
        uint64_t cookie = a ^ tm_cookie_key;
        if (small_block_live(p, cookie, f)) {
            free_to_cache(p, cls, f, cookie);
            return;
        }
        free_suspect_double(p, f);
        return;
    }
    free_generic(p, "free");
}

/* free of NULL, of a block outside the hot leaf (pagemap.c), or of a bad
 * pointer: the same as free_inline, with the full lookup. */
static void free_cold(void *p) __attribute__((noinline));
static void free_cold(void *p) {
    if (!p) return;
    free_entry(p, pagemap_lookup((uintptr_t)p));
}

/* free's body, inlined into the C++ operators too */
TM_INLINE void free_inline(void *p) {
    uintptr_t e;
    if (unlikely(!pagemap_lookup_hot((uintptr_t)p, &e))) {
        free_cold(p);
        return;
    }
    free_entry(p, e);
}

TM_EXPORT void TM_API(free)(void *p) { free_inline(p); }

/* ---- slow paths ---------------------------------------------------------------------- */

static size_t huge_threshold(void) { return (size_t)TM_OPT_NOW(huge_threshold); }

static void *large_alloc(size_t size, size_t align, bool zero) {
    if (unlikely(size > PTRDIFF_MAX)) {
        errno = ENOMEM;
        return NULL;
    }
    tm_init();
    void *p;
    zero |= tm_opt.zero != 0;
    size_t npages = (size + TM_PAGE_MASK) >> TM_PAGE_SHIFT;
    size_t align_pages = align > TM_PAGE ? align >> TM_PAGE_SHIFT : 1;
    if (size <= huge_threshold() && npages + align_pages - 1 <= TM_CHUNK_PAGES) {
        p = !zero && align_pages == 1 ? tcache_large_reuse((uint32_t)npages) : NULL;
        if (!p) {
            tm_arena_t *a = tcache_arena(); /* NULL: no memory for its metadata */
            if (a) p = arena_alloc_large(a, size, align, zero);
        }
    } else
        p = huge_alloc(size ? size : 1, align, zero);
    tcache_orphans_poll(); /* a release of idle arenas that waited for a call (tcache.c) */
    if (unlikely(!p)) errno = ENOMEM;
    else if (unlikely(tm_opt.junk) && !zero) /* every usable byte: a growth in place shows them */
        memset(p, 0xa5, tm_usable_size(p, "malloc"));
    return p;
}

/* Every free that is not a small block, or that the fast path declined.
 * errno stays as it was (POSIX: free() shall not modify errno): the system
 * calls that can fail behind it leave errno alone (os.c: os_munmap,
 * os_purge), rather than every call paying two reads of it here
 * (callgrind, 16 KiB malloc+free pair: 528.5 with them, 515.5 without). */
/* p has no pagemap entry of ours: an invalid pointer, or a double free of
 * a huge block the huge cache has merged with its neighbour (its start is
 * inside a cached mapping). */
static TM_COLD void report_unknown(const char *call, void *p) {
    if (huge_cached_at((uintptr_t)p)) tm_double_free(call, p);
    else tm_invalid_pointer(call, p);
}

static void free_generic(void *p, const char *call) {
    if (!p) return;
    uintptr_t a = (uintptr_t)p;
    uintptr_t e = pagemap_lookup(a);
    tm_chunk_t *c = chunk_of_entry(e);
    if (c) {
        uint32_t page = (uint32_t)((a - c->base) >> TM_PAGE_SHIFT);
        /* atomic: a thread that queues a large block writes its entry
         * without the arena's lock (tcache_free_large), and that thread
         * may be a second free() of the block racing this one */
        uint32_t f = __atomic_load_n(&c->fast[page], __ATOMIC_RELAXED);
        if (f & 0xff) { /* a small-class page, but not a block start */
            uint32_t idx;
            if (!slab_of(c, a, &idx)) {
                tm_invalid_pointer(call, p);
                return;
            }
            tcache_free_slow(p, f & 0xff);
            return;
        }
        if (a & TM_PAGE_MASK) {
            tm_invalid_pointer(call, p);
            return;
        }
        tcache_free_large(c, page, p);
        return;
    }
    if (e) {
        huge_free((tm_huge_t *)e, p);
        return;
    }
    report_unknown(call, p);
}

/* Small block p, whose page entry is f: false if the program holds it;
 * else it is free -- in a cache or its slab (a double free), or in a slab
 * that never handed it out (no cookie outside a purged slab) -- and this
 * reports it to `call`, and returns true if that returns.
 * Every free small block in a cache carries the cookie in its second word,
 * and malloc clears it, so with the cookie there p is free already. (A
 * program cannot write the cookie by accident: it is the address xor a
 * random per-process key.) Blocks never handed out carry no cookie, and in
 * a purged slab _heapmin gave back pages of free blocks, whose cookie words
 * read zero: on those pages (TM_FAST_CHECK) the slab's bitmap says whether
 * p is free in the arena. */
static bool small_block_free_reported(void *p, uint32_t f, const char *call) {
    bool cookie = *tm_cookie_slot(p) == tm_cookie_of(p);
    if (!cookie && (!(f & TM_FAST_CHECK) || !arena_block_is_free(p))) return false;
    if (!cookie && !(f & TM_FAST_PURGED)) tm_invalid_pointer(call, p);
    else tm_double_free(call, p);
    return true;
}

/* free() found the cookie in p's second word, or p lies on a page of a
 * purged slab or one with blocks never handed out. */
static void free_suspect_double(void *p, uint32_t f) {
    unsigned cls = TM_FAST_CLS(f);
    if (!cls) { /* a large block starting a chunk: not cookie-protected */
        free_generic(p, "free");
        return;
    }
    if (!small_block_free_reported(p, f, "free")) free_to_cache(p, cls, f, tm_cookie_of(p));
}

void tm_free_impl(void *p) { TM_API(free)(p); }
void *tm_malloc_impl(size_t size) { return TM_API(malloc)(size); }

size_t tm_usable_size(void *p, const char *caller) {
    uintptr_t a = (uintptr_t)p;
    uintptr_t e = pagemap_lookup(a);
    tm_chunk_t *c = chunk_of_entry(e);
    if (c) {
        uint32_t page = (uint32_t)((a - c->base) >> TM_PAGE_SHIFT);
        uint32_t f = __atomic_load_n(&c->fast[page], __ATOMIC_RELAXED); /* as free_generic */
        unsigned cls = f & 0xff;
        if (cls) {
            uint32_t idx;
            if (!slab_of(c, a, &idx)) {
                tm_invalid_pointer(caller, p);
                return 0;
            }
            if (small_block_free_reported(p, f, caller)) return 0;
            return tm_classes[cls].size;
        }
        bool freed = false;
        size_t n = (a & TM_PAGE_MASK) ? 0 : arena_large_usable(c, page, &freed);
        if (n) return n;
        /* named as free() names it: freed (or waiting in a remote-free
         * queue), or not a block start (before 2026-12-05 a freed large
         * block was an "invalid pointer" here) */
        if (freed) tm_double_free(caller, p);
        else tm_invalid_pointer(caller, p);
        return 0;
    }
    if (e) {
        tm_huge_t *h = (tm_huge_t *)e;
        huge_lock();
        bool start = h->base == a, freed = h->freed_ns != 0;
        size_t n = h->size;
        huge_unlock();
        if (start && !freed) return n;
        if (start) tm_double_free(caller, p); /* in the huge cache: freed already */
        else tm_invalid_pointer(caller, p);
        return 0;
    }
    report_unknown(caller, p);
    return 0;
}

/* The size class for size bytes aligned to align (a power of two up to a
 * page), 0 if none: the smallest class that holds size rounded up to
 * align and whose size is a multiple of align, so every block of it is
 * aligned (class sizes are multiples of 16). The class table must be
 * filled (tm_init). */
unsigned tm_class_aligned(size_t size, size_t align) {
    size_t sz = (size + align - 1) & ~(align - 1);
    if (sz == 0) sz = align;
    if (sz > TM_SMALL_MAX) return 0;
    unsigned cls = size_class_of(sz);
    while (cls <= TM_NCLASSES && tm_classes[cls].size % align) cls++;
    return cls <= TM_NCLASSES ? cls : 0;
}

void *tm_alloc_aligned(size_t align, size_t size, bool zero) {
    if (align <= TM_ALIGN) {
        if (zero) return TM_API(calloc)(1, size);
        return TM_API(malloc)(size);
    }
    if (unlikely(size > PTRDIFF_MAX)) {
        errno = ENOMEM;
        return NULL;
    }
    tm_init(); /* the class table must be filled before it is searched */
    unsigned cls = align <= TM_PAGE ? tm_class_aligned(size, align) : 0;
    if (cls) {
        void *p = small_alloc(tm_classes[cls].size, cls);
        if (!p) return NULL;
        if (zero) memset(p, 0, tm_classes[cls].size); /* the whole block, as calloc */
        return p;
    }
    /* a run of the pages asked for, however few: until 2026-12-06 at
     * least TM_SMALL_MAX + 1 bytes (3 pages), so posix_memalign(&p, 8192,
     * 100) took 12 KiB, and an outside tester's aligned blocks of many
     * sizes 1.32x mimalloc's peak RSS */
    return large_alloc(size ? size : 1, align, zero);
}

TM_EXPORT void *TM_API(calloc)(size_t nmemb, size_t size) {
    size_t total;
    if (unlikely(__builtin_mul_overflow(nmemb, size, &total))) {
        errno = ENOMEM;
        return NULL;
    }
    if (likely(total <= TM_SMALL_MAX)) {
        unsigned cls = size_class_of(total);
        void *p = small_alloc(total, cls);
        if (unlikely(!p)) return NULL;
        /* The whole block, as large and huge blocks are: bytes past the
         * request that a later realloc or _recalloc keeps then read zero.
         * (Until 2026-12-07 only `total` bytes, and calloc(1, 100) then
         * _recalloc to 112 bytes read 12 bytes of an earlier block -- an
         * outside reviewer; Microsoft's CRT, whose blocks have their exact
         * size, gives zeros there.) */
        return memset(p, 0, tm_classes[cls].size);
    }
    return large_alloc(total, 0, true);
}

/* The zero and junk options promise their fill for every byte a block
 * gains in place, as for a fresh block (found by review, 2026-12-05: a
 * large block grown in place kept what its pages held before). */
TM_COLD void tm_fill_grown(void *p, size_t old) {
    size_t now = tm_usable_size(p, "realloc");
    if (now > old) memset((char *)p + old, tm_opt.zero ? 0 : 0xa5, now - old);
}

/* realloc's move of live block p, of old usable bytes, to a new block of
 * size bytes. */
static void *realloc_move(void *p, size_t old, size_t size) {
    int saved = errno;
    /* Growth past TM_GROW_RUN_MIN takes a run of pages, which the next
     * growth can extend in place, not a block of the 12-32 KiB classes
     * (size_class.c says why) */
    void *q = size > old && size > TM_GROW_RUN_MIN ? large_alloc(size, 0, false) : TM_API(malloc)(size);
    if (!q) {
        if (size > old) return NULL;
        /* A shrink that cannot move keeps its block: glibc shrinks in
         * place and never fails there, and p = realloc(p, smaller) is
         * common code that does not check. */
        errno = saved;
        return p;
    }
    memcpy(q, p, old < size ? old : size);
    TM_API(free)(p);
    return q;
}

/* realloc; *tail_zero (if given) is set when every byte past the old usable
 * size is known to be zero: a huge block grown by mremap (_recalloc then
 * need not touch those pages). */
void *tm_realloc_impl(void *p, size_t size, bool *tail_zero) {
    if (tail_zero) *tail_zero = false;
    if (!p) return TM_API(malloc)(size);
    if (likely(size - 1 < (size_t)TM_SMALL_MAX)) {
        /* A small block that keeps its class stays as it is: a string
         * grown a few bytes at a time. Taken once free()'s fast test says
         * p is a live block (a block start of its slab, without the
         * free-block cookie, on a page where every free block carries
         * it); anything else takes the checks below. Until 2026-12-06
         * every call looked p up three times: in an outside tester's
         * string-building benchmark (callgrind), 188 instructions a call
         * on average, moves included; 115 now, tcmalloc 78. */
        unsigned cls = small_block_live_class(p);
        if (cls) {
            if (size_class_of(size) == cls) return p;
            return realloc_move(p, tm_classes[cls].size, size);
        }
    }
    if (size == 0) { /* glibc's behaviour: free, return NULL */
        /* a bad p is reported as realloc's, and is EINVAL in the
         * abort_on_error:0 mode, as for any other size */
        if (!tm_usable_size(p, "realloc")) {
            errno = EINVAL;
            return NULL;
        }
        TM_API(free)(p);
        return NULL;
    }
    if (unlikely(size > PTRDIFF_MAX)) {
        errno = tm_usable_size(p, "realloc") ? ENOMEM : EINVAL;
        return NULL;
    }
    size_t old = tm_usable_size(p, "realloc");
    if (!old) { /* bad pointer, reported and ignored */
        errno = EINVAL;
        return NULL;
    }
    int saved = errno; /* a failed attempt below leaves it as it was */
    uintptr_t a = (uintptr_t)p;
    uintptr_t e = pagemap_lookup(a);
    tm_chunk_t *c = chunk_of_entry(e);
    if (c && (__atomic_load_n(&c->fast[(a - c->base) >> TM_PAGE_SHIFT], __ATOMIC_RELAXED) & 0xff)) {
        /* small: keep the block while the new size lands in the same class */
        if (size <= old && size_class_of(size) == size_class_of(old)) return p;
    } else if (c) {
        if (size > TM_GROW_RUN_MIN && size <= huge_threshold() &&
            arena_large_resize_in_place(c, (uint32_t)((a - c->base) >> TM_PAGE_SHIFT), size)) {
            if (unlikely(tm_opt.zero | tm_opt.junk)) tm_fill_grown(p, old);
            return p;
        }
    } else if (!e) { /* freed (and unmapped) by another thread since tm_usable_size */
        tm_double_free("realloc", p);
        errno = EINVAL;
        return NULL;
    } else if (size > huge_threshold()) {
        /* in place or moved by mremap; if the kernel cannot (no memory, or
         * the program split the block's mapping, say by mprotect or
         * madvise on part of it), a copy below */
        bool kernel_zero = false, refused = false; /* grown by mremap: new pages */
        void *np = huge_realloc((tm_huge_t *)e, p, size, &kernel_zero, &refused);
        if (refused) { /* freed or resized by another thread meanwhile: reported */
            errno = EINVAL;
            return NULL;
        }
        if (np) {
            if (tail_zero) *tail_zero = kernel_zero && !tm_opt.junk; /* junk fills them next */
            if (unlikely(tm_opt.junk) || (unlikely(tm_opt.zero) && !kernel_zero)) tm_fill_grown(np, old);
            return np;
        }
    }
    errno = saved; /* what a failed attempt above set */
    return realloc_move(p, old, size);
}

TM_EXPORT void *TM_API(realloc)(void *p, size_t size) { return tm_realloc_impl(p, size, NULL); }

TM_EXPORT void *TM_API(reallocarray)(void *p, size_t nmemb, size_t size) {
    size_t total;
    if (__builtin_mul_overflow(nmemb, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    return tm_realloc_impl(p, total, NULL);
}

static bool pow2(size_t x) { return x && !(x & (x - 1)); }

TM_EXPORT void *TM_API(aligned_alloc)(size_t align, size_t size) {
    if (!pow2(align)) {
        errno = EINVAL;
        return NULL;
    }
    return tm_alloc_aligned(align, size, false);
}

TM_EXPORT void *TM_API(memalign)(size_t align, size_t size) {
    if (!pow2(align)) {
        errno = EINVAL;
        return NULL;
    }
    return tm_alloc_aligned(align, size, false);
}

TM_EXPORT int TM_API(posix_memalign)(void **memptr, size_t align, size_t size) {
    if (!pow2(align) || align % sizeof(void *)) return EINVAL;
    int saved = errno;
    void *p = tm_alloc_aligned(align, size, false);
    errno = saved;
    if (!p) return ENOMEM;
    *memptr = p;
    return 0;
}

TM_EXPORT void *TM_API(valloc)(size_t size) { return tm_alloc_aligned(TM_PAGE, size, false); }

TM_EXPORT void *TM_API(pvalloc)(size_t size) {
    if (size > PTRDIFF_MAX) {
        errno = ENOMEM;
        return NULL;
    }
    size_t sz = (size + TM_PAGE_MASK) & ~TM_PAGE_MASK;
    return tm_alloc_aligned(TM_PAGE, sz ? sz : TM_PAGE, false);
}

TM_EXPORT size_t TM_API(malloc_usable_size)(void *p) {
    /* A small block the program holds, found as free() finds it (programs
     * that account their memory ask this on every allocation); anything
     * else, and a block that looks free, goes to the full check. */
    unsigned cls = small_block_live_class(p);
    if (likely(cls)) return tm_classes[cls].size;
    if (!p) return 0;
    return tm_usable_size(p, "malloc_usable_size");
}

TM_EXPORT void TM_API(free_sized)(void *p, size_t size) {
    (void)size;
    TM_API(free)(p);
}

TM_EXPORT void TM_API(free_aligned_sized)(void *p, size_t align, size_t size) {
    (void)align;
    (void)size;
    TM_API(free)(p);
}

/* ---- C++ operators ------------------------------------------------------------
 * Defined here so that they share malloc's and free's inlined fast paths: a
 * C++ program otherwise reaches us through libstdc++'s operators, which
 * call malloc and free through the PLT. What operator new must do when
 * there is no memory -- call the new_handler until it gives up, then throw
 * std::bad_alloc, or return NULL for the nothrow forms -- is C++, which
 * this library is not written in: on failure each operator calls the next
 * definition of its own symbol (libstdc++'s), which runs that loop around
 * malloc or aligned_alloc, that is, around trimalloc again. Without a next
 * definition a throwing new cannot throw, so it aborts with a message; a
 * nothrow new returns NULL. Sized deletes ignore the size (free() finds it).
 *
 * A program may replace any of these operators with its own (an allocation
 * counter that puts a header before each block, say), and C++ then wants
 * the ones it did not replace to call the ones it did: the sized delete
 * calls the plain delete, the nothrow new calls the throwing one, new[]
 * calls new. The program's definitions win over ours only for the symbols
 * it defines, so ours would hand its blocks to free() (and abort there).
 * So trimalloc's constructor looks them all up (cxx_resolve): if one of
 * them is defined outside this library, every operator of ours forwards
 * to libstdc++'s definition, which chains to the program's as the
 * standard says and allocates with malloc (ours). Otherwise they stay ours.
 * Not in the prefixed build. */
#ifndef TRIMALLOC_PREFIX
#include <dlfcn.h>
#include <link.h>

typedef struct { char unused; } tm_nothrow_t; /* std::nothrow_t: empty, passed by reference */
static const tm_nothrow_t tm_nothrow;

#define TM_CXX_OPS(X)                                                              \
    X(_Znwm) X(_Znam) X(_ZnwmRKSt9nothrow_t) X(_ZnamRKSt9nothrow_t)                \
    X(_ZnwmSt11align_val_t) X(_ZnamSt11align_val_t)                                \
    X(_ZnwmSt11align_val_tRKSt9nothrow_t) X(_ZnamSt11align_val_tRKSt9nothrow_t)    \
    X(_ZdlPv) X(_ZdaPv) X(_ZdlPvm) X(_ZdaPvm)                                      \
    X(_ZdlPvRKSt9nothrow_t) X(_ZdaPvRKSt9nothrow_t)                                \
    X(_ZdlPvSt11align_val_t) X(_ZdaPvSt11align_val_t)                              \
    X(_ZdlPvmSt11align_val_t) X(_ZdaPvmSt11align_val_t)                            \
    X(_ZdlPvSt11align_val_tRKSt9nothrow_t) X(_ZdaPvSt11align_val_tRKSt9nothrow_t)
#define CXX_ENUM(sym) CXX##sym,
#define CXX_NAME(sym) #sym,
enum { TM_CXX_OPS(CXX_ENUM) CXX_NOPS };
static const char *const cxx_names[CXX_NOPS] = {TM_CXX_OPS(CXX_NAME)};

enum { CXX_UNKNOWN, CXX_OURS, CXX_FORWARD };
/* Written by cxx_resolve (threads may race there, with the same results:
 * the stores are atomic) before cxx_mode, stored with release and read
 * with acquire (relaxed on the fast path, a plain load: a stale value
 * only sends the call to the cold path). */
static int cxx_mode;
static void *cxx_next[CXX_NOPS]; /* the next definition of each (libstdc++'s), or NULL */
static __thread bool cxx_resolving __attribute__((tls_model("initial-exec")));

static void cxx_resolve(void);

/* Where op must go instead of our body: its next definition when the
 * program replaced an operator, else NULL (also while the mode is not
 * known). Before trimalloc's constructor, only the start-up thread
 * decides: a thread that a library constructor started and waits for
 * inside dlopen (trimalloc loaded with that library) would wait for the
 * loader's lock in dlsym for good (found by review); it gets our own
 * operator meanwhile. */
static TM_COLD void *cxx_forward(unsigned op) {
    if (__atomic_load_n(&cxx_mode, __ATOMIC_ACQUIRE) == CXX_UNKNOWN && os_gettid() == os_getpid())
        cxx_resolve();
    if (__atomic_load_n(&cxx_mode, __ATOMIC_ACQUIRE) != CXX_FORWARD) return NULL;
    return __atomic_load_n(&cxx_next[op], __ATOMIC_RELAXED);
}

/* ---- the next definition of an operator, without the loader's lock ----------
 * When memory runs out, an operator hands the request to the next
 * definition of its symbol (libstdc++'s), looked up then: a C program may
 * load libstdc++ after start-up (dlopen of a C++ plugin). Until 2026-12-06
 * with dlsym(RTLD_NEXT), which waits for the loader's lock; a thread
 * inside dlopen holds that lock while a library's constructor runs, and a
 * constructor that waits for a thread whose operator new fails hung the
 * process for good (found by a tester). dl_iterate_phdr takes only the
 * lock of the list of loaded objects, which dlopen does not hold while
 * constructors run, so the definition is looked up in each object's own
 * dynamic symbol table (GNU or SysV hash), skipping this library and the
 * executable, the C++ runtime's own object first (cxx_next_definition). */
typedef struct {
    const char *name;
    bool runtime_only; /* only libstdc++ or libc++ themselves */
    void *found;
} cxx_find_t;

/* Is the object at path a C++ runtime (libstdc++.so.*, libc++.so.*)? */
static bool cxx_is_runtime(const char *path) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    return strncmp(base, "libstdc++.so", 12) == 0 || strncmp(base, "libc++.so", 9) == 0;
}

static uint32_t elf_gnu_hash(const char *s) {
    uint32_t h = 5381;
    for (; *s; s++) h = h * 33 + (unsigned char)*s;
    return h;
}

static uint32_t elf_sysv_hash(const char *s) {
    uint32_t h = 0, g;
    for (; *s; s++) {
        h = (h << 4) + (unsigned char)*s;
        if ((g = h & 0xf0000000u)) h ^= g >> 24;
        h &= ~g;
    }
    return h;
}

typedef struct {
    uintptr_t base;
    const ElfW(Sym) *symtab;
    const char *strtab;
    const ElfW(Half) *versym;
} elf_obj_t;

/* Is symbol i of o a default-version definition of name? */
static bool elf_sym_is(const elf_obj_t *o, uint32_t i, const char *name) {
    const ElfW(Sym) *sym = &o->symtab[i];
    return sym->st_shndx != SHN_UNDEF && sym->st_value != 0 &&
           ELF64_ST_TYPE(sym->st_info) == STT_FUNC && !(o->versym && (o->versym[i] & 0x8000)) &&
           strcmp(o->strtab + sym->st_name, name) == 0;
}

static int cxx_find_in(struct dl_phdr_info *info, size_t size, void *arg) {
    (void)size;
    cxx_find_t *f = arg;
    if (!info->dlpi_name || !info->dlpi_name[0]) return 0; /* the executable */
    if (f->runtime_only && !cxx_is_runtime(info->dlpi_name)) return 0;
    const ElfW(Dyn) *dyn = NULL;
    uintptr_t self = (uintptr_t)cxx_find_in;
    for (ElfW(Half) i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && self - lo < ph->p_memsz) return 0; /* this library */
        if (ph->p_type == PT_DYNAMIC) dyn = (const ElfW(Dyn) *)lo;
    }
    if (!dyn) return 0;
    elf_obj_t o = {.base = info->dlpi_addr};
    const uint32_t *gnu = NULL, *sysv = NULL;
    for (; dyn->d_tag != DT_NULL; dyn++) {
        /* the loader relocates these in place, except in a read-only
         * dynamic section (the vDSO's) */
        uintptr_t v = dyn->d_un.d_ptr < o.base ? o.base + dyn->d_un.d_ptr : dyn->d_un.d_ptr;
        switch (dyn->d_tag) {
        case DT_SYMTAB: o.symtab = (const ElfW(Sym) *)v; break;
        case DT_STRTAB: o.strtab = (const char *)v; break;
        case DT_VERSYM: o.versym = (const ElfW(Half) *)v; break;
        case DT_GNU_HASH: gnu = (const uint32_t *)v; break;
        case DT_HASH: sysv = (const uint32_t *)v; break;
        }
    }
    if (!o.symtab || !o.strtab) return 0;
    uint32_t hit = 0;
    if (gnu) {
        uint32_t nbuckets = gnu[0], symoffset = gnu[1], bloom_words = gnu[2];
        const uint32_t *buckets = (const uint32_t *)((const ElfW(Addr) *)&gnu[4] + bloom_words);
        const uint32_t *chain = buckets + nbuckets;
        uint32_t h = elf_gnu_hash(f->name);
        uint32_t i = nbuckets ? buckets[h % nbuckets] : 0;
        for (; i >= symoffset && i; i++) {
            uint32_t ch = chain[i - symoffset];
            if ((ch | 1) == (h | 1) && elf_sym_is(&o, i, f->name)) {
                hit = i;
                break;
            }
            if (ch & 1) break;
        }
    } else if (sysv) {
        uint32_t nbucket = sysv[0];
        const uint32_t *bucket = &sysv[2], *chain = bucket + nbucket;
        for (uint32_t i = nbucket ? bucket[elf_sysv_hash(f->name) % nbucket] : 0; i; i = chain[i])
            if (elf_sym_is(&o, i, f->name)) {
                hit = i;
                break;
            }
    }
    if (!hit) return 0;
    f->found = (void *)(o.base + o.symtab[hit].st_value);
    return 1; /* stops the walk */
}

/* The C++ runtime's own definition first: a plugin loaded before it that
 * exports a copy (built with -static-libstdc++, or replacing the operator)
 * has a new_handler of its own, and may be unloaded. Not kept between
 * calls (a reviewer found a kept one dangling after dlclose, and, stored
 * in cxx_next[], routing the operators of a trimalloc loaded by dlopen to
 * libstdc++'s); this path runs only when memory is out. */
static void *cxx_next_definition(unsigned op) {
    void *next = __atomic_load_n(&cxx_next[op], __ATOMIC_RELAXED); /* cxx_resolve's */
    if (next) return next;
    cxx_find_t f = {.name = cxx_names[op], .runtime_only = true, .found = NULL};
    dl_iterate_phdr(cxx_find_in, &f);
    if (!f.found) {
        f.runtime_only = false;
        dl_iterate_phdr(cxx_find_in, &f);
    }
    return f.found;
}

static TM_COLD void *cxx_new_failed(unsigned op, size_t size, size_t align, bool nothrow) {
    if (align && size > PTRDIFF_MAX) {
        /* libstdc++'s aligned operator new rounds the size up to the
         * alignment, and near SIZE_MAX that wraps to a small block it then
         * returns (GCC 12; a tester found operator new(SIZE_MAX,
         * align_val_t{64}) returning 64 usable bytes, where the standard
         * wants std::bad_alloc): its unaligned one fails such a size
         * properly, with the same new_handler loop */
        op = op == CXX_ZnwmSt11align_val_t                  ? CXX_Znwm
             : op == CXX_ZnamSt11align_val_t                ? CXX_Znam
             : op == CXX_ZnwmSt11align_val_tRKSt9nothrow_t ? CXX_ZnwmRKSt9nothrow_t
                                                            : CXX_ZnamRKSt9nothrow_t;
        align = 0;
    }
    void *next = cxx_next_definition(op);
    if (next) {
        if (align && nothrow)
            return ((void *(*)(size_t, size_t, const tm_nothrow_t *))next)(size, align, &tm_nothrow);
        if (align) return ((void *(*)(size_t, size_t))next)(size, align);
        if (nothrow) return ((void *(*)(size_t, const tm_nothrow_t *))next)(size, &tm_nothrow);
        return ((void *(*)(size_t))next)(size);
    }
    if (nothrow) return NULL;
    tm_fatal("operator new: out of memory, and no C++ runtime to throw std::bad_alloc "
             "(libstdc++ linked in statically? docs/getting-started.md)");
}

TM_INLINE void *cxx_new(unsigned op, size_t size, bool nothrow) {
    void *p = malloc_inline(size);
    if (likely(p != NULL)) return p;
    return cxx_new_failed(op, size, 0, nothrow);
}

TM_INLINE void *cxx_new_aligned(unsigned op, size_t size, size_t align, bool nothrow) {
    /* C++ passes a power of two; anything else is not ours to serve */
    void *p = align && !(align & (align - 1)) ? tm_alloc_aligned(align, size, false) : NULL;
    if (likely(p != NULL)) return p;
    return cxx_new_failed(op, size, align, nothrow);
}

/* One operator. While the program has replaced any, or before the first
 * call has looked, the cold sym_slow forwards it (or runs the body); the
 * hot path pays one load and a branch not taken, and needs no frame. */
#define CXX_OURS_NOW() (__atomic_load_n(&cxx_mode, __ATOMIC_RELAXED) == CXX_OURS)
#define TM_CXX_NEW(sym, params, args, body)                          \
    static TM_COLD void *sym##_slow params {                         \
        void *next_ = cxx_forward(CXX##sym);                         \
        if (next_) return ((void *(*)params)next_)args;              \
        return body;                                                 \
    }                                                                \
    TM_EXPORT void *sym params;                                      \
    void *sym params {                                               \
        if (unlikely(!CXX_OURS_NOW())) return sym##_slow args;       \
        return body;                                                 \
    }                                                                \
    extern __typeof(sym) sym##_self __attribute__((alias(#sym), visibility("hidden")));
#define TM_CXX_DELETE(sym, params, args)                             \
    static TM_COLD void sym##_slow params {                          \
        void *next_ = cxx_forward(CXX##sym);                         \
        if (next_)                                                   \
            ((void (*)params)next_)args;                             \
        else                                                         \
            TM_API(free)(p);                                         \
    }                                                                \
    TM_EXPORT void sym params;                                       \
    void sym params {                                                \
        if (unlikely(!CXX_OURS_NOW())) {                             \
            sym##_slow args;                                         \
            return;                                                  \
        }                                                            \
        free_inline(p);                                              \
    }                                                                \
    extern __typeof(sym) sym##_self __attribute__((alias(#sym), visibility("hidden")));

typedef const tm_nothrow_t *tm_nt;
TM_CXX_NEW(_Znwm, (size_t n), (n), cxx_new(CXX_Znwm, n, false))
TM_CXX_NEW(_Znam, (size_t n), (n), cxx_new(CXX_Znam, n, false))
TM_CXX_NEW(_ZnwmRKSt9nothrow_t, (size_t n, tm_nt t), (n, t),
           cxx_new(CXX_ZnwmRKSt9nothrow_t, n, true))
TM_CXX_NEW(_ZnamRKSt9nothrow_t, (size_t n, tm_nt t), (n, t),
           cxx_new(CXX_ZnamRKSt9nothrow_t, n, true))
TM_CXX_NEW(_ZnwmSt11align_val_t, (size_t n, size_t al), (n, al),
           cxx_new_aligned(CXX_ZnwmSt11align_val_t, n, al, false))
TM_CXX_NEW(_ZnamSt11align_val_t, (size_t n, size_t al), (n, al),
           cxx_new_aligned(CXX_ZnamSt11align_val_t, n, al, false))
TM_CXX_NEW(_ZnwmSt11align_val_tRKSt9nothrow_t, (size_t n, size_t al, tm_nt t), (n, al, t),
           cxx_new_aligned(CXX_ZnwmSt11align_val_tRKSt9nothrow_t, n, al, true))
TM_CXX_NEW(_ZnamSt11align_val_tRKSt9nothrow_t, (size_t n, size_t al, tm_nt t), (n, al, t),
           cxx_new_aligned(CXX_ZnamSt11align_val_tRKSt9nothrow_t, n, al, true))

/* the sizes and alignments are not needed: free() finds them */
TM_CXX_DELETE(_ZdlPv, (void *p), (p))
TM_CXX_DELETE(_ZdaPv, (void *p), (p))
TM_CXX_DELETE(_ZdlPvm, (void *p, size_t n), (p, n))
TM_CXX_DELETE(_ZdaPvm, (void *p, size_t n), (p, n))
TM_CXX_DELETE(_ZdlPvRKSt9nothrow_t, (void *p, tm_nt t), (p, t))
TM_CXX_DELETE(_ZdaPvRKSt9nothrow_t, (void *p, tm_nt t), (p, t))
TM_CXX_DELETE(_ZdlPvSt11align_val_t, (void *p, size_t al), (p, al))
TM_CXX_DELETE(_ZdaPvSt11align_val_t, (void *p, size_t al), (p, al))
TM_CXX_DELETE(_ZdlPvmSt11align_val_t, (void *p, size_t n, size_t al), (p, n, al))
TM_CXX_DELETE(_ZdaPvmSt11align_val_t, (void *p, size_t n, size_t al), (p, n, al))
TM_CXX_DELETE(_ZdlPvSt11align_val_tRKSt9nothrow_t, (void *p, size_t al, tm_nt t), (p, al, t))
TM_CXX_DELETE(_ZdaPvSt11align_val_tRKSt9nothrow_t, (void *p, size_t al, tm_nt t), (p, al, t))

/* Each operator's own address here (a hidden alias: a reference to the
 * exported name could resolve to a replacement). */
#define CXX_SELF(sym) (void *)&sym##_self,
static void *const cxx_self[CXX_NOPS] = {TM_CXX_OPS(CXX_SELF)};

/* Is the definition at def another object's own? A non-PIE executable
 * that takes an operator's address gets a PLT stub that stands for the
 * symbol (an undefined symbol with an address): not a replacement. */
static bool cxx_defined_elsewhere(void *def) {
    Dl_info info, self;
    const ElfW(Sym) *sym = NULL;
    if (!dladdr((void *)cxx_resolve, &self)) return false;
    if (!dladdr1(def, &info, (void **)&sym, RTLD_DL_SYMENT)) return true;
    if (info.dli_fbase == self.dli_fbase) return false;
    return !sym || sym->st_shndx != SHN_UNDEF;
}

/* Run by trimalloc's constructor (tm_cxx_init): dlsym and dladdr take the
 * loader's lock, so a first call made later, from a thread a library
 * constructor waits for inside dlopen, or from a dl_iterate_phdr callback
 * while another thread loads a library, deadlocked (found by review). An
 * operator called before the constructor runs (another library's
 * constructor) resolves here itself, in the start-up thread. Where every
 * name resolves to our own definition -- every program that replaces
 * none -- it costs 20 symbol lookups that succeed; the next definitions
 * (libstdc++'s) are looked up only when a replacement is found, or when
 * memory runs out (cxx_new_failed). */
static TM_COLD void cxx_resolve(void) {
    if (cxx_resolving) return; /* dlsym allocating C++-wise: ours serve it */
    cxx_resolving = true;
    int mode = CXX_OURS;
    for (unsigned i = 0; i < CXX_NOPS; i++) {
        void *def = dlsym(RTLD_DEFAULT, cxx_names[i]);
        if (def && def != cxx_self[i] && cxx_defined_elsewhere(def)) mode = CXX_FORWARD;
    }
    if (mode == CXX_FORWARD)
        for (unsigned i = 0; i < CXX_NOPS; i++)
            __atomic_store_n(&cxx_next[i], dlsym(RTLD_NEXT, cxx_names[i]), __ATOMIC_RELAXED);
    __atomic_store_n(&cxx_mode, mode, __ATOMIC_RELEASE);
    cxx_resolving = false;
}

void tm_cxx_init(void) {
    if (__atomic_load_n(&cxx_mode, __ATOMIC_ACQUIRE) == CXX_UNKNOWN) cxx_resolve();
}
#endif
