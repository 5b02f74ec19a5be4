/*
 * size_class.c -- the small size classes and the slab geometry of each.
 *
 * Spacing. Classes are 16 B apart up to 128 B (8 classes), then four per
 * doubling: for 2^k < size <= 2^(k+1) the classes are 2^k + j * 2^(k-2),
 * j = 1..4, up to 32 KiB (32 more classes). A request is rounded up to its
 * class, so the waste is below one spacing step: at most 15 B up to 128 B,
 * and below 2^(k-2) / (2^k + 1) < 25% above (20% once the next class is
 * reached, on average about 10%). Every class is a multiple of 16, so every
 * block is 16-byte aligned; class sizes that are multiples of a power of
 * two A place every block A-aligned (slabs start on a page).
 *
 * Larger sizes are large blocks, runs of whole pages (arena.c), and so is
 * a block that realloc grows past 10 KiB (TM_GROW_RUN_MIN, alloc.c), which
 * its next growth can then extend in place. History: up to
 * 2026-12-04 the classes went on to 32 KiB (40 classes); blocks of 8-32
 * KiB in slabs of their own class could not be reused for another size,
 * and a program whose buffers grow through those sizes kept a partly used
 * slab in each: the realloc benchmark's peak RSS fell from 7.05 to 6.45
 * MiB (1 thread) and from 12.9 to 11.2 MiB (2 threads) with runs instead,
 * throughput unchanged (bench/throughput, interleaved medians of 3).
 * The cost shows in a program that holds many blocks just above 8 KiB:
 * sqlite3 with 8 KiB database pages asks for 8464 bytes, a 3-page run,
 * and peaked at 227.7 MB for 2 M rows in memory (glibc 154.5, jemalloc
 * 190, tcmalloc 174; an outside tester). Classes on to 16 KiB (10, 12, 14,
 * 16 KiB; caches of 4 blocks, grown to 64 KiB at most) took it to 191.4
 * MB and the size sweep up 3-6%, and realloc's peak RSS up 3.5-5% (1
 * thread) and 7-10% (2 threads), interleaved medians of 5 (2026-12-05):
 * not kept, the benchmark's realloc row already being above target.
 * The first of them, 10 KiB (slabs of 2 blocks in 5 pages), was added on
 * 2026-12-07: a page of 8 KiB and its header, sqlite3's blocks with
 * PRAGMA page_size 8192, takes 10 KiB instead of a 3-page run. A Python
 * program building an in-memory sqlite3 database (500 000 rows) peaked at
 * 110.7 -> 98.4 MB (glibc 84, mimalloc 94, jemalloc 103, tcmalloc 109);
 * bench/throughput realloc peak RSS +0.1 MiB (1 and 2 threads, 6.52 ->
 * 6.62, 10.85 -> 10.98 MiB, interleaved medians of 5), size sweep the
 * same. A 9 KiB class (4 blocks in 9 pages) gave sqlite3 the same peak
 * and cost realloc 0.15-0.25 MiB.
 *
 * The classes of 12-32 KiB came back on 2026-12-08, with caches of 4
 * blocks (grown to 128 KiB at most) and the realloc rule above, which
 * keeps growing buffers out of them; their slabs follow the rule below
 * (one block, two for 14 KiB). A run is carved wherever the free-run
 * index has room, so a program that keeps replacing blocks of those sizes
 * writes their first and last bytes on new pages each time, until every
 * page of its heap is resident; a block that a cache hands out again lies
 * where a block of its size was written before. alloc-test (an outside
 * benchmark: 20 000 slots, 1.5 M replacements by blocks of log-uniform
 * 16 B - 64 KiB, first and last byte written; a copy written here,
 * /usr/bin/time, 3 alternating runs): peak RSS 133 -> 107 MB, 0.61-0.66 ->
 * 0.50-0.53 s (mimalloc 79 MB, tcmalloc 88, glibc 123); a 16 KiB
 * malloc+free pair 559 -> 88 instructions (callgrind). Slabs of 4 blocks
 * took alloc-test to 95 MB (and classes on to 64 KiB to 82), but an
 * outside tester's programs paid for it: 14 and 20 KiB blocks with 3 in 4
 * freed at random, then other sizes allocated, peaked 28-33% higher (a
 * slab with one live block kept three free slots no other size could
 * use; 217 and 208 MB now, against 237 and 208 before the classes), and
 * 2000 vectors grown by malloc + copy + free 13-17% higher (+5-7% now:
 * 132 against 123 MB doubling, 118 against 112 growing by half). Caches
 * of 1 or 2 blocks changed none of these. With every realloc growth
 * through those sizes landing in a class, the realloc benchmark's peak RSS was
 * 7.2-8.8 MiB (1 thread, against 6.4-6.6); with the realloc rule, 16
 * cells of bench/throughput unchanged beyond the noise, throughput and
 * peak RSS (interleaved medians of 5).
 *
 * Slabs. A class's slab is the smallest run of pages (1..32) that holds at
 * least min(8, 8 KiB / size) blocks (at least one) and wastes at most 1/16
 * of the run at its tail: 8 blocks up to 1 KiB, then fewer, down to one
 * 8 KiB block in 2 pages (10 KiB: two in 5 pages; 12-32 KiB: one, but
 * two 14 KiB blocks in 7 pages). Where that leaves a tail and one page
 * more holds whole blocks with none left over, the slab takes that page (768 B: 3
 * pages, 1536 B: 3, 5120 B: 5 pages of 4 blocks, not 4 of 3). Measured
 * (an outside tester, 2026-12-05): sqlite3 with its default 4 KiB pages
 * asks for 4368-byte blocks, one per cached page; inserting and indexing
 * 2 M rows in memory peaked at 204.7 MB, 192.0 MB with the 5-page slab
 * (glibc 163.8, jemalloc, whose slabs never leave a tail, about 190);
 * bench/throughput's peak RSS unchanged within 0.05-0.2 MiB (interleaved
 * medians of 5). Every tail at most 1/32 (eight more classes in larger
 * slabs) took xmalloc's and realloc's peak RSS up 4-5%.
 *
 * Until 2026-12-04 it was 8 blocks for every class (an 8 KiB slab was 16
 * pages): a block the thread cache held kept up to
 * 64 KiB of slab resident, and a program that goes through the sizes of
 * 1-8 KiB kept a partly used slab of each. Measured, bench/throughput
 * interleaved medians of 7-11 runs: sizes T=2 peak RSS 10.1 -> 8.8 MiB
 * (glibc 8.9-9.9), 4.6% fewer operations per second (not profiled; more
 * slabs are made and destroyed per block; still 1.2x the best peer);
 * realloc T=2 11.4 -> 11.1 MiB, 1% slower; sizes and realloc T=1
 * unchanged within the noise.
 *
 * Thread cache. The capacity of a class's stack shrinks with the block size,
 * so a full cache holds a bounded number of bytes (at most about 2.2 MiB of
 * blocks over all classes at the default scale, see tcache_cap_for()).
 *
 * The whole table is computed by size_class_init() from these rules: this
 * file is the one place they live.
 */
