#include "engine/synth.h"
#include "engine/pool.h"

#include <math.h>
#include <string.h>

uint64_t sd_fnv1a64(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        h ^= *p;
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Elements [begin, end) of the stream, written to out[begin..end). */
static void fill_range(uint64_t h, size_t begin, size_t end, double s, float c, float *out)
{
    for (size_t i = begin; i < end; i++) {
        uint64_t x = h + (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
        x = x ^ (x >> 31);
        double r = (double)(x >> 40) * 0x1p-23 - 1.0;
        /* Round to float before adding c: keeps the compiler from fusing. */
        float v = (float)(r * s);
        v += c;
        out[i] = v;
    }
}

void sd_synth_fill(const char *name, size_t n, double s, float c, float *out)
{
    fill_range(sd_fnv1a64(name), 0, n, s, c, out);
}

typedef struct fill_job {
    uint64_t h;
    size_t n;
    double s;
    float c;
    float *out;
} fill_job;

enum { FILL_CHUNK = 1 << 18 };

static void fill_task(void *ctx, int64_t t, int thread)
{
    (void)thread;
    const fill_job *j = ctx;
    size_t b = (size_t)t * FILL_CHUNK, e = b + FILL_CHUNK < j->n ? b + FILL_CHUNK : j->n;
    fill_range(j->h, b, e, j->s, j->c, j->out);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && memcmp(s + a - b, suffix, b) == 0;
}

void sd_synth_weight_pool(const char *name, int ndim, const int64_t *shape, float *out,
                          sd_pool *pool)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    fill_job j = {.h = sd_fnv1a64(name), .n = n, .out = out};
    if (ndim >= 2) {
        size_t fan_in = n / (size_t)shape[0];
        j.s = 1.0 / sqrt((double)fan_in);
        j.c = 0.0f;
    } else if (ends_with(name, ".weight")) {
        j.s = 0.1;
        j.c = 1.0f;
    } else {
        j.s = 0.1;
        j.c = 0.0f;
    }
    sd_pool_run(pool, (int64_t)((n + FILL_CHUNK - 1) / FILL_CHUNK), fill_task, &j);
}

void sd_synth_weight(const char *name, int ndim, const int64_t *shape, float *out)
{
    sd_synth_weight_pool(name, ndim, shape, out, NULL);
}
