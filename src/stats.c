/*
 * stats.c -- statistics, computed when read from the arenas' own counters,
 * so the fast paths keep no counters at all. Reading locks each arena in
 * turn (never two at once); the figures are exact when the program is
 * quiescent and within a cache's worth otherwise. Printing never
 * allocates: reports are formatted into stack buffers and written to a fd.
 */
#include "internal.h"

#include <malloc.h>
#include <stdio.h>

tm_global_stats_t tm_gstats;

void stats_add_released(size_t bytes) {
    __atomic_add_fetch(&tm_gstats.released_bytes, bytes, __ATOMIC_RELAXED);
}

typedef struct arena_sums {
    size_t small_out;   /* bytes of small blocks out of the arenas */
    size_t large;       /* bytes of large runs held */
    size_t slab_bytes;  /* bytes of slab runs */
    size_t chunks;
    size_t clean_free;  /* free pages known released (bytes) */
    size_t slab_released; /* pages of live slabs known not resident: given back by _heapmin, or never used */
    size_t dirty_free;
    /* one arena's, for trimalloc_stats_arena: read in the same hold */
    unsigned nthreads;
    uint64_t large_nmalloc, large_nfree;
} arena_sums_t;

static void arena_sum(tm_arena_t *a, arena_sums_t *s) {
    arena_lock(a);
    for (unsigned c = 1; c <= TM_NCLASSES; c++) {
        s->small_out += a->bins[c].cur_blocks * tm_classes[c].size;
        s->slab_bytes += a->bins[c].nslabs * tm_classes[c].slab_pages * TM_PAGE;
    }
    /* runs a purge holds are free pages on their way back (until
     * 2026-12-06 counted as blocks: `allocated` read up to 200 MB high
     * while the background thread's decay ran; an outside tester) */
    size_t held = a->purge_held < a->large_allocated ? a->purge_held : a->large_allocated;
    size_t held_resident = a->purge_held_resident < held ? a->purge_held_resident : held;
    s->large += a->large_allocated - held;
    s->dirty_free += held_resident;
    s->clean_free += held - held_resident; /* fresh or given back: a hold's
                                              run being carved (an outside reviewer) */
    s->dirty_free += (size_t)a->stash_pages << TM_PAGE_SHIFT; /* kept freed runs (chunk.c) */
    s->chunks += a->nchunks;
    s->nthreads = __atomic_load_n(&a->nthreads, __ATOMIC_RELAXED); /* the registry lock's (tcache.c) */
    s->large_nmalloc = a->large_nmalloc;
    s->large_nfree = a->large_nfree;
    for (tm_chunk_t *c = a->chunks; c; c = c->next) {
        for (uint32_t p = 0; p < TM_CHUNK_PAGES;) {
            tm_page_t *h = &c->pages[p];
            uint32_t n = h->npages ? h->npages : 1;
            if (h->kind == PAGE_FREE) {
                /* a dirty run's pages that a growth purge gave back (it
                 * takes a run's end only) are released ones: until
                 * 2026-12-06 the whole run counted as dirty, and an arena
                 * left without a thread read 4 MiB dirty with the 1 MiB it
                 * keeps resident (an outside tester) */
                if (h->dirty) {
                    uint32_t r = chunk_resident_count(c, p, n);
                    s->dirty_free += (size_t)r << TM_PAGE_SHIFT;
                    s->clean_free += (size_t)(n - r) << TM_PAGE_SHIFT;
                } else if (h->zeroed) s->clean_free += (size_t)n << TM_PAGE_SHIFT;
                else s->dirty_free += (size_t)n << TM_PAGE_SHIFT;
            } else if (h->kind == PAGE_SLAB) {
                s->slab_released += (size_t)(n - chunk_resident_count(c, p, n)) << TM_PAGE_SHIFT;
            }
            p += n;
        }
    }
    arena_unlock(a);
}

/* The totals, and what mapped is made of (chunk_bytes, huge_bytes: either
 * may be NULL), from one reading. */
