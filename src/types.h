/*
 * types.h -- every structure and constant of trimalloc, and the words they
 * are described with.
 *
 * Glossary
 *   page        4 KiB, the unit the kernel maps and the unit of every run.
 *   chunk       4 MiB of address space aligned to 4 MiB, owned by one arena,
 *               cut into runs. Its descriptor (chunk_t) lives in metadata
 *               memory, never inside the chunk, so user overflows cannot
 *               reach it.
 *   run         a sequence of pages inside a chunk: free, a slab, or one
 *               large block. Free runs are coalesced with their neighbours
 *               as soon as they are freed.
 *   size class  one of TM_NCLASSES small block sizes (16 B .. 32 KiB), four
 *               per doubling above 128 B, so internal waste is under 20%.
 *   slab        a run cut into blocks of one size class; a bitmap in its
 *               descriptor (slab_t, a slot of its chunk's slab pool) says
 *               which blocks are free in the arena.
 *   large       a block of 32 KiB < size <= huge threshold, or one that
 *               realloc grew past 10 KiB: a run of pages.
 *   huge        a block above the huge threshold: its own kernel mapping,
 *               chunk-aligned, described by a huge_t.
 *   bin         per size class, the arena's list of slabs with free blocks
 *               (arena_bin_t) or the thread cache's stack of free blocks
 *               (tc_bin_t).
 *   thread cache (tcache)  per thread, one bounded stack of free blocks per
 *               size class. malloc pops, free pushes; no lock, no atomic
 *               read-modify-write, no fence. Misses refill and overflows
 *               flush half a stack from/to the arenas in one locked batch.
 *   arena       an independent heap with one lock: bins, chunks and the
 *               free-run index. Threads are spread over arenas.
 *   pagemap     address -> chunk/huge descriptor, a two-level radix tree
 *               read without locks by free().
 *   world stop  the handshake by which _heapmin drains other threads'
 *               caches: see world.c.
 *
 * Invariants
 *   - A block is in exactly one place: held by the program, in one thread
 *     cache, or free in its slab's bitmap.
 *   - A free block in a thread cache or slab carries a cookie (its address
 *     xor a per-process key) in bytes 8..15; malloc clears it. free()
 *     seeing the cookie means a double free; a slab receiving a block
 *     without it means the program wrote into the block after freeing it.
 *     Two exceptions, both free in their slab's bitmap: blocks that were
 *     never handed out (index >= slab.fresh) have no cookie, so a new
 *     slab's pages are not touched until blocks on them are used; and in a
 *     slab marked purged, _heapmin gave back pages of free blocks, whose
 *     cookie words then read zero. The refill writes the cookie of every
 *     such block it hands out, so every block in a cache carries one, and
 *     of every block that starts on the page of a never-handed-out block it
 *     hands out: a page holds only blocks never handed out (TM_FAST_FRESH
 *     in fast[]) or none.
 *   - chunk_t.fast[] is written only under the owning arena's lock and read
 *     without locks by free(); a page's class and slab offset change only
 *     while no block of that page is held by the program; its flags
 *     (TM_FAST_PURGED, TM_FAST_FRESH) at any time, and they only ever send
 *     free() to the slow check. The one write without the lock: a large
 *     block's first-page TM_FAST_LARGE, swapped for TM_FAST_QUEUED (CAS) by
 *     the thread of another arena that frees it (tcache_free_large); the
 *     arena writes the entry again only once the block is back.
 *   - No lock is held across a system call that maps or unmaps memory.
 */
#ifndef TM_TYPES_H
#define TM_TYPES_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Geometry ------------------------------------------------------------ */
#define TM_PAGE_SHIFT 12
#define TM_PAGE ((size_t)1 << TM_PAGE_SHIFT)
#define TM_PAGE_MASK (TM_PAGE - 1)
#define TM_CHUNK_SHIFT 22
#define TM_CHUNK ((size_t)1 << TM_CHUNK_SHIFT)
#define TM_CHUNK_MASK (TM_CHUNK - 1)
#define TM_CHUNK_PAGES (TM_CHUNK >> TM_PAGE_SHIFT) /* 1024 */
#define TM_ALIGN 16                               /* malloc's alignment */

/* ---- Size classes (size_class.c has the table and the reasoning) -------- */
#define TM_NCLASSES 40                /* classes 1..40; 0 means "not small" */
#define TM_SMALL_MAX ((size_t)32768)  /* largest small size */
#define TM_GROW_RUN_MIN ((size_t)10240) /* realloc's growth past this takes a run (alloc.c) */
#define TM_TINY_MAX ((size_t)1024)    /* sizes looked up in one table */
#define TM_SLAB_MAX_BLOCKS 256        /* bitmap bits in a slab */
#define TM_RL_MAX 32                  /* remote large frees a cache queues */
#define TM_LARGE_MAX_DEFAULT ((size_t)2 << 20) /* default huge threshold */