#include "internal.h"

tm_class_t tm_classes[TM_NCLASSES + 1];
tm_class_fast_t tm_class_fast;
uint16_t tm_bin_tiny[(TM_TINY_MAX >> 4) + 1];

static uint32_t class_size_rule(unsigned cls) {
    if (cls <= 8) return 16u * cls;
    unsigned g = (cls - 9) / 4, j = (cls - 9) % 4 + 1; /* group g: k = 7 + g */
    unsigned k = 7 + g;
    return (1u << k) + j * (1u << (k - 2));
}

static uint32_t slab_pages_rule(uint32_t size) {
    uint32_t min_blocks = 8192 / size;
    if (min_blocks > 8) min_blocks = 8;
    if (min_blocks < 1) min_blocks = 1;
    for (uint32_t pages = 1; pages <= 32; pages++) {
        uint32_t bytes = pages * (uint32_t)TM_PAGE;
        uint32_t nb = bytes / size;
        if (nb > TM_SLAB_MAX_BLOCKS) nb = TM_SLAB_MAX_BLOCKS;
        if (nb < min_blocks) continue;
        if ((bytes - nb * size) * 16 > bytes) continue;
        /* a tail left over, where one page more holds whole blocks only */
        uint32_t more = bytes + (uint32_t)TM_PAGE;
        if (nb * size != bytes && more % size == 0 && more / size <= TM_SLAB_MAX_BLOCKS) return pages + 1;
        return pages;
    }
    return 32;
}

static uint32_t tcache_cap_for(uint32_t size) {
    if (size <= 256) return 128;
    if (size <= 1024) return 64;
    if (size <= 4096) return 32;
    if (size <= TM_GROW_RUN_MIN) return 16;
    return 4;
}

void size_class_init(void) {
    for (unsigned c = 1; c <= TM_NCLASSES; c++) {
        tm_class_t *k = &tm_classes[c];
        k->size = class_size_rule(c);
        k->slab_pages = slab_pages_rule(k->size);
        uint32_t nb = k->slab_pages * (uint32_t)TM_PAGE / k->size;
        k->nblocks = nb > TM_SLAB_MAX_BLOCKS ? TM_SLAB_MAX_BLOCKS : nb;
        k->tc_cap = tcache_cap_for(k->size);
        k->magic = ((1ull << 40) + k->size - 1) / k->size;
        /* floor(2^64 / size) + 1 (for a power of two, UINT64_MAX / size
         * is one short of 2^64 / size), so that e is never 0 */
        uint64_t div = UINT64_MAX / k->size + 1;
        if (!(k->size & (k->size - 1))) div++;
        tm_class_fast.div[c] = div;
        tm_class_fast.lim[c] = (uint64_t)k->nblocks * (div * k->size);
    }
    /* Class 0 ("not a small block") fails the free path's block check but
     * at offset 0 of a chunk (a large block there), where free() then reads
     * the cookie word inside that block; the bin of class 0 is always full,
     * so free() goes on to the slow path. */
    tm_classes[0] = (tm_class_t){0};
    tm_class_fast.div[0] = tm_class_fast.lim[0] = 1;
    unsigned c = 1;
    for (size_t i = 0; i <= (TM_TINY_MAX >> 4); i++) {
        size_t sz = i << 4;
        while (tm_classes[c].size < sz) c++;
        tm_bin_tiny[i] = (uint16_t)(c * sizeof(tm_tc_bin_t));
    }
}
