/*
 * huge.c -- blocks above the huge threshold: one kernel mapping each,
 * aligned to a chunk so the pagemap finds its descriptor from the block's
 * first chunk. realloc uses mremap: in place when the kernel can, else the
 * pages move to a fresh chunk-aligned spot without copying.
 *
 * Freed mappings are kept in a small cache (bounded in bytes and count)
 * and reused, because faulting pages back in is what makes repeated
 * multi-MiB allocations slow; the cache is emptied by _heapmin and entries
 * older than the decay time are unmapped on later huge operations. A
 * request takes the smallest cached mapping that fits, else grows the
 * largest (huge_grow: its resident pages serve again, only the growth
 * faults in); a reused mapping keeps a tail up to the block's own size for
 * the block, and a longer tail stays cached on its own (huge_split_tail),
 * to merge with the block again when the block is freed
 * (huge_cache_merge_locked).
 * Before (trimming every tail, never growing), a program
 * that keeps 8 blocks of 5-25 MiB and replaces one at a time rarely found
 * a cached mapping big enough, and those it found shrank at each reuse:
 * measured with `bench/throughput huge` (every page written), see
 * docs/design.md, "Huge blocks".
 *
 * Owner: huge_lock guards both lists and the fields of every huge_t on
 * them; a huge_t on neither (taken out of the cache, not yet live) belongs
 * to the thread that took it, but for the fields below (descriptors).
 * Syscalls run outside the lock.
 */
#include "internal.h"

static pthread_mutex_t huge_mu = PTHREAD_MUTEX_INITIALIZER;
static tm_huge_t *huge_live;     /* blocks the program holds */
static tm_huge_t *huge_cache;    /* freed mappings kept for reuse */
static size_t huge_live_bytes, huge_live_mapped, huge_cache_bytes;
/* The three counters change under huge_mu and are read without it
 * (huge_allocated, huge_mapped: statistics, _heapchk): the writes are
 * atomic stores, the readers' loads relaxed. */
#define HUGE_ADD(v, d) __atomic_store_n(&(v), (v) + (d), __ATOMIC_RELAXED)
#define HUGE_SUB(v, d) __atomic_store_n(&(v), (v) - (d), __ATOMIC_RELAXED)
static unsigned huge_cache_count;
#define HUGE_CACHE_MAX_COUNT 16

void huge_lock(void) { tm_lock(&huge_mu); }
void huge_unlock(void) { tm_unlock(&huge_mu); }

static void list_push(tm_huge_t **head, tm_huge_t *h) {
    h->prev = NULL;
    h->next = *head;
    if (*head) (*head)->prev = h;
    *head = h;
}

static void list_remove(tm_huge_t **head, tm_huge_t *h) {
    if (h->prev) h->prev->next = h->next;
    else *head = h->next;
    if (h->next) h->next->prev = h->prev;
    h->next = h->prev = NULL;
}

/* ---- descriptors ------------------------------------------------------------
 * A huge_t is also reached without the lock: free(), realloc() and
 * malloc_usable_size() find it by a pagemap lookup, and a program that
 * frees a block in one thread while another frees or resizes it (a bug
 * trimalloc must report, not crash on) can make that lookup just before
 * the first thread gives the descriptor up. So descriptors are never given
 * back to meta.c, whose free list would write its link over `base` and
 * hand the memory to metadata of another kind: spare ones wait on
 * huge_spare. And the fields such a caller checks under huge_mu -- base,
 * size, freed_ns, moving -- change only under huge_mu, also while the
 * descriptor belongs to one thread. A spare one reads as freed (freed_ns
 * 1) and as no block's (base 0); a new one as freed until it goes live
 * (huge_alloc), so a stale free() of its address is a double free, not
 * the removal of a block from a list it is not on. Until 2026-12-07
 * descriptors went back to meta.c, and ThreadSanitizer reported
 * meta_free's write of the link racing huge_claim's read of `base`
 * (tests/stress/double_free_race.c, test_a_free_racing_a_huge_realloc). */
static tm_huge_t *huge_spare; /* under huge_mu, linked by next */

static void desc_free_locked(tm_huge_t *h) {
    h->base = 0;
    h->size = h->mapped = 0;
    h->freed_ns = 1;
    h->moving = false;
    h->prev = NULL;
    h->next = huge_spare;
    huge_spare = h;
}

static void desc_free(tm_huge_t *h) {
    tm_lock(&huge_mu);
    desc_free_locked(h);
    tm_unlock(&huge_mu);
}

/* A descriptor of mapped bytes at base, cut from the kernel mapping that
 * starts at origin, freed (not live) at freed_ns (nonzero); NULL if no
 * memory for it. Not yet in the pagemap. */
