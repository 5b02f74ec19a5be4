/*
 * trimalloc.h -- public interface of trimalloc, a thread-caching, multi-arena
 * malloc for Linux whose _heapmin() returns memory to the kernel, including
 * the memory idle in other threads' caches.
 *
 * Builds of the same sources:
 *   - the drop-in build (libtrimalloc.so / libtrimalloc.a) exports the
 *     standard names: malloc, free, ..., so LD_PRELOAD or linking it first
 *     replaces the system allocator; libtrimalloc_jemalloc.so is the same
 *     plus jemalloc's mallctl, malloc_stats_print and *allocx calls
 *     (compiled with -DTRIMALLOC_JEMALLOC_CTL), to preload into programs
 *     linked with jemalloc only (see mallctl below);
 *   - the prefixed build (compile users with -DTRIMALLOC_PREFIX) exports the
 *     same functions as tm_malloc, tm_free, ..., tm__heapmin, and does not
 *     interpose on anything. Sanitizer builds and side-by-side tests use it.
 * TM_API(name) names a function in whichever build the includer targets.
 */
#ifndef TRIMALLOC_H
#define TRIMALLOC_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TRIMALLOC_VERSION_MAJOR 0
#define TRIMALLOC_VERSION_MINOR 1
#define TRIMALLOC_VERSION_PATCH 0

#ifdef TRIMALLOC_PREFIX
#define TM_API(name) tm_##name
#else
#define TM_API(name) name
#endif

/* ---- The standard allocation API --------------------------------------
 * In the drop-in build these are the libc names, declared by <stdlib.h> and
 * <malloc.h>; only the prefixed build declares them here, plus C23's
 * free_sized/free_aligned_sized, which older libcs do not declare. */
#include <stdlib.h>
#include <malloc.h>
#ifdef TRIMALLOC_PREFIX
void *TM_API(malloc)(size_t size);
void TM_API(free)(void *ptr);
void *TM_API(calloc)(size_t nmemb, size_t size);
void *TM_API(realloc)(void *ptr, size_t size);
void *TM_API(reallocarray)(void *ptr, size_t nmemb, size_t size);
void *TM_API(aligned_alloc)(size_t alignment, size_t size);
int TM_API(posix_memalign)(void **memptr, size_t alignment, size_t size);
void *TM_API(memalign)(size_t alignment, size_t size);
void *TM_API(valloc)(size_t size);
void *TM_API(pvalloc)(size_t size);
size_t TM_API(malloc_usable_size)(void *ptr);
int TM_API(malloc_trim)(size_t pad);
void TM_API(malloc_stats)(void);
int TM_API(malloc_info)(int options, FILE *stream);
struct mallinfo2 TM_API(mallinfo2)(void);
#endif
void TM_API(free_sized)(void *ptr, size_t size);
void TM_API(free_aligned_sized)(void *ptr, size_t alignment, size_t size);

/* ---- The CRT heap family (Microsoft's names, constants and struct) ----- */
#define _HEAPEMPTY (-1)
#define _HEAPOK (-2)
#define _HEAPBADBEGIN (-3)
#define _HEAPBADNODE (-4)
#define _HEAPEND (-5)
#define _HEAPBADPTR (-6)

#define _FREEENTRY 0
#define _USEDENTRY 1

#ifndef _HEAPINFO_DEFINED
#define _HEAPINFO_DEFINED
typedef struct _heapinfo {
    int *_pentry;  /* block address; NULL to start a walk */
    size_t _size;  /* usable size of the block in bytes */
    int _useflag;  /* _USEDENTRY or _FREEENTRY */
} _HEAPINFO;
#endif

/* Return every byte the allocator can give back: flush the caches of all
 * threads (running, blocked or exited), coalesce free space, unmap empty
 * chunks and madvise free pages away. Returns 0 on success; -1 with errno
 * ENOSYS where the OS cannot release memory. errno is unchanged on success. */
