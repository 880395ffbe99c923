/* PyTorch's CPU random generator (torch 1.13), reproduced bit for bit, so a
 * seed draws the same initial latents and sampler noise as
 * torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed)).
 *
 * The generator is MT19937 seeded with the low 32 bits of the seed, plus the
 * one cached normal sample that torch's double-precision normal draw keeps.
 * sd_torch_randn follows torch's two float32 paths: element by element in
 * double for fewer than 16 elements, and Box-Muller over blocks of 16 for 16
 * or more, with the float32 operations of torch's AVX2 kernel (the kernel x86-64
 * builds of torch run on CPUs with AVX2 but without AVX-512). The arithmetic
 * here is portable C, so every machine gives those same numbers.
 *
 * The state lives wherever the caller puts it (usually the stack); nothing is
 * allocated and nothing can fail. */
#ifndef SD_TORCH_RNG_H
#define SD_TORCH_RNG_H

#include <stddef.h>
#include <stdint.h>

#define SD_MT_N 624

typedef struct sd_torch_rng {
    uint32_t mt[SD_MT_N]; /* MT19937 state words */
    int index;            /* next word to temper; SD_MT_N = twist before the next draw */
    int have_normal;      /* next_normal holds the second half of a Box-Muller pair */
    double next_normal;
} sd_torch_rng;

/* torch.Generator("cpu").manual_seed(seed): only the low 32 bits of the seed
 * count (2^32 + 7 draws what 7 draws). Clears the cached normal sample. */
void sd_torch_rng_seed(sd_torch_rng *g, uint64_t seed);

/* The generator's next 32-bit output (torch's random()). */
uint32_t sd_torch_rng_u32(sd_torch_rng *g);

/* One float32 uniform in [0, 1), as torch.rand draws it for a float32 tensor:
 * the low 24 bits of one 32-bit output times 2^-24. */
float sd_torch_rng_uniform_f32(sd_torch_rng *g);

/* One standard normal sample in double, as torch's normal_distribution<double>
 * draws it: the cached sample if there is one, else a fresh Box-Muller pair from
 * two 53-bit uniforms (each from two 32-bit outputs), caching the sine half. */
double sd_torch_rng_normal_f64(sd_torch_rng *g);

/* torch.randn(n elements, dtype=float32) on this generator: only the element
 * count matters, not the shape. n = 0 draws nothing. */
void sd_torch_randn(sd_torch_rng *g, float *out, size_t n);

#endif