static tm_huge_t *desc_new(uintptr_t base, uintptr_t origin, size_t mapped, uint64_t freed_ns) {
    tm_lock(&huge_mu);
    tm_huge_t *h = huge_spare;
    if (h) huge_spare = h->next;
    tm_unlock(&huge_mu);
    if (!h && !(h = meta_alloc(sizeof *h))) return NULL;
    tm_lock(&huge_mu);
    h->base = base;
    h->origin = origin;
    h->size = h->mapped = mapped;
    h->freed_ns = freed_ns;
    h->moving = false;
    h->next = h->prev = NULL;
    tm_unlock(&huge_mu);
    return h;
}

/* h into the cache, or out of it, with its counters (huge_mu held) */
static void cache_add_locked(tm_huge_t *h) {
    list_push(&huge_cache, h);
    HUGE_ADD(huge_cache_bytes, h->mapped);
    __atomic_store_n(&huge_cache_count, huge_cache_count + 1, __ATOMIC_RELAXED);
}

static void cache_remove_locked(tm_huge_t *h) {
    list_remove(&huge_cache, h);
    HUGE_SUB(huge_cache_bytes, h->mapped);
    __atomic_store_n(&huge_cache_count, huge_cache_count - 1, __ATOMIC_RELAXED);
}

/* The entry cached longest ago (entries are pushed at the head); NULL if
 * none. huge_mu held. */
static tm_huge_t *cache_oldest_locked(void) {
    tm_huge_t *h = huge_cache;
    while (h && h->next) h = h->next;
    return h;
}

static size_t huge_map_size(size_t size) {
    return (size + TM_PAGE_MASK) & ~TM_PAGE_MASK;
}

static bool huge_unmap(tm_huge_t *h) {
    pagemap_clear(h->base);
    if (os_unmap((void *)h->base, h->mapped) != 0) {
        pagemap_set(h->base, (uintptr_t)h);
        return false;
    }
    stats_add_released(h->mapped);
    desc_free(h);
    return true;
}

static void huge_cache_put_back(tm_huge_t *h) {
    tm_lock(&huge_mu);
    cache_add_locked(h);
    tm_unlock(&huge_mu);
}

/* ---- when the kernel will not unmap ------------------------------------------
 * Near vm.max_map_count, cutting a piece out of a mapping that the kernel
 * merged with its neighbour takes one more map entry, and munmap fails
 * with ENOMEM. Until 2026-12-07 those failures went unseen here and the
 * memory stayed mapped for good: the tail of a shrunk block, resident
 * pages and all (and counted as released), and the fresh mapping of a
 * guarded malloc whose guard page the kernel refused -- an outside
 * tester: 36 MiB kept of a 40 MiB block shrunk to 4 MiB, still there
 * after frees and _heapmin; 2 GB of address space after 1000 failed
 * guarded mallocs, most of it the over-mapped tails that os_map_aligned
 * could not trim (now the new block's: os_map_aligned_ex). */

/* Give back the tail of a block's mapping past msize: unmapped, or where
 * the kernel refuses, its pages returned with madvise, which needs no map
 * entry, and the range left to the block. Returns the bytes the block
 * keeps mapped. */
static size_t huge_give_back_tail(uintptr_t base, size_t msize, size_t mapped) {
    size_t tail = mapped - msize;
    if (os_unmap((void *)(base + msize), tail) == 0) {
        stats_add_released(tail);
        return msize;
    }
    if (os_purge((void *)(base + msize), tail) == 0) stats_add_released(tail);
    return mapped;
}

/* The bytes a block shrunk in place to msize keeps mapped: a tail of a
 * chunk or more goes back (huge_give_back_tail), a shorter one stays the
 * block's. */
static size_t huge_shrink_mapped(uintptr_t base, size_t msize, size_t mapped) {
    return mapped - msize >= TM_CHUNK ? huge_give_back_tail(base, msize, mapped) : mapped;
}

/* Unmap a fresh mapping that no block took; where the kernel refuses, keep
 * it in the cache as a freed mapping, for a later malloc to use and for
 * _heapmin and the decay to try to unmap again (which succeeds once the
 * program has given map entries back). Lost only if it cannot even be
 * described. */
static void huge_unmap_or_park(void *p, size_t size) {
    if (os_unmap(p, size) == 0) return;
    tm_huge_t *h = desc_new((uintptr_t)p, (uintptr_t)p, size, os_now_ns() | 1);
    if (h && pagemap_set((uintptr_t)p, (uintptr_t)h) == 0) {
        huge_cache_put_back(h);
        return;
    }
    if (h) desc_free(h);
}

/* Unmap cache entries older than the decay time. */
static void huge_decay(uint64_t now) {
    if (!__atomic_load_n(&huge_cache_count, __ATOMIC_RELAXED)) return;
    tm_huge_t *old = NULL;
    tm_lock(&huge_mu);
    uint64_t limit = (uint64_t)TM_OPT_NOW(decay_ms) * 1000000ull;
    for (tm_huge_t *h = huge_cache, *next; h; h = next) {
        next = h->next;
        /* now was read before the lock: a block freed while this thread
         * waited for it is younger than now says (until 2026-12-06 the
         * difference wrapped and such a block was unmapped at once; an
         * outside reviewer) */
        if (now > h->freed_ns && now - h->freed_ns >= limit) {
            cache_remove_locked(h);
            list_push(&old, h);
        }
    }
    tm_unlock(&huge_mu);
    for (tm_huge_t *h = old, *next; h; h = next) {
        next = h->next;
        if (!huge_unmap(h)) huge_cache_put_back(h);
    }
}