static void stats_fill(trimalloc_stats_t *out, size_t *chunk_bytes, size_t *huge_bytes) {
    tm_init();
    /* The arenas count the blocks the caches hold as handed out, so the
     * caches' bytes are taken off; blocks that move between the two
     * readings (another thread's flush, the background thread's garbage
     * collection) would be counted twice or not at all. So the caches are
     * read before and after the arenas, and the reading is taken again
     * if they changed (a few times at most: the numbers are a snapshot).
     * Found by a tester: `allocated` above what an idle program held, with
     * background_thread:1, dirty_decay_ms:0. */
    arena_sums_t s;
    size_t queued, cached = tcache_cached_bytes(&queued);
    for (int tries = 0;; tries++) {
        s = (arena_sums_t){0};
        for (unsigned i = 0; i < TM_MAX_ARENAS; i++) {
            tm_arena_t *a = __atomic_load_n(&tm_arenas[i], __ATOMIC_ACQUIRE);
            if (a) arena_sum(a, &s);
        }
        size_t queued2, cached2 = tcache_cached_bytes(&queued2);
        bool same = cached2 == cached && queued2 == queued;
        cached = cached2;
        queued = queued2;
        if (same || tries == 7) break;
    }
    memset(out, 0, sizeof *out);
    out->tcache_bytes = cached + queued;
    size_t huge_b;
    huge_totals(&out->huge_allocated, &huge_b);
    out->allocated = (s.small_out > cached ? s.small_out - cached : 0) +
                     (s.large > queued ? s.large - queued : 0) + out->huge_allocated;
    out->active = s.slab_bytes + s.large + out->huge_allocated;
    out->metadata = meta_mapped();
    out->mapped = s.chunks * TM_CHUNK + huge_b + out->metadata;
    if (chunk_bytes) *chunk_bytes = s.chunks * TM_CHUNK;
    if (huge_bytes) *huge_bytes = huge_b;
    out->resident = out->mapped - s.clean_free - s.slab_released;
    out->released = __atomic_load_n(&tm_gstats.released_bytes, __ATOMIC_RELAXED);
    /* written by _heapmin under the trim lock, read here without it */
    out->heapmin_calls = __atomic_load_n(&tm_gstats.heapmin_calls, __ATOMIC_RELAXED);
    out->heapmin_bytes_released = __atomic_load_n(&tm_gstats.heapmin_bytes, __ATOMIC_RELAXED);
    out->heapmin_last_pause_ns = __atomic_load_n(&tm_gstats.heapmin_last_pause_ns, __ATOMIC_ACQUIRE);
    out->heapmin_max_pause_ns = __atomic_load_n(&tm_gstats.heapmin_max_pause_ns, __ATOMIC_RELAXED);
    out->narenas = tm_narenas;
    out->nthreads = tcache_count();
}

TM_EXPORT int TM_API(trimalloc_stats_get)(trimalloc_stats_t *out) {
    if (!out) { /* as its two siblings below (a SIGSEGV until 2026-12-06) */
        errno = EINVAL;
        return -1;
    }
    stats_fill(out, NULL, NULL);
    return 0;
}

TM_EXPORT int TM_API(trimalloc_stats_arena)(unsigned index, trimalloc_arena_stats_t *out) {
    tm_init();
    if (!out || index >= tm_narenas) {
        errno = EINVAL;
        return -1;
    }
    memset(out, 0, sizeof *out);
    out->index = index;
    tm_arena_t *a = __atomic_load_n(&tm_arenas[index], __ATOMIC_ACQUIRE);
    if (!a) return 0; /* not created yet: no thread has used it */
    arena_sums_t s = {0};
    arena_sum(a, &s); /* one hold of its lock: one snapshot */
    out->nthreads = s.nthreads;
    out->large_nmalloc = s.large_nmalloc;
    out->large_nfree = s.large_nfree;
    out->allocated = s.small_out + s.large;
    out->active = s.slab_bytes + s.large;
    out->nchunks = s.chunks;
    out->mapped = s.chunks * TM_CHUNK;
    out->resident = out->mapped - s.clean_free - s.slab_released;
    out->dirty = s.dirty_free;
    return 0;
}

TM_EXPORT unsigned TM_API(trimalloc_nclasses)(void) { return TM_NCLASSES; }

TM_EXPORT int TM_API(trimalloc_stats_class)(unsigned cls, trimalloc_class_stats_t *out) {
    tm_init();
    if (!out || cls < 1 || cls > TM_NCLASSES) {
        errno = EINVAL;
        return -1;
    }
    memset(out, 0, sizeof *out);
    out->size = tm_classes[cls].size;
    for (unsigned i = 0; i < TM_MAX_ARENAS; i++) {
        tm_arena_t *a = __atomic_load_n(&tm_arenas[i], __ATOMIC_ACQUIRE);
        if (!a) continue;
        arena_lock(a);
        out->nslabs += a->bins[cls].nslabs;
        out->blocks_out += a->bins[cls].cur_blocks;
        out->nmalloc += a->bins[cls].nmalloc;
        out->nfree += a->bins[cls].nfree;
        arena_unlock(a);
    }
    return 0;
}

