/* sdunet_sample: the denoising loop (text-to-image sampling in latent space)
 * on top of sdunet.h (the UNet) and sdunet_sched.h (the samplers), plus the
 * documented standard-normal generator the CLI uses for its noise.
 *
 * Like the rest of the library, nothing here prints, exits or aborts; every
 * function that can fail returns an sdunet_status and fills `err`.
 */
#ifndef SDUNET_SAMPLE_H
#define SDUNET_SAMPLE_H

#include "sdunet.h"
#include "sdunet_sched.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Standard normal generator ------------------------------------------
 *
 * The exact stream, so that runs can be reproduced elsewhere:
 *   state:   xoshiro256** (Blackman & Vigna), its four 64-bit words taken as
 *            four successive outputs of SplitMix64 started at x = seed
 *            (x += 0x9E3779B97F4A7C15; z = x; z = (z ^ z>>30) * 0xBF58476D1CE4E5B9;
 *            z = (z ^ z>>27) * 0x94D049BB133111EB; z ^= z>>31).
 *   uniform: u = ((next() >> 11) + 0.5) * 2^-53, in (0, 1), never 0 or 1.
 *   normal:  Box-Muller on two successive uniforms u1, u2:
 *            r = sqrt(-2 ln u1), z0 = r cos(2 pi u2), z1 = r sin(2 pi u2),
 *            computed in double; z0 is the next value, z1 the one after it.
 *   float:   each double rounded to the nearest float32.
 * Values come out in one sequence however the requests are split: asking for
 * 3 and then 5 values gives the same 8 values as asking for 8 (an unused z1
 * is kept for the next request). The struct's fields are private; it is a
 * plain value so it can live on the stack and be copied to fork a stream.
 * Results are exact with glibc's libm; another libm may differ in the last
 * bit of a rare value. */
typedef struct sdunet_rng {
    uint64_t s[4];
    double spare;
    int has_spare;
} sdunet_rng;

/* Starts the stream for `seed` (any value, 0 included). */
void sdunet_rng_seed(sdunet_rng *rng, uint64_t seed);

/* The next n standard normal values, rounded to float32 / kept in double. */
void sdunet_rng_normal(sdunet_rng *rng, float *out, size_t n);
void sdunet_rng_normal_f64(sdunet_rng *rng, double *out, size_t n);

/* ---- The sampling loop ----------------------------------------------------- */

/* Progress / cancellation hook. Called before the first model call with
 * done = 0, then after each model call with done = 1 .. total (total =
 * sdunet_sched_num_model_calls) and t = the timestep of that call (at done =
 * 0: the first call's timestep). A non-zero return stops the loop before the
 * next model call; at done == total it is ignored (the run is complete). It
 * runs on the calling thread, between model calls, never inside one. */
typedef int (*sdunet_sample_progress_fn)(void *user, int done, int total, double t);

typedef struct sdunet_sample_params {
    int steps; /* inference steps given to sdunet_sched_set_timesteps (1..T) */
    /* Latent: (batch, C, height, width) with C = the model's in_channels, which
     * must equal its out_channels (the step maps model output onto the latent). */
    int batch, height, width;
    /* Text context: (context_rows, context_len, context_dim) with context_rows
     * 1 (the same context for every latent) or batch. */
    const float *context;
    int context_rows, context_len, context_dim;
    /* Classifier-free guidance. uncond NULL: none, one batch-`batch` forward
     * per model call. Otherwise uncond is (uncond_rows, context_len,
     * context_dim) with uncond_rows 1 or batch (uncond_len must equal
     * context_len: both halves run as one forward), every model call is ONE
     * forward of 2 * batch rows, [cond rows..., uncond rows...], with the same
     * latent input and timestep, and the model output given to the sampler is
     * uncond + guidance * (cond - uncond) (sdunet_cfg_combine). Guidance 1
     * still runs both halves here; skipping the unconditional pass is the
     * caller's choice. */
    const float *uncond;
    int uncond_rows, uncond_len;
    double guidance;
    /* Source of the fresh noise of steps with sdunet_sched_step_needs_noise
     * (euler_a, ddim with eta > 0): n_latent values drawn per such step, in
     * step order. May be NULL when the scheduler never needs noise. Samplers
     * that do not need noise draw nothing (unlike diffusers' Euler, which draws
     * and discards). */
    sdunet_rng *rng;
    sdunet_sample_progress_fn progress; /* may be NULL */
    void *progress_user;
} sdunet_sample_params;

/* Runs the whole loop with `sched` (whose configuration, prediction type
 * included, must fit the model):
 *
 *     set_timesteps(steps); x = latent * (float)init_noise_sigma   (float32)
 *     for i in 0 .. num_model_calls - 1:
 *         x_in = scale_model_input(i, x)
 *         out  = model(x_in, timestep(i), context)          (+ guidance)
 *         x    = step(i, out, x, noise_i if step_needs_noise(i))
 *
 * `latent` holds the unit-variance initial noise x_T, (batch, C, height,
 * width), on entry and the final latent on return. `steps_done` (may be NULL)
 * receives the number of model calls completed. If the progress hook stops
 * the run, the function returns SDUNET_OK with *steps_done < total and
 * `latent` holding the partly denoised x after *steps_done steps; callers
 * that allow cancelling must compare. On an error `latent` is unspecified. */
sdunet_status sdunet_sample(sdunet_model *model, sdunet_scheduler *sched,
                            const sdunet_sample_params *params, float *latent, int *steps_done,
                            sdunet_error *err);

#ifdef __cplusplus
}
#endif
#endif /* SDUNET_SAMPLE_H */