/* Grow the mapping of h, which no other thread can reach (taken out of the
 * cache, or a block the caller holds), to msize bytes: in place when the
 * kernel can, else its pages move, without copying, to a fresh
 * chunk-aligned spot. Returns the new base (h->base and h->mapped are the
 * caller's to update), or NULL with the mapping unchanged. */
static void *huge_grow(tm_huge_t *h, size_t msize) {
    void *p = (void *)h->base;
    if (os_remap(p, h->mapped, msize, 0, NULL)) return p;
    void *spot = os_map_aligned(msize, TM_CHUNK);
    if (!spot) return NULL;
    /* The entries change while both ranges are still ours: once the pages
     * have moved, the old range is free address space, which another
     * thread may map for a block of its own and enter in the pagemap -- a
     * clear of the old entry after the move could wipe out that one (a
     * later free of that block then read as an invalid pointer). */
    if (pagemap_set((uintptr_t)spot, (uintptr_t)h) != 0) {
        os_unmap(spot, msize);
        return NULL;
    }
    pagemap_clear((uintptr_t)p);
    void *np = os_remap(p, h->mapped, msize, 1, spot);
    if (!np) {
        pagemap_set((uintptr_t)p, (uintptr_t)h); /* its leaf exists: cannot fail */
        pagemap_clear((uintptr_t)spot);
        huge_unmap_or_park(spot, msize);
        return NULL;
    }
    return np;
}

/* Grow guarded block h (claimed: h->size bytes, then its guard page) to
 * msize bytes and a guard page after them: the old guard page becomes
 * part of the block (read-write again, it joins the block's mapping, which
 * mremap needs whole), the mapping grows -- in place, or, if may_move,
 * wherever the kernel finds room (huge_grow) -- and the page after msize
 * becomes the guard. Returns the block's address, or NULL with the block
 * as it was. *guarded is false if the new guard page could not be made
 * (the block keeps all msize + TM_PAGE bytes, unguarded). The pages it
 * gains read zero: the old guard page was never accessible. Until
 * 2026-12-06 a guarded block was moved to a new one and copied at every
 * growth, and a loop growing a buffer 4 KiB at a time took 72 s to 32 MiB
 * (0.02 s unguarded; an outside tester). */
static void *huge_grow_guarded(tm_huge_t *h, size_t msize, bool may_move, bool *guarded) {
    char *p = (char *)h->base, *g = p + h->size;
    if (os_protect_rw(g, TM_PAGE) != 0) return NULL;
    void *np = may_move ? huge_grow(h, msize + TM_PAGE)
                        : (os_remap(p, h->mapped, msize + TM_PAGE, 0, NULL) ? p : NULL);
    if (!np) {
        (void)os_protect_none(g, TM_PAGE); /* a guard again, as it was */
        return NULL;
    }
    *guarded = os_protect_none((char *)np + msize, TM_PAGE) == 0;
    return np;
}

/* The cache's bound in bytes, 0 when it is off (either option 0). */
static size_t huge_cache_cap(void) {
    return TM_OPT_NOW(decay_ms) > 0 ? (size_t)TM_OPT_NOW(huge_cache_mb) << 20 : 0;
}

/* True if the cache has room for a mapping of `bytes` more, now. */
static bool huge_cache_room(size_t bytes) {
    tm_lock(&huge_mu);
    bool room = huge_cache_count < HUGE_CACHE_MAX_COUNT && huge_cache_bytes + bytes <= huge_cache_cap();
    tm_unlock(&huge_mu);
    return room;
}

/* Cut h's mapping, too big for a block of msize bytes, after the block's
 * last chunk: the tail stays in the cache as a mapping of its own (its
 * resident pages serve a later block), or goes back to the kernel if it
 * cannot be described. h must be out of the cache and not yet live. */
static void huge_split_tail(tm_huge_t *h, size_t msize) {
    size_t head = (msize + TM_CHUNK_MASK) & ~TM_CHUNK_MASK;
    if (head >= h->mapped) return; /* the block keeps it all */
    uintptr_t tail_base = h->base + head;
    size_t tail_size = h->mapped - head;
    tm_huge_t *t = huge_cache_room(tail_size) ? desc_new(tail_base, h->origin, tail_size, h->freed_ns) : NULL;
    if (t && pagemap_set(tail_base, (uintptr_t)t) == 0) {
        h->mapped = head;
        huge_cache_put_back(t); /* (past the bounds if others filled it meanwhile: the next free evicts) */
        return;
    }
    if (t) desc_free(t);
    h->mapped = huge_give_back_tail(h->base, msize, h->mapped);
}