/* Where a report goes: a fd, or jemalloc's write callback, which gets each
 * piece as a string (malloc_stats_print, mallctl.c). The callback may
 * allocate: no lock is held while a piece goes out. */
static void put(const stats_sink_t *o, char *buf, int n, size_t size) {
    if (n < 0) return;
    if (n > (int)size - 1) n = (int)size - 1;
    if (o->cb) {
        buf[n] = '\0';
        o->cb(o->opaque, buf);
    } else {
        tm_write_fd(o->fd, buf, (size_t)n);
    }
}

TM_EXPORT void TM_API(trimalloc_stats_print)(int fd, int json) {
    stats_sink_t o = {fd, NULL, NULL};
    stats_print_to(&o, json);
}

void stats_print_to(const stats_sink_t *o, int json) {
    trimalloc_stats_t st;
    TM_API(trimalloc_stats_get)(&st);
    char buf[2048];
    int n;
    /* Both forms take the same arguments in the same order. */
    static const char json_fmt[] =
        "{\"allocated\":%zu,\"active\":%zu,\"resident\":%zu,\"mapped\":%zu,"
        "\"released\":%zu,\"metadata\":%zu,\"tcache_bytes\":%zu,"
        "\"huge_allocated\":%zu,\"heapmin_calls\":%llu,"
        "\"heapmin_bytes_released\":%llu,\"heapmin_last_pause_ns\":%llu,"
        "\"heapmin_max_pause_ns\":%llu,\"narenas\":%u,\"nthreads\":%u";
    static const char text_fmt[] =
        "trimalloc statistics\n"
        "  allocated        %zu bytes (blocks the program holds)\n"
        "  active           %zu bytes (slabs, runs and huge blocks in use)\n"
        "  resident         %zu bytes (upper bound)\n"
        "  mapped           %zu bytes\n"
        "  released         %zu bytes (returned to the kernel since start)\n"
        "  metadata         %zu bytes\n"
        "  thread caches    %zu bytes\n"
        "  huge blocks      %zu bytes\n"
        "  _heapmin calls   %llu, %llu bytes released, last pause %llu ns, max pause %llu ns\n"
        "  arenas %u, threads with a cache %u\n";
    n = tm_snprintf(buf, sizeof buf, json ? json_fmt : text_fmt, st.allocated, st.active,
                    st.resident, st.mapped, st.released, st.metadata, st.tcache_bytes,
                    st.huge_allocated, (unsigned long long)st.heapmin_calls,
                    (unsigned long long)st.heapmin_bytes_released,
                    (unsigned long long)st.heapmin_last_pause_ns,
                    (unsigned long long)st.heapmin_max_pause_ns, st.narenas, st.nthreads);
    put(o, buf, n, sizeof buf);
    /* per arena */
    if (json) put(o, buf, tm_snprintf(buf, sizeof buf, ",\"arenas\":["), sizeof buf);
    else put(o, buf, tm_snprintf(buf, sizeof buf, "  arena  threads  allocated     active   resident     "
                                                  "mapped      dirty  chunks\n"), sizeof buf);
    for (unsigned i = 0; i < st.narenas; i++) {
        trimalloc_arena_stats_t as;
        TM_API(trimalloc_stats_arena)(i, &as);
        if (json)
            n = tm_snprintf(buf, sizeof buf,
                            "%s{\"index\":%u,\"nthreads\":%u,\"allocated\":%zu,\"active\":%zu,"
                            "\"resident\":%zu,\"mapped\":%zu,\"dirty\":%zu,\"nchunks\":%zu,"
                            "\"large_nmalloc\":%llu,\"large_nfree\":%llu}",
                            i ? "," : "", as.index, as.nthreads, as.allocated, as.active,
                            as.resident, as.mapped, as.dirty, as.nchunks,
                            (unsigned long long)as.large_nmalloc,
                            (unsigned long long)as.large_nfree);
        else
            n = tm_snprintf(buf, sizeof buf, "  %5u  %7u  %9zu  %9zu  %9zu  %9zu  %9zu  %6zu\n",
                            as.index, as.nthreads, as.allocated, as.active, as.resident,
                            as.mapped, as.dirty, as.nchunks);
        put(o, buf, n, sizeof buf);
    }
    /* per size class in use */
    if (json) put(o, buf, tm_snprintf(buf, sizeof buf, "],\"classes\":["), sizeof buf);
    else put(o, buf, tm_snprintf(buf, sizeof buf, "  class   size   slabs  blocks_out      "
                                                  "nmalloc        nfree\n"), sizeof buf);
    bool first = true;
    for (unsigned c = 1; c <= TM_NCLASSES; c++) {
        trimalloc_class_stats_t cs;
        TM_API(trimalloc_stats_class)(c, &cs);
        if (!cs.nslabs && !cs.nmalloc) continue;
        if (json)
            n = tm_snprintf(buf, sizeof buf,
                            "%s{\"class\":%u,\"size\":%zu,\"nslabs\":%zu,\"blocks_out\":%zu,"
                            "\"nmalloc\":%llu,\"nfree\":%llu}",
                            first ? "" : ",", c, cs.size, cs.nslabs, cs.blocks_out,
                            (unsigned long long)cs.nmalloc, (unsigned long long)cs.nfree);
        else
            n = tm_snprintf(buf, sizeof buf, "  %5u  %5zu  %6zu  %10zu  %11llu  %11llu\n", c,
                            cs.size, cs.nslabs, cs.blocks_out, (unsigned long long)cs.nmalloc,
                            (unsigned long long)cs.nfree);
        first = false;
        put(o, buf, n, sizeof buf);
    }
    if (json) put(o, buf, tm_snprintf(buf, sizeof buf, "]}\n"), sizeof buf);
}