int TM_API(_heapmin)(void);
int TM_API(_heapchk)(void);
int TM_API(_heapwalk)(_HEAPINFO *entry);
int TM_API(_heapset)(unsigned int fill);
int TM_API(_heapadd)(void *memblock, size_t size);
size_t TM_API(_msize)(void *memblock);
void *TM_API(_expand)(void *memblock, size_t size);
void *TM_API(_recalloc)(void *memblock, size_t num, size_t size);
void *TM_API(_aligned_malloc)(size_t size, size_t alignment);
void *TM_API(_aligned_offset_malloc)(size_t size, size_t alignment, size_t offset);
void *TM_API(_aligned_realloc)(void *memblock, size_t size, size_t alignment);
void *TM_API(_aligned_offset_realloc)(void *memblock, size_t size, size_t alignment,
                                      size_t offset);
void *TM_API(_aligned_recalloc)(void *memblock, size_t num, size_t size, size_t alignment);
void *TM_API(_aligned_offset_recalloc)(void *memblock, size_t num, size_t size,
                                       size_t alignment, size_t offset);
size_t TM_API(_aligned_msize)(void *memblock, size_t alignment, size_t offset);
void TM_API(_aligned_free)(void *memblock);

/* ---- trimalloc's own interface ------------------------------------------ */

/* Global statistics, summed over arenas and threads when read. */
typedef struct trimalloc_stats {
    size_t allocated;      /* bytes in blocks the program holds (usable size) */
    size_t active;         /* bytes of slabs, large runs and huge blocks in use (a slab
                              counts whole: may exceed resident after _heapmin) */
    size_t resident;       /* bytes of mapped memory not released (upper bound) */
    size_t mapped;         /* bytes mapped from the kernel (chunks + huge + meta) */
    size_t released;       /* bytes returned to the kernel since start */
    size_t metadata;       /* bytes mapped for allocator metadata */
    size_t tcache_bytes;   /* bytes sitting free in thread caches */
    size_t huge_allocated; /* bytes in huge blocks */
    uint64_t heapmin_calls;
    uint64_t heapmin_bytes_released;
    uint64_t heapmin_last_pause_ns; /* time other threads were held, last call */
    uint64_t heapmin_max_pause_ns;
    unsigned narenas;
    unsigned nthreads; /* threads with a live cache */
} trimalloc_stats_t;

/* Fill *out; returns 0, or -1 with errno EINVAL if out is NULL. Never
 * allocates. */
int TM_API(trimalloc_stats_get)(trimalloc_stats_t *out);

/* One arena (index < narenas). Bytes returned to the kernel are counted
 * process-wide only (trimalloc_stats_t.released). */
typedef struct trimalloc_arena_stats {
    unsigned index;
    unsigned nthreads;     /* threads bound to this arena */
    size_t allocated;      /* bytes of blocks out of the arena (held by the
                              program or sitting in thread caches) */
    size_t active;         /* bytes of slabs and large runs */
    size_t resident;       /* mapped minus free runs known released */
    size_t mapped;         /* bytes of chunks */
    size_t dirty;          /* free bytes not yet released to the kernel */
    size_t nchunks;
    uint64_t large_nmalloc, large_nfree;
} trimalloc_arena_stats_t;

/* One small size class (1 .. trimalloc_nclasses()), summed over arenas. */
typedef struct trimalloc_class_stats {
    size_t size;           /* block size in bytes */
    size_t nslabs;         /* slabs of this class */
    size_t blocks_out;     /* blocks out of the arenas (program or caches) */
    uint64_t nmalloc;      /* blocks handed from arenas to thread caches */
    uint64_t nfree;        /* blocks returned from thread caches */
} trimalloc_class_stats_t;

/* Return 0, or -1 with errno EINVAL for an index out of range or a NULL
 * out. */
int TM_API(trimalloc_stats_arena)(unsigned index, trimalloc_arena_stats_t *out);
int TM_API(trimalloc_stats_class)(unsigned cls, trimalloc_class_stats_t *out);
unsigned TM_API(trimalloc_nclasses)(void);
/* Write a human-readable report (json != 0: JSON) to fd: the totals, then
 * one line (object) per arena and per size class in use. Never allocates. */
