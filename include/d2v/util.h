/* util.h: the one fatal-error path (die), checked allocation, logging, timing. */
#ifndef D2V_UTIL_H
#define D2V_UTIL_H

#include <stddef.h>
#include <stdint.h>

/// Print "d2v: error: ..." (prefixed with the rank once MPI is up), then end the whole job.
#define die(...) die_at(__FILE__, __LINE__, __VA_ARGS__)
void die_at(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));

/// Undo work a fatal error would leave half done (a temporary file) before die() ends the job:
/// fn(arg) runs once, newest first. Register returns a handle for die_cleanup_pop.
int die_cleanup_push(void (*fn)(void *), void *arg);
/// Drop a registration (the work completed): handles are popped in reverse order.
void die_cleanup_pop(int handle);

/// fsync a file, or a directory (its entries: a rename or a new file in it). 0, or -1 (errno).
int fsync_path(const char *path);

/// 64-byte aligned, zeroed allocation; dies naming the request on failure.
#define xalloc(bytes, what) xalloc_at((bytes), (what), __FILE__, __LINE__)
void *xalloc_at(size_t bytes, const char *what, const char *file, int line);
/// Bytes xalloc'd so far (frees not subtracted): the arenas' total once set-up is done.
size_t xalloc_total(void);

/// printf on rank 0 only.
void log0(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/// Wall-clock seconds from a monotonic clock.
double now_seconds(void);

/// s for an error message: control bytes as '?', at most n - 1 bytes ("..." when cut), into
/// buf. Strings read from a file go through it, so a message stays one line.
const char *str_printable(const char *s, char *buf, size_t n);

/// Parse an environment variable as a positive int; `fallback` if unset or invalid.
int env_int(const char *name, int fallback);

#endif
