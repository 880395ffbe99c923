#include "model/synth.h"

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

void sd_synth_fill(const char *name, size_t n, double s, float c, float *out)
{
    const uint64_t h = sd_fnv1a64(name);
    for (size_t i = 0; i < n; i++) {
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

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && memcmp(s + a - b, suffix, b) == 0;
}

void sd_synth_weight(const char *name, int ndim, const int64_t *shape, float *out)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    if (ndim >= 2) {
        size_t fan_in = n / (size_t)shape[0];
        sd_synth_fill(name, n, 1.0 / sqrt((double)fan_in), 0.0f, out);
    } else if (ends_with(name, ".weight")) {
        sd_synth_fill(name, n, 0.1, 1.0f, out);
    } else {
        sd_synth_fill(name, n, 0.1, 0.0f, out);
    }
}
