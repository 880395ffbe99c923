/* The standard normal generator of sdunet_sample.h: SplitMix64-seeded
 * xoshiro256**, Box-Muller in double. The exact recipe is part of the API
 * (the CLI's --seed must reproduce the same latents everywhere), so every
 * constant and the order of operations below is fixed; see the header. */
#include "sdunet_sample.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t next_u64(sdunet_rng *r)
{
    uint64_t *s = r->s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Midpoints of the 2^53 bins: never 0, so log(u) is finite. */
static double next_uniform(sdunet_rng *r)
{
    return ((double)(next_u64(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

void sdunet_rng_seed(sdunet_rng *rng, uint64_t seed)
{
    if (!rng)
        return;
    uint64_t x = seed;
    for (int k = 0; k < 4; k++)
        rng->s[k] = splitmix64(&x);
    rng->spare = 0;
    rng->has_spare = 0;
}

static double next_normal(sdunet_rng *r)
{
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    const double two_pi = 6.283185307179586476925286766559;
    double u1 = next_uniform(r), u2 = next_uniform(r);
    double rad = sqrt(-2.0 * log(u1)), th = two_pi * u2;
    r->spare = rad * sin(th);
    r->has_spare = 1;
    return rad * cos(th);
}

void sdunet_rng_normal(sdunet_rng *rng, float *out, size_t n)
{
    if (!rng || !out)
        return;
    for (size_t i = 0; i < n; i++)
        out[i] = (float)next_normal(rng);
}

void sdunet_rng_normal_f64(sdunet_rng *rng, double *out, size_t n)
{
    if (!rng || !out)
        return;
    for (size_t i = 0; i < n; i++)
        out[i] = next_normal(rng);
}
