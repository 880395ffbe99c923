#include "common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Messages quote names from files (JSON keys, tensor and entry names) and
 * paths, which may hold any character: control characters become '?' so a
 * message is always one printable line. */
static void one_line(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7F)
            *s = '?';
}

sdunet_status sd_fail(sdunet_error *err, sdunet_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        one_line(err->message);
        err->code = code;
    }
    return code;
}

void sd_err_prefix(sdunet_error *err, const char *prefix)
{
    if (!err || !prefix)
        return;
    /* Build "prefix: message" and truncate to the buffer on purpose. */
    char tmp[sizeof err->message];
    size_t p = strlen(prefix), m = strnlen(err->message, sizeof err->message - 1);
    if (p > sizeof tmp - 3)
        p = sizeof tmp - 3;
    memcpy(tmp, prefix, p);
    tmp[p] = ':';
    tmp[p + 1] = ' ';
    size_t room = sizeof tmp - 1 - (p + 2);
    if (m > room)
        m = room;
    memcpy(tmp + p + 2, err->message, m);
    tmp[p + 2 + m] = 0;
    one_line(tmp);
    memcpy(err->message, tmp, sizeof tmp);
}

const char *sdunet_status_string(sdunet_status code)
{
    switch (code) {
    case SDUNET_OK: return "ok";
    case SDUNET_E_INVALID_ARG: return "invalid argument";
    case SDUNET_E_IO: return "i/o error";
    case SDUNET_E_FORMAT: return "malformed file";
    case SDUNET_E_CONFIG: return "unsupported configuration";
    case SDUNET_E_WEIGHTS: return "missing or mismatched weights";
    case SDUNET_E_SHAPE: return "input shape mismatch";
    case SDUNET_E_NOMEM: return "out of memory";
    case SDUNET_E_UNSUPPORTED: return "unsupported";
    case SDUNET_E_NONFINITE: return "non-finite input";
    case SDUNET_E_BUSY: return "model busy";
    case SDUNET_E_INTERNAL: return "internal error";
    case SDUNET_E_CANCELLED: return "cancelled";
    }
    return "unknown status";
}

void *sd_alloc(size_t bytes)
{
    if (bytes == 0)
        bytes = 1;
    size_t rounded;
    if (!sd_add_size(bytes, 63, &rounded))
        return NULL;
    rounded &= ~(size_t)63;
    return aligned_alloc(64, rounded);
}

void *sd_calloc(size_t n, size_t size)
{
    size_t bytes;
    if (!sd_mul_size(n, size, &bytes))
        return NULL;
    void *p = sd_alloc(bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

void sd_free(void *p)
{
    free(p);
}

int sd_grow(void **arr, size_t *cap, size_t need, size_t elsize, size_t max)
{
    if (need <= *cap)
        return 1;
    size_t ncap = *cap ? *cap : 16;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2)
            return 0;
        ncap *= 2;
    }
    if (ncap > max && max >= need)
        ncap = max;
    size_t bytes;
    if (!sd_mul_size(ncap, elsize, &bytes))
        return 0;
    void *p = sd_alloc(bytes);
    if (!p)
        return 0;
    if (*cap)
        memcpy(p, *arr, *cap * elsize);
    sd_free(*arr);
    *arr = p;
    *cap = ncap;
    return 1;
}
