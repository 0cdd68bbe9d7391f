/* util.c: die(), checked aligned allocation, rank-0 logging and the clock. */
#define _POSIX_C_SOURCE 200809L
#include "d2v/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "d2v/dist.h"

/* Pending clean-ups (a temporary file being written): few, and only from the main thread's
 * checkpoint and tool writers, so a fixed stack. */
static struct {
    void (*fn)(void *);
    void *arg;
} g_cleanup[8];
static int g_ncleanup;

int die_cleanup_push(void (*fn)(void *), void *arg) {
    if (g_ncleanup == 8) die("internal: too many pending clean-ups");
    g_cleanup[g_ncleanup].fn = fn, g_cleanup[g_ncleanup].arg = arg;
    return g_ncleanup++;
}

void die_cleanup_pop(int handle) {
    if (handle >= 0 && handle < g_ncleanup) g_ncleanup = handle;
}

int fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

void die_at(const char *file, int line, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fflush(stdout);
    /* The source location is for developers (D2V_DEBUG=1); users get the message alone. */
    char where[300] = "";
    const char *dbg = getenv("D2V_DEBUG");
    if (dbg && *dbg && *dbg != '0') snprintf(where, sizeof where, " (%s:%d)", file, line);
    if (g_dist.initialized && g_dist.world > 1)
        fprintf(stderr, "d2v: error: [rank %d] %s%s\n", g_dist.rank, msg, where);
    else
        fprintf(stderr, "d2v: error: %s%s\n", msg, where);
    fflush(stderr);
    while (g_ncleanup > 0) { /* pop first: a clean-up that dies itself does not loop */
        g_ncleanup--;
        g_cleanup[g_ncleanup].fn(g_cleanup[g_ncleanup].arg);
    }
    dist_abort(1);
}

static size_t g_xalloc_bytes; /* every arena is xalloc'd once at set-up: the analytic total */

void *xalloc_at(size_t bytes, const char *what, const char *file, int line) {
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded == 0) rounded = 64;
    void *p = aligned_alloc(64, rounded);
    if (!p) die_at(file, line, "out of memory allocating %.1f MiB for %s", bytes / 1048576.0, what);
    memset(p, 0, rounded);
    __atomic_fetch_add(&g_xalloc_bytes, rounded, __ATOMIC_RELAXED);
    return p;
}

size_t xalloc_total(void) { return __atomic_load_n(&g_xalloc_bytes, __ATOMIC_RELAXED); }

void log0(const char *fmt, ...) {
    if (g_dist.rank != 0) return;
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

const char *str_printable(const char *s, char *buf, size_t n) {
    size_t i = 0;
    for (; s[i] && i + 1 < n; i++)
        buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    buf[i] = '\0';
    if (s[i] && n > 4) memcpy(buf + n - 4, "...", 4);
    return buf;
}

int env_int(const char *name, int fallback) {
    const char *s = getenv(name);
    if (!s || !*s) return fallback;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end != '\0' || v <= 0 || v > 4096) return fallback;
    return (int)v;
}
