/*
 * thp.c (unit) -- transparent huge pages stay out of the allocator's own
 * mappings. Where the kernel's THP setting is "always", a 2 MiB page would
 * make a whole aligned stretch of a chunk or a metadata region resident at
 * its first touch, and khugepaged would collapse purged stretches back
 * (src/os.c). So arena chunks (unless the thp option is 1) and metadata
 * regions are mapped MADV_NOHUGEPAGE, which the kernel shows as the "nh"
 * flag of the mapping in /proc/self/smaps; huge blocks, which the program
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

static bool no_huge(const void *p) {
    char flags[256];
    long huge_kb;
    mapping_of(p, flags, sizeof flags, &huge_kb);
    /* the flags are two-letter words separated by spaces */
    char padded[260];
    snprintf(padded, sizeof padded, " %s ", flags);
    return strstr(padded, " nh ") != NULL;
}

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
    os_huge_pages_off(m, (size_t)4 << 20);
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

/* With thp:1 a chunk mapped from then on is left to the kernel. Blocks of
 * 1.5 MiB (large: under the 2 MiB huge threshold) fill a 4 MiB chunk two
 * at a time, so within a few of them one lands in a new chunk. */
static void test_option_lets_new_chunks_in(void **state) {
    (void)state;
    skip_without_thp();
    assert_int_equal(TM_API(trimalloc_option_set)("thp", 1), 0);
    enum { N = 8 };
    void *b[N];
    int unmarked = -1;
    for (int i = 0; i < N; i++) {
        b[i] = TM_API(malloc)((size_t)3 << 19);
        assert_non_null(b[i]);
        if (unmarked < 0 && !no_huge(b[i])) unmarked = i;
    }
    assert_int_equal(TM_API(trimalloc_option_set)("thp", 0), 0);
    for (int i = 0; i < N; i++) TM_API(free)(b[i]);
    if (unmarked < 0) fail_msg("none of %d blocks of 1.5 MiB landed in a chunk mapped with thp:1", N);
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
        cmocka_unit_test(test_huge_blocks_left_to_the_kernel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
