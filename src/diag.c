/*
 * diag.c -- messages and aborts. Nothing here allocates: text is formatted
 * into stack buffers and written with write(2), so the failure path works
 * with the heap in any state.
 */
#include "internal.h"

#include <signal.h>
#include <stdarg.h>
#include <unistd.h>

/* write(2) is a cancellation point; a report is written with locks held
 * at times, so cancellation is off for it */
void tm_write_fd(int fd, const char *s, size_t n) {
    int cancel;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w <= 0) {
            if (w < 0 && errno == EINTR) continue;
            break;
        }
        s += w;
        n -= (size_t)w;
    }
    pthread_setcancelstate(cancel, NULL);
}

static size_t fmt_u(char *out, unsigned long long v, unsigned base) {
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

int tm_snprintf(char *buf, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    size_t o = 0;
    char num[32];
#define PUT(c) do { if (o + 1 < size) buf[o] = (c); o++; } while (0)
    for (const char *f = fmt; *f; f++) {
        if (*f != '%') { PUT(*f); continue; }
        f++;
        bool left = false;
        size_t width = 0;
        if (*f == '-') { left = true; f++; }
        while (*f >= '0' && *f <= '9') width = width * 10 + (size_t)(*f++ - '0');
        int lng = 0;
        while (*f == 'l' || *f == 'z') { lng++; f++; }
        size_t n = 0;
        bool neg = false;
        switch (*f) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s) s = "(null)";
            size_t len = strlen(s);
            for (size_t k = len; !left && k < width; k++) PUT(' ');
            while (*s) PUT(*s++);
            for (size_t k = len; left && k < width; k++) PUT(' ');
            continue;
        }
        case 'd': {
            long long v = lng ? va_arg(ap, long long) : va_arg(ap, int);
            if (v < 0) { neg = true; v = -v; }
            n = fmt_u(num, (unsigned long long)v, 10);
            break;
        }
        case 'u': {
            unsigned long long v = lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned);
            n = fmt_u(num, v, 10);
            break;
        }
        case 'x': {
            unsigned long long v = lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned);
            n = fmt_u(num, v, 16);
            break;
        }
        case 'p': {
            PUT('0'); PUT('x');
            n = fmt_u(num, (uintptr_t)va_arg(ap, void *), 16);
            break;
        }
        case '%': PUT('%'); continue;
        default: PUT('%'); PUT(*f); continue;
        }
        size_t len = n + neg;
        for (size_t k = len; !left && k < width; k++) PUT(' ');
        if (neg) PUT('-');
        for (size_t i = 0; i < n; i++) PUT(num[i]);
        for (size_t k = len; left && k < width; k++) PUT(' ');
    }
#undef PUT
    if (size) buf[o < size ? o : size - 1] = 0;
    va_end(ap);
    return (int)o;
}

__attribute__((noreturn)) static void die(void) {
    /* abort() without touching the heap; raise again if SIGABRT is caught. */
    abort();
}

void tm_invalid_pointer(const char *call, const void *p) {
    bool abort_now = TM_OPT_NOW(abort_on_error) != 0;
    char buf[160];
    int n = tm_snprintf(buf, sizeof buf, "trimalloc: %s(): invalid pointer %p%s\n", call, p,
                        abort_now ? "" : " (ignored)");
    tm_write_fd(2, buf, (size_t)n);
    if (abort_now) die();
}

void tm_double_free(const char *call, const void *p) {
    bool abort_now = TM_OPT_NOW(abort_on_error) != 0;
    char buf[160];
    int n = tm_snprintf(buf, sizeof buf, "trimalloc: %s(): double free of pointer %p%s\n", call,
                        p, abort_now ? "" : " (ignored)");
    tm_write_fd(2, buf, (size_t)n);
    if (abort_now) die();
}

void tm_write_after_free(const void *p) {
    bool abort_now = TM_OPT_NOW(abort_on_error) != 0;
    char buf[160];
    int n = tm_snprintf(buf, sizeof buf,
                        "trimalloc: heap corruption: block %p was written after free()%s\n", p,
                        abort_now ? "" : " (ignored)");
    tm_write_fd(2, buf, (size_t)n);
    if (abort_now) die();
}

void tm_fatal(const char *msg) {
    char buf[256];
    int n = tm_snprintf(buf, sizeof buf, "trimalloc: fatal: %s\n", msg);
    tm_write_fd(2, buf, (size_t)n);
    die();
}

void tm_fatal_assert(const char *file, int line, const char *cond) {
    char buf[512];
    int n = tm_snprintf(buf, sizeof buf, "trimalloc: assertion failed: %s (%s:%d)\n", cond, file,
                        line);
    tm_write_fd(2, buf, (size_t)n);
    die();
}

void tm_warn(const char *msg1, const char *msg2) {
    char buf[512];
    int n = tm_snprintf(buf, sizeof buf, "trimalloc: warning: %s%s\n", msg1, msg2 ? msg2 : "");
    tm_write_fd(2, buf, (size_t)n);
}