typedef struct tm_class {
    uint32_t size;      /* block size in bytes */
    uint32_t slab_pages;/* pages per slab */
    uint32_t nblocks;   /* blocks per slab */
    uint32_t tc_cap;    /* thread-cache stack capacity (before scaling) */
    uint64_t magic;     /* floor(off / size) == (off * magic) >> 40 */
} tm_class_t;

/* ---- Runs and chunks ----------------------------------------------------- */
/* PAGE_INTERIOR is 0, so a page entry the purge gave back to the kernel
 * (it reads zero) is an interior page; PAGE_UNUSED marks the ends of a free
 * run while the purge has it out of the index. */
enum { PAGE_INTERIOR = 0, PAGE_FREE, PAGE_SLAB, PAGE_LARGE, PAGE_UNUSED };

struct tm_slab;
struct tm_arena;

/* Per-page metadata, 4 bytes. Only a run's first and last page carry kind
 * and npages (interior pages read PAGE_INTERIOR). A free run's first page
 * is linked into its arena's free-run index through chunk_t.links. */
typedef union tm_page {
    struct {
        uint32_t kind : 8;
        uint32_t zeroed : 1;    /* free run: every byte is known zero (fresh/purged) */
        uint32_t dirty : 1;     /* free run: has pages not yet returned to the kernel */
        uint32_t npages : 11;   /* run length (1..1024), on first and last page */
        uint32_t index : 10;    /* a slab's first page: its descriptor's slot in
                                   chunk_t.slabs (chunk_slab), read without
                                   locks by slab_of */
    };
    uint32_t word;              /* the whole entry: index is written and read
                                   without the lock through it (page_set_index) */
} tm_page_t;

/* A free run's links in its arena's index (by exact length). Two free runs
 * never touch (they coalesce), so their first pages are at least two apart
 * and links[p >> 1] belongs to the free run whose first page is p. */
typedef struct tm_run_link {
    union tm_page *next, *prev;
} tm_run_link_t;

/* A slab's descriptor, in its chunk's slab pool (chunk_t.slabs); the slot
 * is named by the slab's first page entry (tm_page_t.index). bitmap bit i
 * set = block i free in the arena (not in a thread cache, not held by the
 * program). */
typedef struct tm_slab {
    uintptr_t start;                /* leads back to its chunk (slab_chunk) */
    struct tm_slab *next, *prev;    /* bin's partial list */
    uint16_t nfree;                 /* set bits in bitmap */
    uint16_t nblocks;
    uint8_t cls;
    uint8_t on_list : 1;            /* 1 while on the bin's partial list */
    uint8_t hint : 3;               /* first bitmap word that may be nonzero */
    uint8_t purged : 1;             /* _heapmin gave back pages holding free
                                       blocks' cookies: those read zero */
    uint16_t fresh;                 /* blocks [fresh, nblocks) hold no cookie
                                       and unspecified bytes: never handed out,
                                       or a free tail _heapmin gave back */
    uint64_t bitmap[TM_SLAB_MAX_BLOCKS / 64];
} tm_slab_t;                        /* 64 bytes */

/* A chunk's descriptor: its own page-aligned mapping (meta.c), laid out so
 * that what a chunk with few live runs keeps resident is a few pages: the
 * fast[] page, the page entries (one page, which page_chunk relies on),
 * the links, and the header page, which starts the slab pool. Slab descriptors are slots of the pool, handed out
 * lowest first and packed down by _heapmin (arena_compact_slabs), which
 * then gives back the pool pages above the last live slot (chunk.c). */
typedef struct tm_chunk {
    /* fast[i]: small class of page i in bits 0..7 (0 = not a slab page),
     * the slab's byte offset in the chunk in bits 12..21, and the index of
     * the owning arena in bits 22..31 (TM_FAST_* in internal.h). free()
     * reads only this. */
    uint32_t fast[TM_CHUNK_PAGES];          /* page 0 */
    tm_page_t pages[TM_CHUNK_PAGES];        /* page 1 */
    tm_run_link_t links[TM_CHUNK_PAGES / 2];/* pages 2-3 */
    /* header, on the first page of the slab pool */
    uintptr_t base;
    struct tm_arena *arena;
    struct tm_chunk *next, *prev;   /* arena's chunk list */
    uint32_t free_pages;            /* pages in free runs */
    uint32_t stash_pages;           /* pages in its arena's last freed runs (chunk.c):
                                       never all the others free */
    uint16_t nslabs;                /* slots in use */
    uint16_t slab_hwm;              /* no slot at or above it was used since
                                       the pool was last given back */
    uint32_t slab_busy;             /* bit j: pool page j is being given back,
                                       no slot on it is handed out */
    bool thp;                       /* mapped with the thp option on: the kernel may
                                       back it with 2 MiB pages (chunk.c, purge) */
    uint64_t resident[TM_CHUNK_PAGES / 64]; /* bit p: free page p may be resident
                                       (chunk.c) */
    uint64_t slab_used[TM_CHUNK_PAGES / 64]; /* bit s: slot s holds a slab */
    _Alignas(64) tm_slab_t slabs[TM_CHUNK_PAGES]; /* the slab pool */
} tm_chunk_t;

