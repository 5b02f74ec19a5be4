/*
 * override.c -- interposition. In the drop-in build every allocation entry
 * point that glibc exports is ours: the standard names are defined in
 * alloc.c; here are glibc's internal __libc_* aliases (called by some
 * programs and by glibc's own code paths), so no pointer from glibc's heap
 * can ever reach our free(). The prefixed build defines none of these.
 */
#include "internal.h"

#ifndef TRIMALLOC_PREFIX
TM_EXPORT void *__libc_malloc(size_t size);
TM_EXPORT void __libc_free(void *p);
TM_EXPORT void *__libc_calloc(size_t n, size_t size);
TM_EXPORT void *__libc_realloc(void *p, size_t size);
TM_EXPORT void *__libc_memalign(size_t align, size_t size);
TM_EXPORT void *__libc_valloc(size_t size);
TM_EXPORT void *__libc_pvalloc(size_t size);
TM_EXPORT void __libc_cfree(void *p);
TM_EXPORT void cfree(void *p);
TM_EXPORT int __posix_memalign(void **memptr, size_t align, size_t size);

void *__libc_malloc(size_t size) { return malloc(size); }
void __libc_free(void *p) { free(p); }
void *__libc_calloc(size_t n, size_t size) { return calloc(n, size); }
void *__libc_realloc(void *p, size_t size) { return realloc(p, size); }
void *__libc_memalign(size_t align, size_t size) { return memalign(align, size); }
void *__libc_valloc(size_t size) { return valloc(size); }
void *__libc_pvalloc(size_t size) { return pvalloc(size); }
void __libc_cfree(void *p) { free(p); }
void cfree(void *p) { free(p); }
int __posix_memalign(void **memptr, size_t align, size_t size) {
    return posix_memalign(memptr, align, size);
}
#endif
