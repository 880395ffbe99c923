/* Internal helpers shared by every module: error reporting and checked
 * arithmetic. Nothing here holds state. */
#ifndef SD_COMMON_H
#define SD_COMMON_H

#include "sdunet.h"
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define SD_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SD_PRINTF(a, b)
#endif

/* Records `code` and a formatted message in `err` (if non-NULL); returns code. */
sdunet_status sd_fail(sdunet_error *err, sdunet_status code, const char *fmt, ...) SD_PRINTF(3, 4);

/* Prefixes the message already in err with "prefix: " (keeps the code). */
void sd_err_prefix(sdunet_error *err, const char *prefix);

/* Overflow-checked size arithmetic: return 0 on overflow, 1 on success. */
static inline int sd_mul_size(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}
static inline int sd_add_size(size_t a, size_t b, size_t *out)
{
    if (b > SIZE_MAX - a)
        return 0;
    *out = a + b;
    return 1;
}

/* 64-byte aligned allocation; NULL on failure or size 0 overflow. sd_free(NULL) is a no-op. */
void *sd_alloc(size_t bytes);
void *sd_calloc(size_t n, size_t size);
void sd_free(void *p);

/* Grows an sd_alloc'd array (*arr, *cap elements of elsize bytes) to hold at
 * least `need` elements: doubling from 16, but never past `max` when
 * max >= need (keeps buffers proportional to an input's own bound). The
 * contents are kept. 1 on success; 0 on overflow or allocation failure,
 * leaving the array unchanged. */
int sd_grow(void **arr, size_t *cap, size_t need, size_t elsize, size_t max);

#endif
