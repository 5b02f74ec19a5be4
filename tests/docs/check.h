/*
 * check.h -- the failure counter and message of the plain-C docs tests
 * (no cmocka): fail() prints "FAIL: ..." and counts; main returns non-zero
 * if any check failed.
 */
#ifndef TRIMALLOC_DOCS_CHECK_H
#define TRIMALLOC_DOCS_CHECK_H

#include <stdarg.h>
#include <stdio.h>

static int failures;

__attribute__((format(printf, 1, 2))) static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("FAIL: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    failures++;
}

#endif /* TRIMALLOC_DOCS_CHECK_H */