/* A block the program holds has just grown by `grown` bytes of fresh
 * pages (realloc: mremap in place or to a new spot): as many bytes of
 * cached mappings go back to the kernel, the oldest first, the last one
 * cut from its end if only part of it is needed. So the growth swaps idle
 * cached pages for live ones, and the peak stays what the program holds,
 * not that plus mappings nobody takes: until 2026-12-06 an outside
 * tester's string builders (2 threads, each growing 3 buffers by 1/8 at a
 * time, one thread to 8 MiB each, the other to 26 MiB) peaked at 122 MB,
 * the second thread's growth on top of the first thread's freed buffers,
 * against glibc's 81 MB. A malloc takes a cached mapping and grows it
 * instead (huge_alloc), so only the growth of a block the program already
 * held (realloc, _expand) lands here. */
static void huge_cache_evict(size_t grown) {
    if (!__atomic_load_n(&huge_cache_count, __ATOMIC_RELAXED)) return;
    tm_huge_t *out = NULL, *cut = NULL;
    size_t taken = 0, cut_bytes = 0;
    tm_lock(&huge_mu);
    for (tm_huge_t *h; taken < grown && (h = cache_oldest_locked()) != NULL;) {
        cache_remove_locked(h);
        size_t need = grown - taken;
        if (h->mapped > need + TM_CHUNK) { /* only its end: the rest stays */
            cut = h;
            cut_bytes = need;
            taken = grown;
        } else {
            list_push(&out, h);
            taken += h->mapped;
        }
    }
    tm_unlock(&huge_mu);
    for (tm_huge_t *e = out, *next; e; e = next) {
        next = e->next;
        if (!huge_unmap(e)) huge_cache_put_back(e); /* retried by _heapmin */
    }
    if (cut) {
        /* out of the cache while its end is unmapped: no one takes it */
        size_t keep = cut->mapped - cut_bytes;
        bool done = os_unmap((void *)(cut->base + keep), cut_bytes) == 0;
        if (done) stats_add_released(cut_bytes);
        tm_lock(&huge_mu);
        if (done) cut->mapped = cut->size = keep;
        cache_add_locked(cut);
        tm_unlock(&huge_mu);
    }
}

/* The first chunk of a cached mapping, for an arena that must grow
 * (arena_grow_locked, after it found no empty chunk of another arena's):
 * the pages of a big block the program freed serve its small and large
 * blocks, instead of staying resident beside the fresh chunk the arena
 * would map and fault in. The counterpart of huge_cache_evict, for the
 * arenas' growth. A Python program building an in-memory sqlite3 database
 * (500 000 rows, 8 KiB pages) freed a 32 MiB buffer early and peaked at
 * 116.6 MB with it cached, 103.4 MB with the cache off, glibc 84 MB (the
 * rest: docs/design.md). Takes the oldest mapping of a chunk or more
 * (every cached mapping is chunk-aligned); the rest of it stays cached, a
 * chunk further on. NULL if none, or if its protections cannot be undone
 * (then it goes back to the kernel, as in huge_alloc). The chunk's pages
 * hold old bytes: the caller marks them resident and not zeroed. */
void *huge_take_chunk(void) {
    if (!__atomic_load_n(&huge_cache_count, __ATOMIC_RELAXED)) return NULL;
    tm_huge_t *h = NULL;
    tm_lock(&huge_mu);
    for (tm_huge_t *it = huge_cache; it; it = it->next) /* pushed at the head: the last is oldest */
        if (it->mapped >= TM_CHUNK) h = it;
    if (h) cache_remove_locked(h);
    tm_unlock(&huge_mu);
    if (!h) return NULL;
    if (os_restore_block((void *)h->base, TM_CHUNK) != 0) {
        if (!huge_unmap(h)) huge_cache_put_back(h);
        return NULL;
    }
    uintptr_t mem = h->base;
    if (h->mapped == TM_CHUNK) {
        pagemap_clear(mem);
        desc_free(h);
        return (void *)mem;
    }
    /* the rest, entered at its new base first: it may fail (no leaf) */
    if (pagemap_set(mem + TM_CHUNK, (uintptr_t)h) != 0) {
        huge_cache_put_back(h);
        return NULL;
    }
    pagemap_clear(mem);
    tm_lock(&huge_mu);
    h->base = mem + TM_CHUNK;
    h->mapped -= TM_CHUNK;
    h->size = h->mapped;
    cache_add_locked(h);
    tm_unlock(&huge_mu);
    return (void *)mem;
}

