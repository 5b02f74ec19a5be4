/*
 * meta.c -- memory for the allocator's own descriptors (chunk_t, slab_t,
 * huge_t, tcaches, pagemap leaves), kept in mappings of its own so that no
 * user overflow can run into them.
 *
 * A bump allocator over 2 MiB regions (the first one 256 KiB) with one
 * free list per rounded size (64-byte steps up to 64 KiB; larger requests
 * get their own mapping). The lock is a leaf (highest rank): nothing is
 * locked while holding it, and the region map happens under it --
 * metadata regions are rare.
 */
#include "internal.h"

#define META_REGION ((size_t)2 << 20)
#define META_REGION_FIRST ((size_t)256 << 10)
#define META_REGION_MIN ((size_t)64 << 10) /* the largest request kept in a region */
#define META_STEP 64
#define META_LISTS (65536 / META_STEP + 1)

typedef struct meta_free { struct meta_free *next; } meta_free_t;

static pthread_mutex_t meta_lock = PTHREAD_MUTEX_INITIALIZER;
static char *meta_cur, *meta_end;
static meta_free_t *meta_lists[META_LISTS];
static bool meta_freed; /* meta_lists[] is read only once something was freed (8 KiB a small process need not touch) */
static size_t meta_total;

size_t meta_mapped(void) { return __atomic_load_n(&meta_total, __ATOMIC_RELAXED); }

/* A mapping of sz bytes for metadata, counted in meta_total (also added
 * without the lock), without transparent huge pages: a region is touched a
 * few KiB at a time, and a huge page would make 2 MiB of it resident; a
 * mapping of its own could get one once merged with its neighbours (os.c). */
static void *meta_map(size_t sz) {
    void *p = os_map(sz);
    if (p) {
        os_huge_pages(p, sz, false);
        __atomic_add_fetch(&meta_total, sz, __ATOMIC_RELAXED);
    }
    return p; /* fresh pages are zero */
}

/* Sizes round up to META_STEP, and a zero-byte request takes one step: a
 * cache's slot array has no slots when caching is off, and a request that
 * left the bump pointer where it was shared its memory with the next
 * descriptor, whose first word meta_free then overwrote with its link
 * (an arena's lock, found by a tester; tests/unit/meta.c). */
static size_t meta_round(size_t size) {
    return size ? (size + META_STEP - 1) & ~(size_t)(META_STEP - 1) : META_STEP;
}

void *meta_alloc(size_t size) {
    size = meta_round(size);
    if (size > 65536) return meta_map((size + TM_PAGE_MASK) & ~TM_PAGE_MASK);
    tm_lock(&meta_lock);
    meta_free_t *f = meta_freed ? meta_lists[size / META_STEP] : NULL;
    if (f) {
        meta_lists[size / META_STEP] = f->next;
        tm_unlock(&meta_lock);
        memset(f, 0, size);
        return f;
    }
    if ((size_t)(meta_end - meta_cur) < size) {
        /* The first region is small: a small process needs 100-200 KiB
         * of metadata, and under a tight address-space limit (RLIMIT_AS)
         * the 2 MiB of a full region could leave no room for the first
         * arena chunk (a tester's C++ program under `ulimit -v 12000` got
         * no memory at all; glibc ran it). A smaller one still, where
         * even that is refused. */
        size_t len = meta_cur ? META_REGION : META_REGION_FIRST; /* none yet: the first */
        char *r = meta_map(len);
        if (!r) r = meta_map(len = META_REGION_MIN);
        if (!r) {
            tm_unlock(&meta_lock);
            return NULL;
        }
        meta_cur = r;
        meta_end = r + len;
    }
    void *p = meta_cur;
    meta_cur += size;
    tm_unlock(&meta_lock);
    return p;
}

void meta_free(void *p, size_t size) {
    if (!p) return;
    size = meta_round(size);
    if (size > 65536) {
        size_t sz = (size + TM_PAGE_MASK) & ~TM_PAGE_MASK;
        os_unmap(p, sz);
        __atomic_sub_fetch(&meta_total, sz, __ATOMIC_RELAXED);
        return;
    }
    if (size >= 4 * TM_PAGE) {
        /* Large descriptors (chunks, caches) go back to the kernel page by
         * page, past the first page that holds the free-list link. */
        os_purge_inside((char *)p + TM_PAGE, (char *)p + size);
    }
    tm_lock(&meta_lock);
    meta_free_t *f = p;
    meta_freed = true;
    f->next = meta_lists[size / META_STEP];
    meta_lists[size / META_STEP] = f;
    tm_unlock(&meta_lock);
}

void meta_fork_prepare(void) { tm_lock(&meta_lock); }
void meta_fork_parent(void) { tm_unlock(&meta_lock); }
void meta_fork_child(void) { pthread_mutex_init(&meta_lock, NULL); }
