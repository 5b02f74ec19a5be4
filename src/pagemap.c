/*
 * pagemap.c -- address -> descriptor, for free() and every lookup by pointer.
 *
 * A two-level radix tree over the user address space at chunk (4 MiB)
 * granularity: 2^12 root slots (2^13 where user space has 48 bits) of 2^13
 * leaf entries. Every root slot starts out pointing at one shared all-zero
 * leaf (it stores the leaf's distance from that zero leaf, so an all-zero
 * .bss root needs no initialisation), so a lookup never tests for a missing
 * level and works before initialisation (free(NULL) from another library's
 * constructor). Leaves are mapped on demand and never freed.
 * Readers take no lock; writers hold pm_lock and publish with release
 * stores. An arena chunk's entry is its chunk_t* | 1; a huge block's entry
 * (on its first chunk only) is its huge_t*.
 *
 * The first leaf made is also the hot leaf (pm_hot_leaf, internal.h), which
 * free() reads directly: the root's load and the leaf's depend on each
 * other, and dropping one from free's chain of dependent loads made the
 * tight malloc/free loop of bench/throughput 10% faster with 1 thread (185
 * -> 203 Mops/s) and 7% with 2 (230 -> 247), interleaved medians of 9.
 * Since 2026-12-04 the hot leaf is a .bss array rather than a mapped one:
 * its address is a constant, so free() no longer loads a leaf pointer and
 * a count (with hidden symbols, internal.h: free went from 51 to 48
 * instructions, callgrind, bench/callgrind.sh). Its untouched pages cost
 * nothing, as the mapped leaf's did not either. A
 * flat table (one entry per 4 MiB of the 47-bit space, 256 MiB of address
 * space reserved) was faster still (210, 250) but fails where address
 * space is limited (ulimit -v) and is charged in full under strict
 * overcommit. Blocks in other leaves take free's cold path (free_cold).
 *
 * Pages a small process touches here (where a read of untouched memory
 * costs a page too, as on kernels that do not map the shared zero page):
 * root[0] and the zero leaf's first entry for free(NULL), the root's last
 * entries for its own blocks. The zero leaf follows the root (internal.h),
 * so the last two share a page, and the linker script (cmake/layout.cmake)
 * puts root[0] on a page of other start-up data.
 */
#include "internal.h"

pm_map_t pm_map;
uintptr_t pm_hot_first = PM_HOT_NONE; /* .data: not zero */
pm_leaf_t pm_hot_leaf;
static pthread_mutex_t pm_lock = PTHREAD_MUTEX_INITIALIZER;

int pagemap_set(uintptr_t chunk_addr, uintptr_t entry) {
    uintptr_t i1 = chunk_addr >> PM_ROOT_SHIFT;
    if (i1 >= PM_ROOT_SIZE) return -1;
    tm_lock(&pm_lock);
    pm_leaf_t *leaf = (pm_leaf_t *)((char *)&pm_map.zero + pm_map.root[i1]);
    if (leaf == &pm_map.zero) {
        /* Map outside the lock would be nicer; leaves are rare (one per
         * 32 GiB of address space), so this one syscall is accepted. */
        bool hot = pm_hot_first == PM_HOT_NONE; /* the first leaf is the hot one, for good */
        leaf = hot ? &pm_hot_leaf : meta_alloc(sizeof(pm_leaf_t));
        if (!leaf) {
            tm_unlock(&pm_lock);
            return -1;
        }
        __atomic_store_n(&pm_map.root[i1], (intptr_t)((char *)leaf - (char *)&pm_map.zero),
                         __ATOMIC_RELEASE);
        if (hot) __atomic_store_n(&pm_hot_first, i1 << PM_LEAF_BITS, __ATOMIC_RELEASE);
    }
    __atomic_store_n(&leaf->e[(chunk_addr >> TM_CHUNK_SHIFT) & (PM_LEAF_SIZE - 1)], entry,
                     __ATOMIC_RELEASE);
    tm_unlock(&pm_lock);
    return 0;
}

void pagemap_clear(uintptr_t chunk_addr) {
    uintptr_t i1 = chunk_addr >> PM_ROOT_SHIFT;
    if (i1 >= PM_ROOT_SIZE) return;
    tm_lock(&pm_lock);
    pm_leaf_t *leaf = (pm_leaf_t *)((char *)&pm_map.zero + pm_map.root[i1]);
    if (leaf != &pm_map.zero)
        __atomic_store_n(&leaf->e[(chunk_addr >> TM_CHUNK_SHIFT) & (PM_LEAF_SIZE - 1)], 0,
                         __ATOMIC_RELEASE);
    tm_unlock(&pm_lock);
}

void pagemap_fork_prepare(void);
void pagemap_fork_parent(void);
void pagemap_fork_child(void);
void pagemap_fork_prepare(void) { tm_lock(&pm_lock); }
void pagemap_fork_parent(void) { tm_unlock(&pm_lock); }
void pagemap_fork_child(void) { pthread_mutex_init(&pm_lock, NULL); }