/* Zero the first n bytes (whole pages) of a cached mapping for calloc: the
 * pages in memory are written over -- the block before used them, this one
 * likely will, and a page fault costs more than writing a page -- and the
 * runs of ZERO_PURGE_MIN or more others given back (MADV_DONTNEED), so
 * that they stay out of memory until the program touches them: writing
 * them would fault them in now, where one madvise costs about as much as
 * one or two faults, and the program, if it touches them, faults them in
 * either way. A lone page out of memory between two in it is written over:
 * an outside reviewer's calloc of 64 MiB, every other page used, made 7921
 * madvise calls each and took twice the time. Until
 * 2026-12-06 every page was written over: an outside tester's callocs of
 * 4-48 MiB, each touching one page in 64, made every page resident and
 * took 2.4x glibc's CPU time. Then, until 2026-12-07, only runs of 16
 * pages or more were given back, and another's calloc of 64 MiB, one byte
 * written every 64 KiB (runs of 15 pages out of memory), made every page
 * resident again at each reuse: peak RSS 67 MB, glibc 5.1. (Giving back
 * pages in memory too when at most half were, as tried on 2026-12-06,
 * made a program that reuses a calloc'ed 32 MiB buffer and writes half of
 * it fault that half in again every time: 0.30 -> 2.5 s, a reviewer's
 * measurement.) mincore only chooses: every byte reads zero either way (a
 * page swapped out counts as not in memory, and the madvise drops it). */
#define ZERO_PURGE_MIN 2 /* pages */

static void huge_zero(char *p, size_t n) {
    unsigned char vec[4096];
    const size_t step = sizeof vec << TM_PAGE_SHIFT;
    for (size_t off = 0; off < n; off += step) {
        size_t len = n - off < step ? n - off : step, pages = len >> TM_PAGE_SHIFT;
        if (!os_in_memory(p + off, len, vec)) {
            memset(p + off, 0, len);
            continue;
        }
        for (size_t i = 0, j; i < pages; i = j) {
            bool in = vec[i] & 1;
            for (j = i + 1; j < pages && (vec[j] & 1) == in; j++) {
            }
            char *q = p + off + (i << TM_PAGE_SHIFT);
            size_t qn = (j - i) << TM_PAGE_SHIFT;
            if (in || j - i < ZERO_PURGE_MIN || os_purge(q, qn) != 0) memset(q, 0, qn);
        }
    }
}

void *huge_alloc(size_t size, size_t align, bool zero) {
    size_t msize = huge_map_size(size);
    if (msize < size) return NULL;
    uint64_t now = os_now_ns();
    huge_decay(now);
    tm_huge_t *h = NULL;
    bool guard = TM_OPT_NOW(guard) != 0;
    if (align <= TM_CHUNK && __atomic_load_n(&huge_cache_count, __ATOMIC_RELAXED) && !guard) {
        tm_lock(&huge_mu);
        /* the smallest mapping that fits, else the largest one */
        tm_huge_t *best = NULL, *largest = NULL;
        for (tm_huge_t *it = huge_cache; it; it = it->next) {
            if (it->mapped >= msize && (!best || it->mapped < best->mapped)) best = it;
            if (!largest || it->mapped > largest->mapped) largest = it;
        }
        h = best ? best : largest;
        if (h) {
            cache_remove_locked(h);
        }
        tm_unlock(&huge_mu);
        /* The program may have left protections or fork/dump advice on
         * the pages of the block it freed: a reused mapping gets them
         * undone, as a fresh one would not have them (a tester's program
         * mprotect()ed a page read-only, freed the block, and crashed
         * writing the next malloc's, the same mapping; another's fork
         * child lost a MADV_DONTFORK range). A mapping that cannot be
         * made writable goes back to the kernel. */
        if (h && os_restore_block((void *)h->base, h->mapped) != 0) {
            if (!huge_unmap(h)) huge_cache_put_back(h);
            h = NULL;
        }
        size_t used = h ? h->mapped : 0; /* bytes that may not be zero */
        if (h && h->mapped < msize) {
            /* Too small: grown, its resident pages keep serving (a fresh
             * mapping would fault in every page); if it cannot grow, it
             * goes back and a fresh mapping is made. */
            void *np = huge_grow(h, msize);
            if (np) {
                tm_lock(&huge_mu);
                if (np != (void *)h->base) h->origin = (uintptr_t)np; /* moved: a mapping of its own */
                h->base = (uintptr_t)np;
                h->mapped = msize;
                tm_unlock(&huge_mu);
            } else {
                huge_cache_put_back(h);
                h = NULL;
            }
        } else if (h && (zero ? h->mapped > msize : h->mapped - msize > msize)) {
            /* a tail up to the block's own size is kept, but not for
             * calloc, which must zero all of it (below) */
            huge_split_tail(h, msize);
        }
        if (h) {
            /* The block may use all of its mapping, so all of it that may
             * hold old bytes is zeroed, not only the pages asked for: a
             * growth in place inside it (realloc, _recalloc) would hand
             * them out (found by a tester). Grown pages are zero. */
            if (zero) huge_zero((char *)h->base, used < h->mapped ? used : h->mapped);
            msize = h->mapped;
        }
    }
    if (!h) {
        size_t al = align > TM_CHUNK ? align : TM_CHUNK;
        size_t gsize = guard ? TM_PAGE : 0;
        size_t extra = 0;
        void *p = os_map_aligned_ex(msize + gsize, al, &extra);
        if (!p && heapmin_release_for_retry()) p = os_map_aligned_ex(msize + gsize, al, &extra);
        if (!p) return NULL;
        /* a tail the kernel would not trim off the over-mapping (see "when
         * the kernel will not unmap"): the block's, guard page after it */
        msize += extra;
        if (guard && os_protect_none((char *)p + msize, TM_PAGE) != 0) {
            huge_unmap_or_park(p, msize + gsize);
            return NULL;
        }
        h = desc_new((uintptr_t)p, (uintptr_t)p, msize + gsize, 1);
        if (!h) {
            os_unmap(p, msize + gsize);
            return NULL;
        }
        if (pagemap_set(h->base, (uintptr_t)h) != 0) {
            os_unmap(p, msize + gsize);
            desc_free(h);
            return NULL;
        }
    }
    tm_lock(&huge_mu);
    h->size = msize;
    list_push(&huge_live, h);
    HUGE_ADD(huge_live_bytes, h->size);
    HUGE_ADD(huge_live_mapped, h->mapped);
    h->freed_ns = 0;
    uintptr_t base = h->base; /* read under the lock: a stale free/realloc may change h once it is live */
    tm_unlock(&huge_mu);
    return (void *)base;
}