void stats_print_at_exit(void) {
    if (TM_OPT_NOW(stats_print)) TM_API(trimalloc_stats_print)(2, 0);
}

TM_EXPORT struct mallinfo2 TM_API(mallinfo2)(void) {
    trimalloc_stats_t st;
    size_t chunk_bytes, huge_mapped_b;
    stats_fill(&st, &chunk_bytes, &huge_mapped_b); /* one reading: no difference to wrap */
    struct mallinfo2 mi;
    memset(&mi, 0, sizeof mi);
    mi.arena = chunk_bytes;
    mi.ordblks = st.narenas;
    mi.hblks = 0;
    mi.hblkhd = huge_mapped_b;
    mi.uordblks = st.allocated;
    mi.fordblks = st.mapped > st.allocated ? st.mapped - st.allocated : 0;
    mi.fsmblks = st.tcache_bytes;
    mi.keepcost = 0;
    return mi;
}

static int clamp_int(size_t v) { return v > 0x7fffffff ? 0x7fffffff : (int)v; }

TM_EXPORT struct mallinfo TM_API(mallinfo)(void);
struct mallinfo TM_API(mallinfo)(void) {
    struct mallinfo2 m = TM_API(mallinfo2)();
    struct mallinfo r;
    r.arena = clamp_int(m.arena);
    r.ordblks = clamp_int(m.ordblks);
    r.smblks = clamp_int(m.smblks);
    r.hblks = clamp_int(m.hblks);
    r.hblkhd = clamp_int(m.hblkhd);
    r.usmblks = clamp_int(m.usmblks);
    r.fsmblks = clamp_int(m.fsmblks);
    r.uordblks = clamp_int(m.uordblks);
    r.fordblks = clamp_int(m.fordblks);
    r.keepcost = clamp_int(m.keepcost);
    return r;
}

TM_EXPORT void TM_API(malloc_stats)(void) { TM_API(trimalloc_stats_print)(2, 0); }

TM_EXPORT int TM_API(malloc_info)(int options, FILE *stream) {
    if (options != 0) {
        errno = EINVAL;
        return -1;
    }
    trimalloc_stats_t st;
    TM_API(trimalloc_stats_get)(&st);
    fprintf(stream,
            "<malloc version=\"trimalloc-1\">\n"
            "<total type=\"allocated\" size=\"%zu\"/>\n"
            "<total type=\"active\" size=\"%zu\"/>\n"
            "<total type=\"resident\" size=\"%zu\"/>\n"
            "<total type=\"mapped\" size=\"%zu\"/>\n"
            "<total type=\"released\" size=\"%zu\"/>\n"
            "<total type=\"tcache\" size=\"%zu\"/>\n"
            "<system type=\"current\" size=\"%zu\"/>\n"
            "<arenas count=\"%u\"/>\n"
            "</malloc>\n",
            st.allocated, st.active, st.resident, st.mapped, st.released, st.tcache_bytes,
            st.mapped, st.narenas);
    return 0;
}
