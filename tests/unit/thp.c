/*
 * thp.c (unit) -- transparent huge pages stay out of the allocator's own
 * mappings. Where the kernel's THP setting is "always", a 2 MiB page would
 * make a whole aligned stretch of a chunk or a metadata region resident at
 * its first touch, and khugepaged would collapse purged stretches back
 * (src/os.c). So arena chunks (unless the thp option is 1) and metadata
 * regions are mapped MADV_NOHUGEPAGE, which the kernel shows as the "nh"
 * flag of the mapping in /proc/self/smaps (thp:2 asks for huge pages
 * instead, MADV_HUGEPAGE, flag "hg"); huge blocks, which the program
 * fills itself, are left to the kernel's setting, as glibc leaves its
 * mmapped blocks. Skipped where the kernel has no THP at all (there the
 * flag does not exist and there is nothing to keep out).
 */
#include "test_cmocka.h"
#include "internal.h"

#include <unistd.h>

static bool kernel_has_thp(void) {
    return access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) == 0;
}

/* The VmFlags of the mapping that holds p, and its AnonHugePages (kB). */
static void mapping_of(const void *p, char *flags, size_t n, long *huge_kb) {
    FILE *f = fopen("/proc/self/smaps", "r");
    assert_non_null(f);
    char line[512];
    bool in = false, found = false;
    flags[0] = 0;
    *huge_kb = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && strchr(line, '-') < strchr(line, ' ')) {
            in = (uintptr_t)p >= lo && (uintptr_t)p < hi;
            found |= in;
            continue;
        }
        long kb;
        if (in && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) *huge_kb = kb;
        if (in && !strncmp(line, "VmFlags:", 8)) {
            snprintf(flags, n, "%s", line + 8);
            flags[strcspn(flags, "\n")] = 0;
        }
    }
    fclose(f);
    if (!found) fail_msg("no mapping holds %p", p);
}

/* Whether the mapping that holds p has VmFlag `flag` ("nh": no huge
 * pages, MADV_NOHUGEPAGE; "hg": huge pages asked for, MADV_HUGEPAGE). */
static bool has_flag(const void *p, const char *flag) {
    char flags[256];
    long huge_kb;
    mapping_of(p, flags, sizeof flags, &huge_kb);
    /* the flags are two-letter words separated by spaces */
    char padded[260], word[8];
    snprintf(padded, sizeof padded, " %s ", flags);
    snprintf(word, sizeof word, " %s ", flag);
    return strstr(padded, word) != NULL;
}

static bool no_huge(const void *p) { return has_flag(p, "nh"); }

static void skip_without_thp(void) {
    if (!kernel_has_thp()) {
        print_message("the kernel has no transparent huge pages: nothing to check\n");
        skip();
    }
}

static void test_helper_marks_a_mapping(void **state) {
    (void)state;
    skip_without_thp();
    void *m = os_map((size_t)4 << 20);
    assert_non_null(m);
    assert_false(no_huge(m)); /* a fresh mapping has no flag of its own */
    os_huge_pages(m, (size_t)4 << 20, false);
    assert_true(no_huge(m));
    assert_true(no_huge((char *)m + ((size_t)4 << 20) - 1));
    assert_int_equal(os_unmap(m, (size_t)4 << 20), 0);
}

static void test_chunks_and_metadata_opt_out(void **state) {
    (void)state;
    skip_without_thp();
    long v = -1;
    assert_int_equal(TM_API(trimalloc_option_get)("thp", &v), 0);
    assert_int_equal(v, 0); /* the default */
    void *small = TM_API(malloc)(64), *large = TM_API(malloc)(100 << 10);
    assert_non_null(small);
    assert_non_null(large);
    memset(large, 1, 100 << 10);
    assert_true(no_huge(small));
    assert_true(no_huge(large));
    char flags[256];
    long huge_kb;
    mapping_of(large, flags, sizeof flags, &huge_kb);
    assert_int_equal(huge_kb, 0);
    /* metadata: a small descriptor from a 2 MiB region, and one of its
     * own mapping (over 64 KiB) */
    void *m1 = meta_alloc(64), *m2 = meta_alloc(100 << 10);
    assert_non_null(m1);
    assert_non_null(m2);
    assert_true(no_huge(m1));
    assert_true(no_huge(m2));
    meta_free(m1, 64);
    meta_free(m2, 100 << 10);
    TM_API(free)(small);
    TM_API(free)(large);
}

/* Under thp:`value`, blocks of 1.5 MiB (large: under the 2 MiB huge
 * threshold) until one lands in a chunk mapped meanwhile (a 4 MiB chunk
 * holds two, and the chunks an earlier case emptied are taken first, so a
 * few dozen at most), whose mapping then has neither flag (thp:1, left to
 * the kernel) or "hg" (thp:2, asked for). */
static void new_chunk_under(long value) {
    assert_int_equal(TM_API(trimalloc_option_set)("thp", value), 0);
    enum { N = 64 };
    void *b[N];
    int found = -1, n = 0;
    while (found < 0 && n < N) {
        b[n] = TM_API(malloc)((size_t)3 << 19);
        assert_non_null(b[n]);
        bool ok = value == 1 ? !no_huge(b[n]) && !has_flag(b[n], "hg")
                             : has_flag(b[n], "hg") && !no_huge(b[n]);
        if (ok) found = n;
        n++;
    }
    assert_int_equal(TM_API(trimalloc_option_set)("thp", 0), 0);
    for (int i = 0; i < n; i++) TM_API(free)(b[i]);
    if (found < 0) fail_msg("none of %d blocks of 1.5 MiB landed in a chunk mapped as thp:%ld says", N, value);
}

static void test_option_lets_new_chunks_in(void **state) {
    (void)state;
    skip_without_thp();
    new_chunk_under(1);
}

static void test_option_asks_for_huge_pages(void **state) {
    (void)state;
    skip_without_thp();
    new_chunk_under(2);
    assert_int_equal(TM_API(trimalloc_option_set)("thp", 3), -1); /* out of range */
    assert_int_equal(errno, EINVAL);
}

static void test_huge_blocks_left_to_the_kernel(void **state) {
    (void)state;
    skip_without_thp();
    size_t sz = (size_t)8 << 20; /* over the huge threshold: a mapping of its own */
    char *p = TM_API(malloc)(sz);
    assert_non_null(p);
    assert_false(no_huge(p));
    assert_false(no_huge(p + sz - 1));
    TM_API(free)(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_helper_marks_a_mapping),
        cmocka_unit_test(test_chunks_and_metadata_opt_out),
        cmocka_unit_test(test_option_lets_new_chunks_in),
        cmocka_unit_test(test_option_asks_for_huge_pages),
        cmocka_unit_test(test_huge_blocks_left_to_the_kernel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