/* h, just freed and about to enter the cache, merged with the cached
 * mappings cut from the same kernel mapping right before and after it (a
 * block and the tail huge_split_tail cut from it meet again): returns the
 * descriptor that covers them all, out of the cache; the others leave the
 * pagemap (lock order: huge_mu, then the pagemap's, as at fork) and become
 * spare descriptors. Only
 * pieces of one mapping merge, because mremap (growth, realloc) works on
 * one mapping at a time. */
static tm_huge_t *huge_cache_merge_locked(tm_huge_t *h) {
    for (tm_huge_t *it = huge_cache; it;) {
        tm_huge_t *lo = it->origin != h->origin          ? NULL
                        : it->base + it->mapped == h->base ? it
                        : h->base + h->mapped == it->base ? h
                                                          : NULL;
        if (!lo) {
            it = it->next;
            continue;
        }
        tm_huge_t *hi = lo == it ? h : it;
        cache_remove_locked(it);
        lo->mapped += hi->mapped;
        lo->size = lo->mapped;
        lo->freed_ns = h->freed_ns;
        /* cleared now, under the lock: once the merged entry is in the
         * cache another thread may cut it again at hi->base */
        pagemap_clear(hi->base);
        desc_free_locked(hi);
        h = lo;
        it = huge_cache; /* the bigger piece may touch one seen before */
    }
    return h;
}

/* Whether a, a chunk-aligned address no descriptor starts at (its
 * pagemap entry is clear), lies inside a mapping in the huge cache: a
 * block freed there and merged with the one beside it, whose start the
 * merge cleared. A free of it is a double free, not a pointer the
 * allocator never gave out (until 2026-12-07 reported as an invalid
 * pointer: tests/bad_input, double-huge-merged). Error paths only: a walk
 * of the cache. */
bool huge_cached_at(uintptr_t a) {
    if (a & TM_CHUNK_MASK) return false;
    bool in = false;
    tm_lock(&huge_mu);
    for (tm_huge_t *h = huge_cache; h && !in; h = h->next) in = a > h->base && a - h->base < h->mapped;
    tm_unlock(&huge_mu);
    return in;
}

void huge_free(tm_huge_t *h, void *p) {
    tm_lock(&huge_mu);
    if (unlikely(h->base != (uintptr_t)p)) {
        tm_unlock(&huge_mu);
        tm_invalid_pointer("free", p);
        return;
    }
    if (unlikely(h->freed_ns || h->moving)) { /* freed, or a resize of it is under way */
        tm_unlock(&huge_mu);
        tm_double_free("free", p);
        return;
    }
    list_remove(&huge_live, h);
    HUGE_SUB(huge_live_bytes, h->size);
    HUGE_SUB(huge_live_mapped, h->mapped);
    uint64_t now = os_now_ns();
    h->freed_ns = now ? now : 1;
    size_t cap = huge_cache_cap();
    tm_huge_t *evict = NULL;
    if (h->mapped <= cap && h->mapped == h->size) { /* cache on; no guard */
        cache_add_locked(huge_cache_merge_locked(h));
        /* Evict the oldest entries until within bounds. */
        while (huge_cache_bytes > cap || huge_cache_count > HUGE_CACHE_MAX_COUNT) {
            tm_huge_t *o = cache_oldest_locked();
            cache_remove_locked(o);
            list_push(&evict, o);
        }
    } else {
        list_push(&evict, h);
    }
    tm_unlock(&huge_mu);
    for (tm_huge_t *e = evict, *next; e; e = next) {
        next = e->next;
        if (!huge_unmap(e)) huge_cache_put_back(e); /* retried by _heapmin */
    }
}