/* ---- Huge blocks ---------------------------------------------------------- */
typedef struct tm_huge {
    uintptr_t base;     /* mapping start, chunk-aligned, == user pointer */
    size_t size;        /* requested size rounded up to pages (usable) */
    size_t mapped;      /* bytes mapped */
    struct tm_huge *next, *prev; /* all huge blocks, or the free cache */
    uint64_t freed_ns;  /* when it entered the cache */
    uintptr_t origin;   /* start of the kernel mapping (VMA) it is part of:
                           descriptors cut from one mapping share it, and
                           only those merge again (huge_free) */
    bool moving;        /* a realloc is growing it outside huge_mu: its
                           pagemap entry may be at the new spot already */
} tm_huge_t;

/* ---- Arenas ---------------------------------------------------------------- */
typedef struct tm_arena_bin {
    tm_slab_t *partial;     /* slabs with free blocks, most recent first */
    size_t nslabs;          /* slabs of this class */
    uint64_t nmalloc, nfree;/* blocks handed to / returned from caches */
    size_t cur_blocks;      /* blocks out of the arena (caches + program) */
} tm_arena_bin_t;

#define TM_RUN_LISTS (TM_CHUNK_PAGES + 1)
#define TM_STASH_SLOTS 64 /* an arena's last freed large runs, 4 MiB at most (chunk.c) */
_Static_assert((TM_RUN_LISTS + 63) / 64 <= 64, "runs_words has a bit per word of runs_nonempty");

typedef struct tm_arena {
    pthread_mutex_t lock;       /* arena_lock/arena_unlock (internal.h) */
    bool bare;                  /* held without the mutex: one thread */
    bool fork_held;             /* locked by fork_prepare (an arena made during
                                   the fork is not), for fork_parent */
    unsigned index;
    unsigned nthreads;          /* threads bound to it (registry lock) */
    tm_arena_bin_t bins[TM_NCLASSES + 1];
    tm_chunk_t *chunks;         /* every chunk of the arena */
    size_t nchunks;
    unsigned nempty;            /* chunks with every page free (under the lock;
                                   read without it by chunk_adopt, a hint) */
    size_t active_pages;        /* pages of its chunks in no free run */
    /* free runs by exact length; bit n of runs_nonempty set if list n used,
     * bit w of runs_words set if word w of runs_nonempty is not zero */
    tm_page_t *runs[TM_RUN_LISTS];
    uint64_t runs_nonempty[(TM_RUN_LISTS + 63) / 64];
    uint64_t runs_words;
    size_t large_allocated;     /* bytes in large runs held */
    size_t purge_held;          /* of those, bytes of free runs a purge holds while
                                   it has dropped the lock (chunk.c, run_hold_locked):
                                   no block's, so the statistics take them off */
    size_t purge_held_resident; /* the bytes of those whose resident bits are set */
    uint64_t large_nmalloc, large_nfree;
    /* The large runs freed last, oldest first, kept as they are for the
     * next runs of their lengths (chunk.c, "the last freed runs"): each
     * one's head reads PAGE_LARGE with a zero fast[] entry; in no free-run
     * list, counted in active_pages but not in large_allocated. */
    struct tm_stashed {
        tm_chunk_t *c;
        uint32_t page, n;
    } stash[TM_STASH_SLOTS];
    unsigned nstash;
    uint32_t stash_pages;       /* their pages together (other arenas read
                                   it and stash_epoch without the lock, as
                                   hints: chunk.c, purge_victim_next) */
    uint64_t stash_epoch;       /* purge_epoch() when a run was last kept */
    unsigned dropped;           /* sections outside _heapmin that dropped the
                                   lock while they hold runs (growth purge,
                                   decay) or map a chunk: fork's prepare
                                   handler waits for them (arena.c) */
    pthread_cond_t undropped;   /* broadcast when dropped falls to 0, and when
                                   a slab pool release ends (chunk.c) */
    unsigned settlers;          /* threads waiting for dropped to fall to 0
                                   (arena_settle_locked): a loop of such
                                   sections starts no new one meanwhile */
} tm_arena_t;

