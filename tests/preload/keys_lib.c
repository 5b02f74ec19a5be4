/* keys_lib.c -- a shared library whose constructor makes 40 pthread keys
 * (and allocates nothing), so that a preloaded trimalloc, whose constructor
 * runs after it, finds key index 31 taken. Used by the keys-taken case of
 * tests/preload/run.sh with keys_main.c. */
#include <pthread.h>

pthread_key_t keys_lib_keys[40];

__attribute__((constructor)) static void keys_lib_init(void)
{
    for (int i = 0; i < 40; i++)
        pthread_key_create(&keys_lib_keys[i], 0);
}