/* A fork waits for the resizes under way: its prepare handler, holding
 * huge_mu, sets huge_forking (no new claim starts) and waits until
 * huge_claims, the blocks claimed and not yet settled, is 0. So no child
 * starts with a block marked `moving` whose resizing thread it does not
 * have. Until 2026-12-07 such a child's free() of the block, at its old
 * address and intact, was reported as a double free and aborted (a
 * reviewer's suspicion; tests/stress/fork.c), and a fork landing after a
 * move had set the pagemap entry at the new spot, before the mremap, left
 * a child whose block no call could reach. The waits are on claims_cv
 * with huge_mu, the lock a claim takes anyway; the resize's own system
 * calls still run without it. Not for the thread that forks (another
 * library's fork handler resizing a block): its lock calls take nothing
 * then (tm_tls.forking). */
static unsigned huge_claims;  /* under huge_mu */
static bool huge_forking;     /* under huge_mu */
static pthread_cond_t claims_cv = PTHREAD_COND_INITIALIZER;

/* A wait on claims_cv (under huge_mu), with cancellation off:
 * pthread_cond_wait is a cancellation point, and a thread cancelled there
 * (inside realloc or _expand, or inside fork) took huge_mu back on its way
 * out and died holding it (tests/stress/fork.c), as heapmin_lock says. */
static void claims_cv_wait_locked(void) {
    int cancel;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    pthread_cond_wait(&claims_cv, &huge_mu);
    pthread_setcancelstate(cancel, NULL);
}

static void claim_wait_for_fork_locked(void) {
    if (tm_tls.forking) return;
    while (huge_forking) claims_cv_wait_locked();
}

static void claim_end_locked(tm_huge_t *h) {
    h->moving = false;
    if (--huge_claims == 0 && huge_forking) pthread_cond_broadcast(&claims_cv);
}

/* Claim the live huge block h at p for a resize by this thread: under
 * huge_mu, p must be h's base and h neither freed nor being resized by
 * another call, and h->moving is set until the resize ends -- huge_free
 * refuses such a block, and _heapchk meanwhile does not take the entry at
 * a grown block's new spot for a broken heap. false (reported under the
 * caller's name) when the program frees or resizes one block from two
 * threads at once. Until 2026-12-05 the resize read h under the lock but
 * worked on it after, unclaimed: a free() of the block meanwhile put it
 * in the huge cache, the resize then wrote its new address into the
 * cached descriptor, and the next huge malloc got the same block (found
 * by a reviewer; 3 runs of 3). */
static bool huge_claim(tm_huge_t *h, void *p, const char *call, size_t *mapped, size_t *size) {
    tm_lock(&huge_mu);
    claim_wait_for_fork_locked();
    bool base = h->base == (uintptr_t)p, ok = base && !h->freed_ns && !h->moving;
    if (ok) {
        h->moving = true;
        huge_claims++;
        *mapped = h->mapped;
        *size = h->size;
    }
    tm_unlock(&huge_mu);
    if (!ok) {
        if (base) tm_double_free(call, p);
        else tm_invalid_pointer(call, p);
    }
    return ok;
}

static void huge_unclaim(tm_huge_t *h) {
    tm_lock(&huge_mu);
    claim_end_locked(h);
    tm_unlock(&huge_mu);
}

/* Claimed block h, resized in place or moved to np: its new usable size
 * and mapped bytes (size < mapped: a guard page follows), and the claim
 * ends. */
static void huge_set_sizes(tm_huge_t *h, void *np, size_t size, size_t mapped) {
    tm_lock(&huge_mu);
    claim_end_locked(h);
    HUGE_ADD(huge_live_bytes, size - h->size);
    HUGE_ADD(huge_live_mapped, mapped - h->mapped);
    if ((uintptr_t)np != h->base) h->origin = (uintptr_t)np;
    h->base = (uintptr_t)np;
    h->size = size;
    h->mapped = mapped;
    tm_unlock(&huge_mu);
}

/* Resize the huge block at p to size bytes (size above the huge
 * threshold). Returns the new address, or NULL with the block unchanged;
 * *refused is set if the block could not be claimed (reported), when the
 * caller must not fall back to a copy. */