/* ---- Thread caches ---------------------------------------------------------- */
/* A stack of free blocks: base[0 .. top - base) hold blocks; full when
 * top == limit. All three are NULL in bin 0 and in the sentinel, so both
 * fast paths miss there without a test of their own. */
typedef struct tm_tc_bin {
    void **top;
    void **base;
    void **limit;
    /* slow paths only, under tc->mu (the bin stays 32 bytes: its address
     * is cls << 5) */
    uint16_t fill;       /* blocks the next refill asks for: starts small,
                            doubles per refill up to half the capacity */
    uint16_t gc_count;   /* blocks held at the last garbage-collection visit */
    uint8_t missed;      /* a refill since the bin last overflowed */
    uint8_t taken;       /* blocks refills brought since the bin last
                            overflowed, while at its start size (to 255) */
    uint8_t remote;      /* it has held another arena's blocks (an overflow
                            sent some home, or one was freed into it
                            empty) since it was last emptied by a drain or
                            by the GC: its refills may borrow
                            (arena_refill_remote) */
    uint8_t pad;
} tm_tc_bin_t;

struct tm_tcache;

/* A thread's allocator state in TLS (initial-exec, one fs-relative block).
 * tc is the cache the fast path uses: the thread's own, or the sentinel
 * while a trimmer drains it (world.c) or before the cache exists. busy is
 * 1 while the fast path touches tc's bins. */
typedef struct tm_tls {
    struct tm_tcache *tc;
    volatile int busy;
    int state;                  /* TLS_NONE, TLS_BOOTING, TLS_LIVE, TLS_DEAD, TLS_EXITING */
    struct tm_tcache *own;      /* the thread's cache, whatever tc says */
    unsigned arena;             /* own's arena index, once the cache exists */
    unsigned recheck;           /* TLS_EXITING: calls left before the next look */
    int forking;                /* 1 from the end of fork_prepare to the start of
                                   fork_parent/fork_child: this thread holds every
                                   allocator lock (init.c) */
    int fork_cancel;            /* the cancelability fork_prepare found (init.c) */
} tm_tls_t;

typedef struct tm_tcache {
    tm_tc_bin_t bins[TM_NCLASSES + 1];
    /* slow-path state */
    pthread_mutex_t mu;         /* held by owner slow path or by a trimmer */
    /* world stop (world.c): the owner's TLS, and a drain the trimmer asked
     * for (set before it points owner_tls->tc at the sentinel). */
    tm_tls_t *owner_tls;
    volatile int drain_pending;
    tm_arena_t *arena;
    struct tm_tcache *next, *prev; /* registry of live caches */
    int state;
    void *slots_mem;
    size_t slots_size;
    bool slots_grown;           /* a bin moved to its grown slots since they
                                   were last given back (under mu) */
    bool slots_first;           /* a bin moved to the slots for its capacity
                                   since they were last given back (under mu) */
    bool slots_releasing;       /* a trimmer is giving back the grown-bin
                                   slots' pages: no bin may grow (tcache.c) */
    bool fork_held;             /* mu locked by fork_prepare (a cache made
                                   during the fork is not), for fork_parent */
    bool unbound;               /* the process's initial thread: not counted
                                   in arena_bound (arena_choose_locked) */
    /* garbage collection of idle bins (tcache.c), under mu */
    unsigned gc_tick;           /* slow-path calls since the last visit */
    unsigned gc_next;           /* class the next visit looks at */
    unsigned gc_xfer_arena;     /* the other arena whose transfer cache it
                                   looked at last */
    /* large runs of other arenas this thread freed, waiting to go home
     * together (tcache.c), oldest first:
     * rl[0..rl_n) and their lengths in pages, under mu, except that the
     * owner appends and takes back its newest inside the world-stop
     * handshake, as for its bins; readers under mu that do not stop the
     * owner load rl_n, then the lengths below it, atomically */
    uint32_t rl_n, rl_gc_n;
    void *rl[TM_RL_MAX];
    uint16_t rl_pages[TM_RL_MAX];
    /* the background thread's view of the cache (world.c), under mu: a
     * digest of its bins' tops, since when it has not changed, and when a
     * scan last looked (0: never, since the cache was made or reused) */
    uint64_t idle_sig, idle_since, idle_seen;
    bool drained_unused;        /* a trimmer emptied it and its owner has not
                                   made a slow-path call since: not counted in
                                   the shares of tcache_total_mb (tcache.c) */
} tm_tcache_t;

enum { TC_STATE_SENTINEL = 0, TC_STATE_LIVE, TC_STATE_FREE };

#endif /* TM_TYPES_H */
