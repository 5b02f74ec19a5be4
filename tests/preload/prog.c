/* prog.c -- compiled by gcc in tests/preload/run.sh, with and without
 * trimalloc preloaded into gcc (and so into cc1, as and collect2/ld); the
 * object files, gcc's diagnostics and exit status, and the program's output
 * must all be the same. The program itself allocates a lot and prints
 * deterministic results. The unused variable below is on purpose: gcc's
 * warning output is part of what is compared. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct entry {
    char *key;
    unsigned count;
    struct entry *next;
};

struct table {
    struct entry **slots;
    size_t nslots, n;
};

static uint64_t rng_state = 88172645463325252ULL;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t hash(const char *s)
{
    size_t h = 1469598103934665603ULL;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ULL;
    return h;
}

static void table_grow(struct table *t)
{
    size_t n = t->nslots ? t->nslots * 2 : 16;
    struct entry **slots = calloc(n, sizeof(*slots));
    if (!slots)
        abort();
    for (size_t i = 0; i < t->nslots; i++) {
        struct entry *e = t->slots[i], *next;
        for (; e; e = next) {
            next = e->next;
            size_t j = hash(e->key) & (n - 1);
            e->next = slots[j];
            slots[j] = e;
        }
    }
    free(t->slots);
    t->slots = slots;
    t->nslots = n;
}

static void table_add(struct table *t, const char *key)
{
    if (t->n * 4 >= t->nslots * 3)
        table_grow(t);
    size_t i = hash(key) & (t->nslots - 1);
    for (struct entry *e = t->slots[i]; e; e = e->next)
        if (strcmp(e->key, key) == 0) {
            e->count++;
            return;
        }
    struct entry *e = malloc(sizeof(*e));
    if (!e || !(e->key = strdup(key)))
        abort();
    e->count = 1;
    e->next = t->slots[i];
    t->slots[i] = e;
    t->n++;
}

static int by_count(const void *a, const void *b)
{
    const struct entry *x = *(const struct entry *const *)a, *y = *(const struct entry *const *)b;
    if (x->count != y->count)
        return x->count < y->count ? 1 : -1;
    return strcmp(x->key, y->key);
}

int main(void)
{
    struct table t = {0};
    int unused_on_purpose;
    char word[32];

    for (int i = 0; i < 200000; i++) {
        int len = 1 + (int)(rng() % 3);
        for (int k = 0; k < len; k++)
            word[k] = (char)('a' + rng() % 12);
        word[len] = '\0';
        table_add(&t, word);
    }
    struct entry **all = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < t.nslots; i++)
        for (struct entry *e = t.slots[i]; e; e = e->next) {
            if (n == cap) {
                cap = cap ? cap * 2 : 8;
                all = realloc(all, cap * sizeof(*all));
                if (!all)
                    abort();
            }
            all[n++] = e;
        }
    qsort(all, n, sizeof(*all), by_count);
    printf("distinct words: %zu, table slots: %zu\n", n, t.nslots);
    for (size_t i = 0; i < 5 && i < n; i++)
        printf("%-4s %u\n", all[i]->key, all[i]->count);
    printf("rarest: %s %u\n", all[n - 1]->key, all[n - 1]->count);

    /* A growing string built by repeated realloc. */
    char *s = NULL;
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        size_t kl = strlen(all[i]->key);
        s = realloc(s, len + kl + 2);
        if (!s)
            abort();
        memcpy(s + len, all[i]->key, kl);
        len += kl;
        s[len++] = ',';
        s[len] = '\0';
    }
    printf("joined length: %zu, hash %016zx\n", len, hash(s));

    for (size_t i = 0; i < n; i++) {
        free(all[i]->key);
        free(all[i]);
    }
    free(all);
    free(t.slots);
    free(s);
    return 0;
}