void *huge_realloc(tm_huge_t *h, void *p, size_t size, bool *grown_zero, bool *refused) {
    size_t msize = huge_map_size(size);
    if (msize < size) return NULL;
    size_t old_mapped, old_size;
    if (!huge_claim(h, p, "realloc", &old_mapped, &old_size)) {
        *refused = true;
        return NULL;
    }
    if (old_mapped != old_size) { /* guarded */
        if (msize == old_size) { /* the same pages: nothing to do */
            huge_unclaim(h);
            return p;
        }
        bool guarded = true;
        void *np = msize > old_size ? huge_grow_guarded(h, msize, true, &guarded) : NULL;
        if (np) {
            if (grown_zero) *grown_zero = true;
            huge_set_sizes(h, np, guarded ? msize : msize + TM_PAGE, msize + TM_PAGE);
            return np;
        }
        /* A shrink, or the kernel could not grow it: the caller moves it
         * to a new block made as malloc makes one -- guarded if the option
         * still says so, filled as zero and junk say. (Until 2026-12-06 a
         * huge_alloc here skipped the fills: with guard turned off since,
         * a cached mapping came back with an earlier block's bytes past
         * the copy under zero:1; an outside reviewer.) */
        huge_unclaim(h);
        return NULL;
    }
    void *np = p;
    if (msize <= old_mapped) {
        msize = huge_shrink_mapped((uintptr_t)p, msize, old_mapped);
    } else if (!(np = huge_grow(h, msize))) {
        huge_unclaim(h);
        return NULL;
    } else if (grown_zero) {
        *grown_zero = true; /* mremap's new pages */
    }
    huge_set_sizes(h, np, msize, msize);
    if (msize > old_mapped) huge_cache_evict(msize - old_mapped);
    return np;
}

size_t huge_release_cache(unsigned *failures) {
    tm_lock(&huge_mu);
    tm_huge_t *all = huge_cache;
    huge_cache = NULL;
    __atomic_store_n(&huge_cache_bytes, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&huge_cache_count, 0, __ATOMIC_RELAXED);
    tm_unlock(&huge_mu);
    size_t bytes = 0;
    for (tm_huge_t *h = all, *next; h; h = next) {
        next = h->next;
        size_t m = h->mapped;
        if (huge_unmap(h)) {
            bytes += m;
        } else {
            huge_cache_put_back(h);
            if (failures) ++*failures;
        }
    }
    return bytes;
}

size_t huge_allocated(void) { return __atomic_load_n(&huge_live_bytes, __ATOMIC_RELAXED); }

/* The bytes of live huge blocks and the bytes mapped for huge blocks
 * (live and cached), read together under huge_mu: the loads apart could
 * see a block that a free then unmapped counted in the first and not the
 * second, or a cached mapping a malloc took in neither, and statistics
 * then said more held than mapped (an outside tester: active 104.9 MB
 * against mapped 4.6 MB, one sample in 200 000, with another thread
 * allocating and freeing a 100 MiB block). */
void huge_totals(size_t *live, size_t *mapped) {
    tm_lock(&huge_mu);
    *live = huge_live_bytes;
    *mapped = huge_live_mapped + huge_cache_bytes;
    tm_unlock(&huge_mu);
}

size_t huge_mapped(void) {
    return __atomic_load_n(&huge_live_mapped, __ATOMIC_RELAXED) +
           __atomic_load_n(&huge_cache_bytes, __ATOMIC_RELAXED);
}

void huge_foreach_locked(huge_visit_fn fn, void *arg) {
    for (tm_huge_t *h = huge_live; h; h = h->next) fn(h, arg);
}

void huge_fork_prepare(void) {
    tm_lock(&huge_mu);
    huge_forking = true; /* the resizes under way end first, and no other starts */
    while (huge_claims) claims_cv_wait_locked();
}
void huge_fork_parent(void) {
    huge_forking = false;
    pthread_cond_broadcast(&claims_cv); /* claims that waited for the fork */
    tm_unlock(&huge_mu);
}
void huge_fork_child(void) {
    huge_forking = false;
    pthread_cond_init(&claims_cv, NULL); /* its waiters are the parent's */
    pthread_mutex_init(&huge_mu, NULL);
}

/* Resize without moving (for _expand): shrink, or grow with mremap in
 * place. Returns true on success; *refused is set if the block could not
 * be claimed (freed or resized by another thread: reported). */
bool huge_resize_in_place(tm_huge_t *h, void *p, size_t size, bool *refused) {
    size_t msize = huge_map_size(size), old_mapped, old_size;
    if (msize < size) return false;
    if (!huge_claim(h, p, "_expand", &old_mapped, &old_size)) {
        *refused = true;
        return false;
    }
    if (old_mapped != old_size) { /* guarded: grown in place, never shrunk */
        bool guarded = true;
        if (msize <= old_size || !huge_grow_guarded(h, msize, false, &guarded)) {
            huge_unclaim(h);
            return msize <= old_size;
        }
        huge_set_sizes(h, p, guarded ? msize : msize + TM_PAGE, msize + TM_PAGE);
        return true;
    }
    if (msize <= old_mapped) {
        msize = huge_shrink_mapped((uintptr_t)p, msize, old_mapped);
    } else if (!os_remap(p, old_mapped, msize, 0, NULL)) {
        huge_unclaim(h);
        return false;
    }
    huge_set_sizes(h, p, msize, msize);
    if (msize > old_mapped) huge_cache_evict(msize - old_mapped); /* as realloc's growth */
    return true;
}
