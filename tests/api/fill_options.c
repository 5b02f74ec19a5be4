/*
 * fill_options.c -- the zero and junk options (docs/options.md): with
 * zero:1 every byte a block gains is zero, with junk:1 it is 0xa5 -- from
 * malloc, from realloc growing a large or huge block in place, from
 * _expand and from _aligned_realloc; _recalloc's new bytes are zero under
 * either. Each option runs in a child started with TRIMALLOC_CONF set
 * (both are start-up only). Until 2026-12-05 a large block grown in place
 * kept whatever its new pages held (found by review).
 */
#include "test_cmocka.h"

/* Hide where a pointer came from (the compiler must not reason about it). */
static void *launder(void *p)
{
    __asm__ volatile("" : "+r"(p));
    return p;
}

/* The first index in [from, to) whose byte is not want, else to. */
static size_t first_wrong(const unsigned char *p, size_t from, size_t to, unsigned char want)
{
    size_t k = to > from ? tu_find_not_byte(p + from, to - from, want) : (size_t)-1;
    return k == (size_t)-1 ? to : from + k;
}

/* The child: checks under the options it was started with; exit status 0
 * if all held, else the number of the first failed check. */
static int child(unsigned char want)
{
    unsigned grown_in_place = 0, expanded = 0;
    for (unsigned r = 0; r < 200; r++) {
        size_t s1 = 10300 + (r * 7919u) % 200000, s2 = s1 + 4096 * (1 + r % 30);
        /* dirty the pages the next block is likely to take and grow into */
        unsigned char *d = TM_API(malloc)(2 * s2);
        if (!d)
            return 1;
        memset(d, 0xee, 2 * s2);
        TM_API(free)(launder(d));
        unsigned char *p = TM_API(malloc)(s1);
        if (!p)
            return 2;
        size_t u = TM_API(malloc_usable_size)(p);
        if (first_wrong(p, 0, u, want) != u) /* every usable byte, not only those asked for */
            return 3;
        memset(p, 0x11, u);
        unsigned char *q = TM_API(realloc)(launder(p), s2);
        if (!q)
            return 4;
        size_t u2 = TM_API(malloc_usable_size)(q);
        if (first_wrong(q, 0, u, 0x11) != u)
            return 5; /* contents kept */
        if (first_wrong(q, u, s2, want) != s2)
            return 6;
        grown_in_place += q == p;
        memset(q, 0x22, u2);
        if (TM_API(_expand)(q, u2 + 8192) == q) {
            if (first_wrong(q, u2, u2 + 8192, want) != u2 + 8192)
                return 7;
            expanded++;
        }
        TM_API(free)(q);
    }
    /* a huge block grown by mremap */
    size_t h1 = (size_t)8 << 20, h2 = (size_t)24 << 20;
    unsigned char *h = TM_API(malloc)(h1);
    if (!h)
        return 8;
    memset(h, 0x33, h1);
    h = TM_API(realloc)(launder(h), h2);
    if (!h || first_wrong(h, 0, h1, 0x33) != h1)
        return 9;
    if (first_wrong(h, h1, h2, want) != h2)
        return 10;
    TM_API(free)(h);
    /* _aligned_realloc grows the block under the alignment in place */
    unsigned aligned_in_place = 0;
    for (unsigned r = 0; r < 50; r++) {
        size_t s1 = 20000 + 4096 * r, s2 = s1 + 3 * 4096;
        unsigned char *d = TM_API(malloc)(2 * s2);
        if (!d)
            return 13;
        memset(d, 0xee, 2 * s2);
        TM_API(free)(launder(d));
        unsigned char *p = TM_API(_aligned_malloc)(s1, 64);
        if (!p)
            return 14;
        size_t u = TM_API(_aligned_msize)(p, 64, 0);
        memset(p, 0x11, u);
        unsigned char *q = TM_API(_aligned_realloc)(launder(p), s2, 64);
        if (!q || first_wrong(q, 0, u, 0x11) != u)
            return 15;
        if (first_wrong(q, u, s2, want) != s2)
            return 16;
        aligned_in_place += q == p;
        TM_API(_aligned_free)(q);
    }
    /* _recalloc zeroes what it adds, whatever junk:1 says (a huge block
     * grown by mremap: until 2026-12-05 junk:1 filled those bytes after
     * _recalloc had been told they were zero) */
    unsigned char *z = TM_API(_recalloc)(NULL, 1, h1);
    if (!z)
        return 17;
    memset(z, 0x44, h1);
    z = TM_API(_recalloc)(launder(z), 1, h2);
    if (!z || first_wrong(z, 0, h1, 0x44) != h1 || first_wrong(z, h1, h2, 0) != h2)
        return 18;
    TM_API(free)(z);
    /* A huge block served from the cache of freed mappings can be bigger
     * than asked for: its usable size is the whole mapping. Every usable
     * byte reads `want`, so a growth in place inside it does too (until
     * 2026-12-05 only the pages asked for were filled, and such a growth
     * handed back a freed block's bytes; found by a tester). */
    for (unsigned r = 0; r < 4; r++) {
        unsigned char *big = TM_API(malloc)(4u << 20);
        if (!big)
            return 20;
        memset(big, 0xee, TM_API(malloc_usable_size)(big));
        TM_API(free)(launder(big));
        size_t a = (2u << 20) + 1 + r * 4096;
        unsigned char *p = TM_API(malloc)(a);
        if (!p)
            return 21;
        size_t u = TM_API(malloc_usable_size)(p);
        if (first_wrong(p, 0, u, want) != u)
            return 22;
        unsigned char *q = TM_API(realloc)(launder(p), 3000000);
        if (!q)
            return 23;
        if (first_wrong(q, a, 3000000, want) != 3000000)
            return 24;
        TM_API(free)(q);
    }
    /* A guarded huge block shrunk after guard was turned off moves to a
     * new block, which may be a cached mapping bigger than asked for: its
     * bytes past the copy read `want` too (until 2026-12-06 that move
     * skipped the fills and they held a freed block's bytes; an outside
     * reviewer). */
    {
        unsigned char *c = TM_API(malloc)(16u << 20);
        if (!c)
            return 25;
        memset(c, 0xee, TM_API(malloc_usable_size)(c));
        TM_API(free)(launder(c));
        if (TM_API(trimalloc_option_set)("guard", 1) != 0)
            return 26;
        unsigned char *g = TM_API(malloc)(6u << 20);
        TM_API(trimalloc_option_set)("guard", 0);
        if (!g)
            return 27;
        memset(g, 0x55, 6u << 20);
        unsigned char *q = TM_API(realloc)(launder(g), 5u << 20);
        if (!q || first_wrong(q, 0, 5u << 20, 0x55) != 5u << 20)
            return 28;
        size_t u = TM_API(malloc_usable_size)(q);
        if (first_wrong(q, 5u << 20, u, want) != u)
            return 29;
        TM_API(free)(q);
    }
    /* the checks above must have met the in-place paths */
    if (grown_in_place == 0)
        return 11;
    if (expanded == 0)
        return 12;
    if (aligned_in_place == 0)
        return 19;
    return 0;
}

static void test_zero_option(void **state)
{
    (void)state;
    assert_int_equal(tu_run_self_child("zero:1"), 0);
}

static void test_junk_option(void **state)
{
    (void)state;
    assert_int_equal(tu_run_self_child("junk:1"), 0);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "child") == 0)
        return child(strcmp(argv[2], "zero:1") == 0 ? 0x00 : 0xa5);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zero_option),
        cmocka_unit_test(test_junk_option),
    };
    return cmocka_run_group_tests_name("api_fill_options (" TU_FLAVOUR ")", tests, NULL, NULL);
}