void TM_API(trimalloc_stats_print)(int fd, int json);

/* Runtime options, the same ones TRIMALLOC_CONF sets ("key:value,..."). Get
 * returns 0 and stores the value, or -1 with errno EINVAL for an unknown or
 * NULL name or a NULL value; set returns 0, or -1 with errno EINVAL for an
 * unknown or NULL name or a value out of range, or EBUSY for an option fixed
 * after start. */
int TM_API(trimalloc_option_get)(const char *name, long *value);
int TM_API(trimalloc_option_set)(const char *name, long value);
/* Write the options table (name, default, range, when settable, meaning) as
 * Markdown rows to fd; docs/options.md holds the same rows. */
void TM_API(trimalloc_options_markdown)(int fd);

/* jemalloc's control and report calls, for programs built against jemalloc
 * that a preload hands to trimalloc (redis-server on Debian is one). Only
 * build/libtrimalloc_jemalloc.so exports them (and the prefixed build, as
 * tm_mallctl and tm_malloc_stats_print), never libtrimalloc.so: a program
 * that looks for mallctl to learn whether jemalloc is loaded must not find
 * it in plain trimalloc. mallctl answers "epoch", "background_thread"
 * (bool), "arenas.narenas", "arena.<i>.purge" and "arena.<i>.decay" (both
 * run _heapmin), "thread.tcache.flush" and the totals "stats.allocated",
 * ".active", ".resident", ".mapped", ".metadata", ".retained" (size_t);
 * other names go to the next mallctl in the process (the program's own
 * jemalloc), else ENOENT. It returns 0 or an error number, as jemalloc
 * does; errno is unchanged. malloc_stats_print writes trimalloc_stats_print's
 * report in pieces to write_cb(cbopaque, piece), or to stderr when write_cb
 * is NULL; JSON if opts holds 'J'. docs/api.md has the details. A program
 * linked with -ltrimalloc_jemalloc that calls them with this header's
 * declarations defines TRIMALLOC_JEMALLOC_CTL first. */
#if defined(TRIMALLOC_PREFIX) || defined(TRIMALLOC_JEMALLOC_CTL)
int TM_API(mallctl)(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen);
/* The same names by number, as jemalloc's pair: mallctlnametomib looks a
 * name up into *miblenp numbers at mibp (fewer if *miblenp is smaller: a
 * partial MIB), mallctlbymib reads or writes by them. MIBs of names
 * answered elsewhere come from and go to the program's jemalloc. */
int TM_API(mallctlnametomib)(const char *name, size_t *mibp, size_t *miblenp);
int TM_API(mallctlbymib)(const size_t *mib, size_t miblen, void *oldp, size_t *oldlenp, void *newp,
                         size_t newlen);
void TM_API(malloc_stats_print)(void (*write_cb)(void *, const char *), void *cbopaque,
                                const char *opts);
/* jemalloc's non-standard allocation calls, in the same builds, so that a
 * program built against jemalloc can free what they return with free()
 * and the other way round. flags as jemalloc's: bits 0-5 log2 of the
 * alignment (0: none), 0x40 zeroed memory (in rallocx/xallocx: the bytes
 * past the old usable size); the tcache and arena bits are ignored. A size
 * of 0 is taken as 1. docs/api.md has the details. */
void *TM_API(mallocx)(size_t size, int flags);
void *TM_API(rallocx)(void *ptr, size_t size, int flags);
size_t TM_API(xallocx)(void *ptr, size_t size, size_t extra, int flags);
size_t TM_API(sallocx)(const void *ptr, int flags);
void TM_API(dallocx)(void *ptr, int flags);
void TM_API(sdallocx)(void *ptr, size_t size, int flags);
size_t TM_API(nallocx)(size_t size, int flags);
#endif

#ifdef __cplusplus
}
#endif
#endif /* TRIMALLOC_H */
